"""Frames in for `predict`: reading a video or frame folder, and cutting it into windows.

Reading decodes every frame once (PyAV for a video file, PIL for a frame
folder ordered by the trailing integer of each file stem, like the dataset
readers: `1.jpg, 2.jpg, ..., 10.jpg`, not lexicographic; datasets.md
section 0). Windowing (`window_bounds`, `window_indices`) is pure NumPy on
frame counts and seconds, so a timeline never decodes the video again.

Imports nothing heavy at module level (PyAV and PIL are imported on use).
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Optional

import numpy as np

from audfer_jax.data import sampling

VIDEO_HINT = "a video file PyAV can decode (.mp4, .avi, ...) or a folder of .jpg/.png frames"

# Frame rate assumed for a frame folder (which stores none) unless `--fps` is
# given: DFEW, FERV39k and MAFW frames were extracted from ~25-30 fps video.
FOLDER_FPS = 30.0

# Timeline defaults: DFEW clips last 2-5 s; a 2 s window holds one clip's worth
# of expression and a 0.5 s stride follows its changes.
DEFAULT_WINDOW_SECONDS = 2.0
DEFAULT_STRIDE_SECONDS = 0.5


class PredictError(ValueError):
    """Unusable input for `predict` (unreadable video, empty folder, bad checkpoint)."""


@dataclasses.dataclass(frozen=True)
class Clip:
    """Every decoded frame of one input and its frame rate.

    Attributes:
        frames: `[N, H, W, 3] uint8` RGB, N >= 1.
        fps: frames per second (> 0).
        fps_source: where `fps` comes from: `"video"` (the container's
            average rate), `"--fps"` (given) or `"assumed"` (`FOLDER_FPS`).
    """
    frames: np.ndarray
    fps: float
    fps_source: str

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def duration(self) -> float:
        """Seconds: N frames of 1 / fps each."""
        return self.num_frames / self.fps


def decode_video(path: str) -> tuple[np.ndarray, Optional[float]]:
    """Decodes every frame of a video with PyAV, once.

    Args:
        path: video file.

    Returns:
        `([N, H, W, 3] uint8 RGB frames, fps)`, N >= 1; fps is the stream's
        average frame rate (else its guessed rate), None when the file has none.

    Raises:
        PredictError: missing file, not a decodable video, no video stream, or
            no frame decoded (names the file and the decoder's message).
    """
    import av  # pylint: disable=g-import-not-at-top
    if not os.path.isfile(path):
        raise PredictError(f"{path}: no such file (expected {VIDEO_HINT})")
    frames = []
    rate = None
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise PredictError(f"{path}: no video stream in this file")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))
    except PredictError:
        raise
    except (av.error.FFmpegError, UnicodeDecodeError, OSError, ValueError) as e:
        raise PredictError(f"{path}: cannot read as a video ({e}); expected {VIDEO_HINT}"
                           ) from None
    if not frames:
        raise PredictError(f"{path}: the video has no decodable frame")
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        raise PredictError(f"{path}: frame size changes within the video {sorted(shapes)}")
    fps = float(rate) if rate else None
    return np.stack(frames), (fps if fps and fps > 0 else None)


def read_video(path: str) -> np.ndarray:
    """`[N, H, W, 3] uint8` RGB frames of a video file (`decode_video` without the rate)."""
    return decode_video(path)[0]


def read_frame_folder(folder: str) -> tuple[np.ndarray, list[str]]:
    """Reads an image folder in temporal order (trailing integer of each stem).

    Args:
        folder: directory of `.jpg/.jpeg/.png` frames (other files ignored).

    Returns:
        `([N, H, W, 3] uint8 RGB frames, [N] paths)`.

    Raises:
        PredictError: no images, a name without trailing integer, a repeated
            number, an undecodable image, or frames of different sizes (each
            names the folder or frame).
    """
    from PIL import Image  # pylint: disable=g-import-not-at-top
    from audfer_jax.data.readers import common  # pylint: disable=g-import-not-at-top
    try:
        paths = common.list_frames(folder)
    except common.FrameFolderError as e:
        raise PredictError(f"{e}; or give a video file PyAV can decode (.mp4, .avi, ...)"
                           ) from None
    frames = []
    for p in paths:
        try:
            with Image.open(p) as im:
                frames.append(np.asarray(im.convert("RGB"), np.uint8))
        except OSError as e:
            raise PredictError(f"{p}: cannot decode image ({e})") from None
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        raise PredictError(f"{folder}: frames have different sizes {sorted(shapes)}")
    return np.stack(frames), paths


def read_input(path: str, fps: Optional[float] = None) -> Clip:
    """Every frame of a video file or frame folder, with its frame rate.

    Args:
        path: video file or frame folder.
        fps: frames per second to use instead of the video's (required for
            true times from a frame folder, which stores no rate).

    Returns:
        A `Clip`. A frame folder without `fps` gets `FOLDER_FPS`, marked
        `"assumed"`; so does a video whose container gives no rate.

    Raises:
        PredictError: see `decode_video` and `read_frame_folder`; `fps` <= 0.
    """
    if fps is not None and not fps > 0:
        raise PredictError(f"--fps {fps}: expected a frame rate > 0")
    if os.path.isdir(path):
        frames, rate = read_frame_folder(path)[0], None
    elif not os.path.exists(path):
        raise PredictError(f"{path}: no such file or folder (expected {VIDEO_HINT})")
    else:
        frames, rate = decode_video(path)
    if fps is not None:
        return Clip(frames, float(fps), "--fps")
    if rate is not None:
        return Clip(frames, rate, "video")
    return Clip(frames, FOLDER_FPS, "assumed")


def read_clip(path: str) -> np.ndarray:
    """`[N, H, W, 3] uint8` frames of a video file or a frame folder.

    Raises:
        PredictError: see `decode_video` and `read_frame_folder`.
    """
    return read_input(path).frames


# ---------------------------------------------------------------------------
# Windows.
# ---------------------------------------------------------------------------

def check_seconds(name: str, value) -> float:
    """`value` as a finite number of seconds > 0.

    Raises:
        PredictError: not a number, not finite, or <= 0 (names `name`).
    """
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise PredictError(f"{name} {value!r}: expected a number of seconds > 0") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise PredictError(f"{name} {value!r}: expected a number of seconds > 0")
    return seconds


@dataclasses.dataclass(frozen=True)
class Windows:
    """The windows of a timeline.

    Attributes:
        start_frame, end_frame: `[K] int64` frame range of each window
            (`end` exclusive), within `[0, N]`.
        start_s, end_s: `[K] float64` the window's span in seconds.
    """
    start_frame: np.ndarray
    end_frame: np.ndarray
    start_s: np.ndarray
    end_s: np.ndarray

    def __len__(self) -> int:
        return int(self.start_frame.shape[0])


def window_bounds(num_frames: int, fps: float, window_seconds: float,
                  stride_seconds: float) -> Windows:
    """Splits N frames at `fps` into windows of W seconds every S seconds.

    With duration D = N / fps: K = floor((D - W) / S) + 1 windows, window k
    spanning `[k S, k S + W)` seconds, i.e. frames `[round(k S fps),
    round(k S fps) + round(W fps))`; trailing time that does not fill a whole
    window is not covered (as a sliding window over a signal). A video shorter
    than W (D <= W) gives one window over the whole video, `[0, D)`.

    Args:
        num_frames: N >= 1.
        fps: frames per second, > 0.
        window_seconds, stride_seconds: W, S > 0.

    Returns:
        `Windows`.

    Raises:
        PredictError: bad W, S, fps or N.
    """
    w = check_seconds("--window_seconds", window_seconds)
    s = check_seconds("--stride_seconds", stride_seconds)
    fps = check_seconds("fps", fps)
    if num_frames < 1:
        raise PredictError(f"a timeline needs at least one frame, got {num_frames}")
    duration = num_frames / fps
    if duration <= w:
        return Windows(np.zeros(1, np.int64), np.full(1, num_frames, np.int64),
                       np.zeros(1), np.full(1, duration))
    # The 1e-9 keeps an exact fit (e.g. D - W = 2.0, S = 0.5) from losing its
    # last window to float rounding.
    k = int(math.floor((duration - w) / s + 1e-9)) + 1
    start_s = np.arange(k) * s
    start = np.rint(start_s * fps).astype(np.int64)
    length = max(1, int(round(w * fps)))
    end = np.minimum(start + length, num_frames)
    return Windows(start, end, start_s, start_s + w)


def window_indices(windows: Windows, spec: sampling.SamplingSpec,
                   num_views: int = 1) -> np.ndarray:
    """Frame indices of every window, each sampled as one clip of its frames.

    Args:
        windows: `window_bounds`.
        spec: the run's evaluation sampling (`sampling.eval_indices`).
        num_views: temporal views per window.

    Returns:
        `[K, V, T] int64` indices into the whole video.
    """
    rows = [start + sampling.eval_indices(int(end - start), spec, num_views)
            for start, end in zip(windows.start_frame, windows.end_frame)]
    return np.stack(rows).astype(np.int64)
