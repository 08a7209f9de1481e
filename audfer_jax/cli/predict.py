"""`audfer-jax predict`: expression and AU probabilities for one video or frame folder.

    audfer-jax predict (--checkpoint runs/x | --model EXPORT_DIR) VIDEO_OR_FRAME_DIR [--top_k 3]
        [--json out.json] [--detect_face | --no_detect_face] [--which best|last]
        [--plot out.png] [--timeline out.csv] [--window_seconds 2]
        [--stride_seconds 0.5] [--window_batch 8] [--fps 30]

Flags, printing and exit statuses only; the work is `audfer_jax.inference`
(reading, face detection, the predictor, preprocessing, the timeline) and the
picture `figures/predict.py`. Face detection is on by default for a video
file, off for a frame folder (usually a face crop already). A clip without a
face exits with `NO_FACE_STATUS` (3), or writes an explicit "no face" result
with `--json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from typing import Any, Mapping, Optional

import numpy as np

from audfer_jax.cli import errors as cli_errors
from audfer_jax import hints
from audfer_jax.inference import exported
from audfer_jax.inference import faces
from audfer_jax.inference import predict
from audfer_jax.inference import predictor as predictor_lib
from audfer_jax.inference import timeline as timeline_lib
from audfer_jax.inference import video
from audfer_jax import paths

PROG = "audfer-jax predict"
NO_FACE_STATUS = 3


def _seconds_flag(value: str) -> float:
    """argparse type of `--window_seconds`/`--stride_seconds`: a number > 0."""
    try:
        return video.check_seconds("", value)
    except video.PredictError:
        raise argparse.ArgumentTypeError(
                f"expected a number of seconds > 0, got {value!r}") from None


def _fps_flag(value: str) -> float:
    """argparse type of `--fps`: a finite number > 0."""
    try:
        fps = float(value)
    except ValueError:
        fps = float("nan")
    if not (np.isfinite(fps) and fps > 0):
        raise argparse.ArgumentTypeError(f"expected frames per second > 0, got {value!r}")
    return fps


def _count_flag(value: str) -> int:
    """argparse type of `--window_batch`: an integer >= 1."""
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value!r}")
    return n


def _parser() -> cli_errors.ArgumentParser:
    """The flags of `audfer-jax predict`."""
    parser = cli_errors.ArgumentParser(
            prog=PROG,
            description="Expression class probabilities (and the AU head's per-AU "
                        "probabilities) for one video or frame folder; optionally a "
                        "picture of the prediction and a timeline over windows.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", "--workdir", dest="checkpoint",
                        help="training run directory, step directory or variables checkpoint "
                             "(local or gs://...); --workdir is the same flag, the name "
                             "train, evaluate and sweep use for a run directory")
    source.add_argument("--model", metavar="DIR",
                        help="an exported model instead (`audfer-jax export --out DIR`; "
                             "DIR/savedmodel for its SavedModel); see docs/export.md")
    parser.add_argument("input", help="video file or folder of frames (1.jpg, 2.jpg, ...)")
    parser.add_argument("--top_k", type=int, default=3, help="classes listed as top-k")
    parser.add_argument("--json", default=None, help="also write the result as JSON here")
    parser.add_argument("--detect_face", action=argparse.BooleanOptionalAction, default=None,
                        help="crop the face (dlib's HOG detector, one box per clip); "
                             "default: on for a video file, off for a frame folder "
                             "(usually face crops already)")
    parser.add_argument("--face_margin", type=float, default=0.15,
                        help="margin around the detected face, fraction of its side")
    parser.add_argument("--which", default="best", choices=("best", "last"),
                        help="checkpoint of a run directory (default best)")
    parser.add_argument("--plot", default=None, metavar="FILE.png",
                        help="write a picture: the frames the model saw, class and AU "
                             "bars with the run's AU prior, and the timeline if any")
    parser.add_argument("--timeline", default=None, metavar="FILE.csv",
                        help="classify every window of the video (see --window_seconds) "
                             "and write one CSV row per window")
    parser.add_argument("--window_seconds", type=_seconds_flag, default=None,
                        help=f"timeline window length W in seconds (default "
                             f"{video.DEFAULT_WINDOW_SECONDS:g}); giving it turns the "
                             "timeline on")
    parser.add_argument("--stride_seconds", type=_seconds_flag, default=None,
                        help=f"timeline stride S in seconds (default "
                             f"{video.DEFAULT_STRIDE_SECONDS:g}); giving it turns the "
                             "timeline on")
    parser.add_argument("--window_batch", type=_count_flag,
                        default=timeline_lib.DEFAULT_WINDOW_BATCH,
                        help="timeline windows per model call (one compiled shape)")
    parser.add_argument("--fps", type=_fps_flag, default=None,
                        help="frame rate of the input (default: the video's; "
                             f"{video.FOLDER_FPS:g} for a frame folder)")
    return parser


def write_plot(path: str, result: Mapping[str, Any], clips: np.ndarray, clip: video.Clip,
               predictor: predictor_lib.Predictor, source: str,
               timeline: Optional[Mapping[str, Any]] = None) -> str:
    """Draws `figures.predict.prediction_figure` for a prediction and saves it as PNG.

    Raises:
        OSError: the path cannot be written.
    """
    from audfer_jax import figures  # pylint: disable=g-import-not-at-top
    from audfer_jax.figures import predict as predict_figure  # pylint: disable=g-import-not-at-top
    fig = predict_figure.prediction_figure(
            result, clips, fps=clip.fps, source=f"{source} ({clip.num_frames} frames, "
            f"{clip.duration:.2f} s at {clip.fps:g} fps, {clip.fps_source})",
            checkpoint=predictor.source, prior=predictor.prior,
            prior_label=predictor.prior_label, timeline=timeline)
    return figures.save(fig, path)


@dataclasses.dataclass
class _Prediction:
    """Everything one `predict` run computed, for printing and writing.

    Attributes:
        clip: the decoded input.
        seconds_read: seconds spent decoding it.
        predictor: the loaded checkpoint.
        result: `predict.predict_clip`'s result, or `predict.no_face_result`.
        clips: the model's input `[V, T, S, S, 3] uint8`, None without a face.
        no_face: the `NoFaceError` of a clip without a face, else None.
        timeline: `timeline.predict_timeline`'s result, or None.
    """
    clip: video.Clip
    seconds_read: float
    predictor: predictor_lib.Predictor
    result: dict
    clips: Optional[np.ndarray] = None
    no_face: Optional[faces.NoFaceError] = None
    timeline: Optional[dict] = None


def _run(args: argparse.Namespace, detect: bool) -> _Prediction:
    """Reads the input, loads the checkpoint, predicts the clip and, if asked, the timeline.

    Raises:
        PredictError: unusable input or checkpoint (not `NoFaceError`: a clip
            without a face is a result, `_Prediction.no_face`).
        OSError: unreadable files.
    """
    cache: dict = {}
    t0 = time.perf_counter()
    clip = video.read_input(args.input, args.fps)
    t_read = time.perf_counter() - t0
    predictor = (exported.load_exported(args.model) if args.model else
                 predictor_lib.load_predictor(args.checkpoint, args.which))
    try:
        result, clips = predict.predict_clip(
                clip.frames, predictor, detect_face=detect, face_margin=args.face_margin,
                top_k=args.top_k, face_cache=cache, return_clips=True)
        done = _Prediction(clip, t_read, predictor, result, clips)
    except faces.NoFaceError as e:
        done = _Prediction(clip, t_read, predictor,
                           predict.no_face_result(e.detections, clip.num_frames), no_face=e)
    if args.timeline or args.window_seconds or args.stride_seconds:
        done.timeline = timeline_lib.predict_timeline(
                clip.frames, predictor, clip.fps,
                window_seconds=args.window_seconds or video.DEFAULT_WINDOW_SECONDS,
                stride_seconds=args.stride_seconds or video.DEFAULT_STRIDE_SECONDS,
                batch_size=args.window_batch, detect_face=detect,
                face_margin=args.face_margin, face_cache=cache)
        done.timeline["seconds"]["decode"] = t_read
    return done


def _print_prediction(args: argparse.Namespace, done: _Prediction) -> None:
    """Adds the input's provenance to the result and prints the prediction."""
    result = done.result
    result["input"] = paths.resolve(args.input)
    result["model" if args.model else "checkpoint"] = done.predictor.source
    result["fps"] = done.clip.fps
    result["fps_source"] = done.clip.fps_source
    if done.no_face is not None:
        if args.json:   # else the error line of `main` says it
            print(f"{args.input}: {hints.one_line(done.no_face)}")
    else:
        print(f"{'model' if args.model else 'checkpoint'}: {done.predictor.source}")
        print(predict.format_prediction(result, args.input))


