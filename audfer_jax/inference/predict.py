"""Expression and AU probabilities of one clip: `predict_clip`.

Steps, each mirroring the evaluation input pipeline (`data/pipeline.py`) of
the run that made the checkpoint:

1. Frames in: every frame of the clip, decoded once (`video.py`).
2. Find the face (`faces.py`; optional): one crop for the whole clip from the
   detections on the frames the model will see. A clip with no face in any
   checked frame gets no expression (`NoFaceError`; `no_face_result` is the
   explicit result for it).
3. Sample, crop and resize the clip into model input (`preprocess.py`).
4. Apply the model in eval mode (`predictor.py`); class probabilities are the
   mean over views of the softmax (as the trainer's eval step and MAE-DFER's
   multi-view test), AU probabilities the sigmoid of the view-averaged AU
   logits (`view_mean_probabilities`).

The AU head is an auxiliary training head of AU-DFER (au_dfer_method.md
section 1); its probabilities are shown for inspection only.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from audfer_jax.data import sampling
from audfer_jax.inference import faces
from audfer_jax.inference import predictor as predictor_lib
from audfer_jax.inference import preprocess


def view_mean_probabilities(out, views: int) -> tuple[np.ndarray, np.ndarray]:
    """Model output over `[B * views]` clips -> `(probs [B, C], au_probs [B, A])` float64.

    Class probabilities: mean over a clip's views of the softmax (as the
    trainer's eval step); AU probabilities: sigmoid of the view-mean AU logits.
    """
    import jax  # pylint: disable=g-import-not-at-top
    logits = np.asarray(jax.device_get(out.logits), np.float64)
    au_logits = np.asarray(jax.device_get(out.au_logits), np.float64)
    logits = logits.reshape(-1, views, logits.shape[-1])
    au_logits = au_logits.reshape(-1, views, au_logits.shape[-1])
    z = logits - logits.max(-1, keepdims=True)
    probs = (np.exp(z) / np.exp(z).sum(-1, keepdims=True)).mean(1)
    au_probs = 1.0 / (1.0 + np.exp(-au_logits.mean(1)))
    return probs, au_probs


def _clip_face(frames, idx, margin, cache) -> faces.FaceDetections:
    """`detect_faces` on the frames `idx` the model sees; NoFaceError when none has a face."""
    detection = faces.detect_faces(frames, np.unique(idx), margin, cache)
    if detection.box is None:
        raise faces.NoFaceError(
                f"no face in any of the {detection.num_checked} frames checked "
                f"({faces.FACE_DETECTOR}); no expression predicted. For input that is "
                "already a face crop, pass --no_detect_face", detection)
    return detection


def predict_clip(frames_uint8: np.ndarray, predictor: predictor_lib.Predictor | str, *,
                 detect_face: bool = False, face_box: Optional[Sequence[int]] = None,
                 face_margin: float = 0.15, top_k: int = 3,
                 face_cache: Optional[dict] = None, return_clips: bool = False):
    """Class and AU probabilities of one clip.

    Args:
        frames_uint8: `[N, H, W, 3] uint8` RGB, every frame of the clip in
            temporal order (N >= 1; short clips are padded by the sampler).
        predictor: a `Predictor`, or a checkpoint path for `load_predictor`.
        detect_face: find one face box for the clip (`detect_faces`, dlib's
            HOG detector on the frames the model sees) and crop it.
        face_box: an explicit `(x0, y0, x1, y1)` crop instead.
        face_margin: margin of the detected box, fraction of the face side.
        top_k: how many classes `top_k` lists.
        face_cache: per-frame detections to reuse and fill (`detect_faces`).
        return_clips: also return the model's input.

    Returns:
        `{"class_names": [C], "probs": [C] floats summing to 1 (mean over views
        of the softmax), "probabilities": {name: p}, "top_class", "top_prob",
        "top_k": [[name, p], ...], "au_names": [18], "au_probs": [18] sigmoid of
        the view-mean AU logits, "au_probabilities": {AU: p}, "frame_indices":
        [Vt, T], "num_frames": N, "views": Vt * Vs, "face_box": box or None,
        "face_found": True with detection, else None, "face_detection":
        `FaceDetections.summary()` with detection, else None}`; with
        `return_clips`, `(that dict, clips [Vt * Vs, T, S, S, 3] uint8)`.

    Raises:
        PredictError: bad frames (shape, dtype).
        NoFaceError: `detect_face` and no checked frame has a face (no
            expression is computed for a clip without a face).
    """
    from audfer_jax import au  # pylint: disable=g-import-not-at-top
    frames = preprocess.check_frames(frames_uint8)
    if isinstance(predictor, (str, os.PathLike)):
        predictor = predictor_lib.load_predictor(os.fspath(predictor))
    face_found = detection = None
    if face_box is None and detect_face:
        idx = sampling.eval_indices(frames.shape[0], predictor.spec, predictor.temporal_views)
        detection = _clip_face(frames, idx, face_margin, face_cache)
        face_box, face_found = detection.box, True
    clips, idx = preprocess.prepare_clip(frames, predictor, face_box)
    probs, au_probs = view_mean_probabilities(predictor.apply(predictor.variables, clips),
                                     clips.shape[0])
    probs, au_probs = probs[0], au_probs[0]
    names = list(predictor.class_names)
    order = np.argsort(-probs, kind="stable")
    au_names = list(au.AU_NAMES)[:au_probs.shape[0]]
    result = {
        "class_names": names,
        "probs": probs.tolist(),
        "probabilities": {n: float(p) for n, p in zip(names, probs)},
        "top_class": names[int(order[0])],
        "top_prob": float(probs[order[0]]),
        "top_k": [[names[int(i)], float(probs[i])] for i in order[:max(1, top_k)]],
        "au_names": au_names,
        "au_probs": au_probs.tolist(),
        "au_probabilities": {n: float(p) for n, p in zip(au_names, au_probs)},
        "frame_indices": idx.tolist(),
        "num_frames": int(frames.shape[0]),
        "views": int(clips.shape[0]),
        "face_box": None if face_box is None else [int(v) for v in face_box],
        "face_found": face_found,
        "face_detection": None if detection is None else detection.summary(),
    }
    return (result, clips) if return_clips else result


def no_face_result(detections: faces.FaceDetections, num_frames: int) -> dict:
    """The explicit result for a clip without a face: no class, no probabilities."""
    return {"face_found": False, "top_class": None, "probabilities": None,
            "num_frames": int(num_frames), "face_box": None,
            "face_detection": detections.summary(),
            "message": "no face found; no expression predicted"}


def format_prediction(result: Mapping[str, Any], source: str = "") -> str:
    """Human-readable text of a `predict_clip` result."""
    lines = []
    if source:
        lines.append(f"input: {source} ({result['num_frames']} frames, "
                     f"{result['views']} view(s))")
    if result.get("face_box") is not None:
        lines.append(f"face box (x0, y0, x1, y1): {tuple(result['face_box'])}")
    found = result.get("face_detection")
    if found:
        missing = found["frames_without_face"]
        lines.append(f"face found in {found['frames_with_face']} of "
                     f"{found['frames_checked']} frames checked"
                     + (f"; frames {missing} have none and use the clip's face box"
                        if missing else ""))
    names = result["class_names"]
    width = max(len(n) for n in names)
    lines.append("class probabilities:")
    for n in names:
        lines.append(f"  {n:<{width}}  {result['probabilities'][n]:.4f}")
    lines.append(f"top class: {result['top_class']} ({result['top_prob']:.4f})")
    lines.append("top-%d: %s" % (len(result["top_k"]),
                                 ", ".join(f"{n} {p:.4f}" for n, p in result["top_k"])))
    lines.append("AU head probabilities (auxiliary training head, not used for the "
                 "expression):")
    items = list(result["au_probabilities"].items())
    for i in range(0, len(items), 6):
        lines.append("  " + "  ".join(f"{k} {v:.3f}" for k, v in items[i:i + 6]))
    return "\n".join(lines)
