"""Face detection for inference: one square face crop per clip.

The largest frontal face in each frame the model will see, by dlib's HOG +
linear SVM detector (`dlib.get_frontal_face_detector`, Dalal-Triggs HOG
features; its model is compiled into the library, nothing is downloaded),
then one crop for the whole clip: the median centre and median side of the
per-frame boxes, made square and widened by `margin` of the side on each
side. Frames without a detection use that crop and are counted
(`FaceDetections.frames_without_face`); a clip with no face in any checked
frame gets no expression (`NoFaceError`, raised by `predict.predict_clip`).

dlib is imported on first use.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional, Sequence

import numpy as np

from audfer_jax.inference.video import PredictError


# ---------------------------------------------------------------------------
# Face box.
# ---------------------------------------------------------------------------

def combine_face_boxes(boxes: Sequence[Optional[Sequence[float]]], height: int, width: int,
                       margin: float = 0.15) -> Optional[tuple[int, int, int, int]]:
    """One square crop for a clip from per-frame face boxes.

    The centre is the median of the per-frame box centres and the side the
    median of the per-frame `max(w, h)`, widened by `margin * side` on each
    side (medians ignore a few missed or spurious detections). The square is
    shifted to lie inside the frame where it fits, else clipped to the frame.

    Args:
        boxes: per frame `(x, y, w, h)` in pixels (left, top, width, height),
            or None where no face was found.
        height, width: frame size in pixels.
        margin: fraction of the face side added on each side.

    Returns:
        `(x0, y0, x1, y1)` integer pixel bounds (x1, y1 exclusive), or None
        when no frame has a face.
    """
    found = np.asarray([b for b in boxes if b is not None], np.float64).reshape(-1, 4)
    if found.size == 0:
        return None
    cx = float(np.median(found[:, 0] + found[:, 2] / 2))
    cy = float(np.median(found[:, 1] + found[:, 3] / 2))
    side = float(np.median(np.maximum(found[:, 2], found[:, 3]))) * (1 + 2 * margin)
    side = int(round(min(side, height, width)))

    def span(centre, size):
        lo = int(round(centre - side / 2))
        lo = min(max(lo, 0), size - side)
        return lo, lo + side

    x0, x1 = span(cx, width)
    y0, y1 = span(cy, height)
    return x0, y0, x1, y1


# dlib's HOG detector scans an 80 x 80 window; frames whose shorter side is
# below this are upsampled once (x2), which finds faces down to ~40 px at 4x
# the cost (dlib's face_detector.py example: "upsample ... to detect more faces").
UPSAMPLE_BELOW = 320


class NoFaceError(PredictError):
    """Face detection is on and no checked frame of the clip has a face.

    Attributes:
        detections: the `FaceDetections` that found nothing.
    """

    def __init__(self, message: str, detections: "FaceDetections"):
        super().__init__(message)
        self.detections = detections


@dataclasses.dataclass(frozen=True)
class FaceDetections:
    """Per-frame face detections of one clip and the crop made from them.

    Attributes:
        frame_indices: the frames the detector ran on (indices into the clip).
        boxes: per checked frame, the largest face `(x, y, w, h)` in pixels
            (may extend past the frame border, as dlib reports it), or None.
        box: the clip's crop `(x0, y0, x1, y1)` (`combine_face_boxes`), or
            None when no checked frame has a face.
    """
    frame_indices: tuple
    boxes: tuple
    box: Optional[tuple]

    @property
    def num_checked(self) -> int:
        """How many frames the detector ran on."""
        return len(self.frame_indices)

    @property
    def num_with_face(self) -> int:
        """How many checked frames have a face."""
        return sum(b is not None for b in self.boxes)

    @property
    def frames_without_face(self) -> list:
        """Indices (into the clip) of the checked frames without a face."""
        return [int(i) for i, b in zip(self.frame_indices, self.boxes) if b is None]

    def summary(self) -> dict:
        """JSON-ready `{detector, frames_checked, frames_with_face, frames_without_face}`."""
        return {"detector": FACE_DETECTOR, "frames_checked": self.num_checked,
                "frames_with_face": self.num_with_face,
                "frames_without_face": self.frames_without_face}


FACE_DETECTOR = "dlib HOG frontal face detector"


@functools.lru_cache(maxsize=1)
def _detector():
    """dlib's HOG + linear SVM frontal face detector; its model is compiled into dlib."""
    try:
        import dlib  # pylint: disable=g-import-not-at-top
    except ImportError as e:
        raise PredictError(f"face detection needs dlib ({e}); install the pinned "
                           "`dlib-bin` wheel (setup.cfg) or pass --no_detect_face") from None
    return dlib.get_frontal_face_detector()


def largest_face(frame: np.ndarray, detector=None) -> Optional[tuple[int, int, int, int]]:
    """The largest frontal face in a frame, or None.

    Args:
        frame: `[H, W, 3] uint8` RGB.
        detector: a dlib face detector (default: `dlib.get_frontal_face_detector()`).

    Returns:
        `(x, y, w, h)` in pixels of the largest detection (dlib's default
        score threshold 0), or None when there is none.
    """
    detector = _detector() if detector is None else detector
    frame = np.ascontiguousarray(frame, dtype=np.uint8)
    upsample = 1 if min(frame.shape[:2]) < UPSAMPLE_BELOW else 0
    rects = detector(frame, upsample)
    if len(rects) == 0:
        return None
    r = max(rects, key=lambda r: r.width() * r.height())
    return int(r.left()), int(r.top()), int(r.width()), int(r.height())


def detect_faces(frames: np.ndarray, frame_indices: Optional[Sequence[int]] = None,
                 margin: float = 0.15, cache: Optional[dict] = None) -> FaceDetections:
    """Runs the face detector on some frames of a clip and makes the clip's crop.

    Policy: one square crop for the whole clip (`combine_face_boxes`: median
    centre and side of the frames that have a face), applied to every frame,
    those without a detection included; how many had none is reported
    (`FaceDetections.frames_without_face`), never hidden.

    Args:
        frames: `[N, H, W, 3] uint8`.
        frame_indices: frames to run the detector on (default: up to 16
            evenly spaced ones); `predict_clip` passes the frames the model sees.
        margin: see `combine_face_boxes`.
        cache: optional `{frame index: box or None}`, read and filled, so that
            the detector runs once per frame however many windows share it.

    Returns:
        `FaceDetections`; its `box` is None when no checked frame has a face.
    """
    n, h, w = frames.shape[:3]
    if frame_indices is None:
        frame_indices = np.unique(np.linspace(0, n - 1, min(n, 16)).round().astype(int))
    detector = _detector()
    indices = tuple(int(i) for i in frame_indices)
    cache = {} if cache is None else cache
    for i in indices:
        if i not in cache:
            cache[i] = largest_face(frames[i], detector)
    boxes = tuple(cache[i] for i in indices)
    return FaceDetections(indices, boxes, combine_face_boxes(boxes, h, w, margin))


def detect_face_box(frames: np.ndarray, frame_indices: Optional[Sequence[int]] = None,
                    margin: float = 0.15) -> Optional[tuple[int, int, int, int]]:
    """One face crop `(x0, y0, x1, y1)` for a clip, or None if no face is found.

    See `detect_faces` (this is its `box`).
    """
    return detect_faces(frames, frame_indices, margin).box