def _write_outputs(args: argparse.Namespace, done: _Prediction) -> None:
    """Prints the timeline and writes the CSV, the picture and the JSON asked for.

    Raises:
        OSError: a file cannot be written.
    """
    clip, timeline = done.clip, done.timeline
    if timeline is not None:
        done.result["timeline"] = timeline
        print(timeline_lib.format_timeline(timeline, rows=not (args.timeline or args.json)))
        print(f"decoded {clip.num_frames} frames ({clip.duration:.1f} s) once in "
              f"{done.seconds_read:.2f} s")
        if args.timeline:
            paths.write_text(args.timeline, timeline_lib.timeline_csv(timeline))
            print(f"wrote {args.timeline}")
    if args.plot:
        if done.no_face is not None:
            print(f"no figure written to {args.plot}: no face, no prediction to draw")
        else:
            write_plot(args.plot, done.result, done.clips, clip, done.predictor, args.input,
                       timeline)
            print(f"wrote {args.plot}")
    if args.json:
        paths.write_text(args.json, json.dumps(done.result, indent=2))
        print(f"wrote {args.json}")


def main(argv: list[str]) -> int:
    """`audfer-jax predict --checkpoint DIR VIDEO_OR_FRAME_DIR [...]`.

    Returns:
        0 on success; 1 on an error (one line on stderr); 2 on bad flags;
        `NO_FACE_STATUS` (3) when face detection is on and the clip has no
        face, unless `--json` is given: then the JSON file holds the explicit
        `no_face_result` and the status is 0.
    """
    args = _parser().parse_args(argv)
    detect = (not os.path.isdir(args.input)) if args.detect_face is None else args.detect_face
    try:
        done = _run(args, detect)
    except (video.PredictError, OSError) as e:
        return cli_errors.report(PROG, e)
    _print_prediction(args, done)
    try:
        _write_outputs(args, done)
    except OSError as e:
        return cli_errors.report(PROG, e)
    if done.no_face is not None and not args.json:
        return cli_errors.report(PROG, done.no_face, status=NO_FACE_STATUS)
    return 0
