"""Small on-disk clips for the data tests (not a test module).

`make_clips` writes JPEG frames whose grey level encodes the frame number
(frame k is uniformly 8 * k + 4), so a decoded clip tells which frames the
pipeline sampled; `fake_reader` serves them through the `read_split`
signature.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from audfer_jax.data import records

LEVEL_STEP = 8


def frame_level(k: int) -> int:
    """Grey level of frame k (0-based), recoverable after JPEG coding."""
    return LEVEL_STEP * k + 4


def level_to_index(values: np.ndarray) -> np.ndarray:
    """Inverse of `frame_level` on decoded means."""
    return np.round((np.asarray(values, np.float64) - 4) / LEVEL_STEP).astype(int)


def make_clips(root: str, lengths, split: str, *, start: int = 0, size: int = 24,
               seed: int = 0, fold: int = 1, ext: str = "jpg") -> list[records.Clip]:
    """Writes one folder per clip under `root`; returns the `Clip` records."""
    rng = np.random.default_rng(seed + start)
    clips = []
    for j, n in enumerate(lengths):
        i = start + j
        key = f"{i + 1:05d}"
        folder = os.path.join(root, key)
        os.makedirs(folder, exist_ok=True)
        frames = []
        for k in range(n):
            path = os.path.join(folder, f"{k + 1}.{ext}")
            image = np.full((size, size, 3), frame_level(k), np.uint8)
            Image.fromarray(image).save(path, quality=95) if ext == "jpg" else \
                Image.fromarray(image).save(path)
            frames.append(path)
        au = rng.integers(0, 2, (n, 18)).astype(np.uint8)
        valid = rng.random(n) < 0.8
        clips.append(records.Clip(key=key, label=i % 7, frames=frames, split=split,
                                  fold=fold, origin=f"set_{fold}.csv:{i + 2}",
                                  au_frames=au, au_valid=valid))
    return clips


def fake_reader(by_split: dict, calls: list | None = None):
    """A `read_split` stand-in serving `by_split[split]`."""
    def read_split(dataset, root, split, fold=None, *, frame_set=None, au_source=None,
                   on_error="raise", report=None, **options):
        if calls is not None:
            calls.append((dataset, split, fold))
        return list(by_split[split])
    return read_split
