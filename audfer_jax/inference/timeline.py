"""The timeline of a long video: class probabilities of every window.

A video of any length is cut into windows of W seconds every S seconds
(`video.window_bounds`); each window is sampled, face-cropped and resized as
one clip (`preprocess.prepare_indices`) and classified, windows `batch_size`
at a time in one compiled shape. The face detector's result for a frame is
reused by every window that samples it. `timeline_csv` and `format_timeline`
turn the result into the CSV of `audfer-jax predict --timeline` and its
console lines.
"""

from __future__ import annotations

import time
from typing import Any, Mapping, Optional

import numpy as np

from audfer_jax.inference import faces
from audfer_jax.inference import predict
from audfer_jax.inference import predictor as predictor_lib
from audfer_jax.inference import preprocess
from audfer_jax.inference import video

# Windows per model call of a timeline: every call has this one shape, so the
# model compiles once whatever the video's length.
DEFAULT_WINDOW_BATCH = 8


def predict_timeline(frames_uint8: np.ndarray, predictor: predictor_lib.Predictor,
                     fps: float, *,
                     window_seconds: float = video.DEFAULT_WINDOW_SECONDS,
                     stride_seconds: float = video.DEFAULT_STRIDE_SECONDS,
                     batch_size: int = DEFAULT_WINDOW_BATCH, detect_face: bool = False,
                     face_margin: float = 0.15, face_cache: Optional[dict] = None) -> dict:
    """Class probabilities of every window of a video (`video.window_bounds`).

    Each window is sampled, cropped and resized exactly as one clip
    (`predict.predict_clip`): its own eval indices over its frames and, with
    `detect_face`, its own face box from the detections on those frames. A
    window without a face gets no probabilities. Windows go through the model
    `batch_size` at a time, the last batch padded with blank clips whose
    outputs are dropped, so every call has one shape.

    Args:
        frames_uint8: `[N, H, W, 3] uint8`, the whole video, decoded once.
        predictor: a `Predictor`.
        fps: frames per second of `frames_uint8`.
        window_seconds, stride_seconds: W and S, seconds > 0.
        batch_size: windows per model call (>= 1).
        detect_face: crop each window's face (detector once per frame).
        face_margin: see `faces.combine_face_boxes`.
        face_cache: per-frame detections to reuse and fill (shared with
            `predict.predict_clip` on the same frames).

    Returns:
        `{"window_seconds", "stride_seconds", "fps", "num_windows": K,
        "batch_size", "class_names": [C], "windows": [K x {"start_s", "end_s",
        "start_frame", "end_frame" (exclusive), "face_found": bool, or None
        without detection, "probabilities": {name: p} or None, "top_class",
        "top_prob"}], "frames_checked": frames the detector ran on,
        "seconds": {"faces", "model" (all calls), "first_call" (its
        compilation included), "total"}, "windows_per_second"}` (all
        windows over the total, face detection and the compilation included).

    Raises:
        PredictError: bad frames, W, S, fps or batch size.
    """
    t0 = time.perf_counter()
    frames = preprocess.check_frames(frames_uint8)
    if int(batch_size) < 1:
        raise video.PredictError(f"--window_batch {batch_size}: expected at least 1 window "
                                 "per call")
    batch_size = int(batch_size)
    windows = video.window_bounds(frames.shape[0], fps, window_seconds, stride_seconds)
    idx = video.window_indices(windows, predictor.spec, predictor.temporal_views)  # [K,Vt,T]
    cache = {} if face_cache is None else face_cache
    boxes, found = _window_faces(frames, idx, detect_face, face_margin, cache)
    t_faces = time.perf_counter() - t0
    probs, t_model, t_first = _window_probabilities(frames, idx, boxes, found, predictor,
                                                    batch_size)
    names = list(predictor.class_names)
    rows = _timeline_rows(windows, probs, found, names)
    total = time.perf_counter() - t0
    k_all = len(windows)
    return {"window_seconds": float(window_seconds), "stride_seconds": float(stride_seconds),
            "fps": float(fps), "num_windows": k_all, "batch_size": batch_size,
            "class_names": names, "windows": rows,
            "frames_checked": len(cache) if detect_face else 0,
            "seconds": {"faces": t_faces, "model": t_model, "first_call": t_first,
                        "total": total},
            "windows_per_second": k_all / total if total > 0 else float("inf")}


def _window_faces(frames: np.ndarray, idx: np.ndarray, detect_face: bool,
                  face_margin: float, cache: dict) -> tuple[list, list]:
    """Each window's face box from the detections on the frames it samples.

    Args:
        frames: `[N, H, W, 3] uint8`.
        idx: `[K, Vt, T]` frame indices of the windows.
        detect_face: whether to detect; without, every box and flag is None.
        face_margin: see `faces.combine_face_boxes`.
        cache: per-frame detections, read and filled (`faces.detect_faces`).

    Returns:
        `(boxes, found)`: K crops `(x0, y0, x1, y1)` or None, and K flags
        (True / False with detection, None without).
    """
    k_all = idx.shape[0]
    boxes, found = [None] * k_all, [None] * k_all
    if detect_face:
        for k in range(k_all):
            boxes[k] = faces.detect_faces(frames, np.unique(idx[k]), face_margin, cache).box
            found[k] = boxes[k] is not None
    return boxes, found


