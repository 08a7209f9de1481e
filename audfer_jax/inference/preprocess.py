"""Clip preprocessing for inference, as the run's evaluation pipeline does it.

Sample T frames with the run's deterministic evaluation scheme
(`sampling.eval_indices`, datasets.md section 7) and `eval_temporal_views`
views; crop the face box if any; resize each frame to S x S (bilinear,
antialiased; aspect not kept, as the references and `data/pipeline.py` do)
or, with several spatial views, shorter side to S and evenly spaced S x S
crops. PIL is imported on use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from audfer_jax.data import sampling
from audfer_jax.inference.video import PredictError

if TYPE_CHECKING:   # the type only: preprocessing needs a predictor's spec, views and S
    from audfer_jax.inference.predictor import Predictor


def _resize(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear, antialiased when shrinking (PIL), `[h, w, 3] uint8`."""
    from PIL import Image  # pylint: disable=g-import-not-at-top
    if frame.shape[:2] == (height, width):
        return frame
    return np.asarray(Image.fromarray(frame).resize((width, height), Image.BILINEAR),
                      np.uint8)


def spatial_views(frames: np.ndarray, size: int, views: int = 1) -> np.ndarray:
    """`[F, H, W, 3] uint8` -> `[views, F, S, S, 3] uint8`.

    One view: each frame resized to S x S (aspect not kept, as the pipeline).
    Several: shorter side to S, then `views` S x S crops evenly spaced along
    both axes (start `(extent - S) * v / (views - 1)`), as `data/pipeline.py`.
    """
    if views == 1:
        return np.stack([_resize(f, size, size) for f in frames])[None]
    h, w = frames.shape[1:3]
    scale = size / min(h, w)
    nh, nw = max(size, int(round(h * scale))), max(size, int(round(w * scale)))
    big = np.stack([_resize(f, nh, nw) for f in frames])
    out = []
    for v in range(views):
        y0 = ((nh - size) * v) // (views - 1)
        x0 = ((nw - size) * v) // (views - 1)
        out.append(big[:, y0:y0 + size, x0:x0 + size])
    return np.stack(out)


def prepare_clip(frames: np.ndarray, predictor: Predictor,
                 face_box: Optional[Sequence[int]] = None) -> tuple[np.ndarray, np.ndarray]:
    """Samples, crops and resizes a clip the way the run's eval pipeline does.

    Args:
        frames: `[N, H, W, 3] uint8`, all frames of the clip.
        predictor: gives the sampling spec, views and input side S.
        face_box: optional `(x0, y0, x1, y1)` crop applied to every frame.

    Returns:
        `(clips [Vt * Vs, T, S, S, 3] uint8, indices [Vt, T] int32)`; view
        order: temporal view major, spatial view minor (as the pipeline).
    """
    n = frames.shape[0]
    idx = sampling.eval_indices(n, predictor.spec, predictor.temporal_views)   # [Vt, T]
    return prepare_indices(frames, idx, predictor, face_box), idx


def prepare_indices(frames: np.ndarray, idx: np.ndarray, predictor: Predictor,
                    face_box: Optional[Sequence[int]] = None) -> np.ndarray:
    """Crops and resizes the frames `idx [Vt, T]` of `frames` into model input.

    Returns:
        `[Vt * Vs, T, S, S, 3] uint8`, temporal view major (see `prepare_clip`).
    """
    uniq, pos = np.unique(idx.reshape(-1), return_inverse=True)
    picked = frames[uniq]
    if face_box is not None:
        x0, y0, x1, y1 = (int(v) for v in face_box)
        picked = picked[:, y0:y1, x0:x1]
    views = spatial_views(picked, predictor.image_size, predictor.spatial_views)  # [Vs,U,..]
    clip = views[:, pos.reshape(idx.shape)]               # [Vs, Vt, T, S, S, 3]
    clip = np.swapaxes(clip, 0, 1).reshape((-1,) + clip.shape[2:])
    return np.ascontiguousarray(clip)


def check_frames(frames) -> np.ndarray:
    """`frames` as `[N, H, W, 3] uint8`, N >= 1; PredictError naming the shape or dtype."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise PredictError(f"frames must be [N, H, W, 3] with N >= 1, got shape {frames.shape}")
    if frames.dtype != np.uint8:
        raise PredictError(f"frames must be uint8 (0..255), got {frames.dtype}")
    return frames