def _window_probabilities(frames: np.ndarray, idx: np.ndarray, boxes: list, found: list,
                          predictor: predictor_lib.Predictor,
                          batch_size: int) -> tuple[np.ndarray, float, float]:
    """Class probabilities of the windows with a face (or without detection).

    Windows go through `predictor.apply` `batch_size` at a time; the last
    batch is padded with blank clips whose outputs are dropped, so every call
    has one shape (one compilation).

    Returns:
        `(probs [K, C] float64, NaN rows for windows without a face, seconds
        in the model over all calls, seconds of the first call)`.
    """
    k_all = idx.shape[0]
    todo = [k for k in range(k_all) if found[k] is not False]
    probs = np.full((k_all, len(predictor.class_names)), np.nan)
    views = predictor.temporal_views * predictor.spatial_views
    t_model = t_first = 0.0
    for b0 in range(0, len(todo), batch_size):
        chunk = todo[b0:b0 + batch_size]
        batch = [preprocess.prepare_indices(frames, idx[k], predictor, boxes[k])
                 for k in chunk]
        clips = np.zeros((batch_size * views,) + batch[0].shape[1:], np.uint8)
        clips[:len(chunk) * views] = np.concatenate(batch)
        t1 = time.perf_counter()
        out = predictor.apply(predictor.variables, clips)
        p, _ = predict.view_mean_probabilities(out, views)
        t_model += time.perf_counter() - t1
        t_first = t_first or t_model
        probs[chunk] = p[:len(chunk)]          # the padded clips' outputs are dropped
    return probs, t_model, t_first


def _timeline_rows(windows: video.Windows, probs: np.ndarray, found: list,
                   names: list) -> list[dict]:
    """One JSON-ready row per window (`predict_timeline`'s `windows`)."""
    rows = []
    for k in range(len(windows)):
        row = {"start_s": float(windows.start_s[k]), "end_s": float(windows.end_s[k]),
               "start_frame": int(windows.start_frame[k]),
               "end_frame": int(windows.end_frame[k]), "face_found": found[k],
               "probabilities": None, "top_class": None, "top_prob": None}
        if not np.isnan(probs[k, 0]):
            top = int(np.argmax(probs[k]))
            row.update(probabilities={n: float(p) for n, p in zip(names, probs[k])},
                       top_class=names[top], top_prob=float(probs[k, top]))
        rows.append(row)
    return rows


def timeline_csv(timeline: Mapping[str, Any]) -> str:
    """CSV text of a `predict_timeline` result: one row per window.

    Columns: `start_s, end_s, start_frame, end_frame` (exclusive), one
    `p_<class>` per class, `top_class`, `top_prob`, `face_found` (`true`,
    `false`, or empty when detection was off). A window without a face has
    empty probabilities and top class.
    """
    import csv  # pylint: disable=g-import-not-at-top
    import io  # pylint: disable=g-import-not-at-top
    names = list(timeline["class_names"])
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["start_s", "end_s", "start_frame", "end_frame"]
                    + [f"p_{n}" for n in names] + ["top_class", "top_prob", "face_found"])
    for row in timeline["windows"]:
        probs = row["probabilities"]
        face = row["face_found"]
        writer.writerow(
                [f"{row['start_s']:.3f}", f"{row['end_s']:.3f}", row["start_frame"],
                 row["end_frame"]]
                + ([f"{probs[n]:.6f}" for n in names] if probs else [""] * len(names))
                + [row["top_class"] or "",
                   "" if row["top_prob"] is None else f"{row['top_prob']:.6f}",
                   "" if face is None else str(bool(face)).lower()])
    return buf.getvalue()


def format_timeline(timeline: Mapping[str, Any], rows: bool = True) -> str:
    """Human-readable summary (and optionally the rows) of a `predict_timeline` result."""
    sec = timeline["seconds"]
    lines = [f"timeline: {timeline['num_windows']} window(s) of {timeline['window_seconds']:g} s "
             f"every {timeline['stride_seconds']:g} s at {timeline['fps']:g} fps, "
             f"{timeline['batch_size']} per model call; {timeline['windows_per_second']:.1f} "
             f"windows/s ({sec['total']:.2f} s: face detection {sec['faces']:.2f} s, "
             f"model {sec['model']:.2f} s of which {sec['first_call']:.2f} s for the first "
             "call, compilation included)"]
    if rows:
        for row in timeline["windows"]:
            what = (f"{row['top_class']} ({row['top_prob']:.4f})" if row["top_class"]
                    else "no face")
            lines.append(f"  {row['start_s']:7.2f} - {row['end_s']:7.2f} s  {what}")
    return "\n".join(lines)
