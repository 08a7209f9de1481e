"""Temporal sampling: which frames of an N-frame clip make the T-frame input.

Pure NumPy (no TensorFlow), so the schemes can be tested and reasoned about on
their own. `audfer_jax.data.sampling_tf` is the TensorFlow twin used inside
tf.data; given the same uniform draws both return identical indices.

Source: ../shared/spec/datasets.md section 7. Three schemes:

* ``segments``  (Former-DFER ``dataloader/dataset_DFEW.py``; DFER-CLIP/IAL with
  S=16, D=1): S segments of D consecutive frames.
* ``uniform``   (M3DFEL ``datasets/``): T evenly spaced frames plus a jitter.
* ``fixed_rate`` (MAE-DFER ``kinetics.py``): every s-th frame of a window of
  T*s frames.

Randomness enters only through a vector of uniform draws ``u`` in [0, 1) of
length `num_uniforms(spec)`; integer draws are ``floor(u * m)`` (clamped to
m - 1). Every "floor of a ratio" formula of the references (``int(t/2 + i*t)``,
``np.linspace(...).astype(int)``) is computed here in exact integer arithmetic,
which equals the reference value except where the reference's own float
rounding lands just below an integer.

All returned indices lie in [0, N - 1]. Clips shorter than the scheme needs are
never an error: the missing positions are filled with ``pad='edge'`` (repeat
the last index, default) or ``pad='loop'`` (cycle through the available ones).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

SCHEMES = ("segments", "uniform", "fixed_rate")
JITTERS = ("reference", "segment")
PADS = ("edge", "loop")


@dataclasses.dataclass(frozen=True)
class SamplingSpec:
    """Parameters of one temporal sampling scheme.

    Attributes:
        scheme: "segments" | "uniform" | "fixed_rate" (datasets.md section 7).
        num_frames: T, frames per output clip (16 in all three references).
        num_segments: S of ``segments`` (Former-DFER 8, DFER-CLIP 16).
        frames_per_segment: D of ``segments`` (Former-DFER 2, DFER-CLIP 1);
            S * D must equal T.
        rate: s of ``fixed_rate`` (MAE-DFER 4 on DFEW/MAFW, 1 on FERV39k).
        jitter: ``uniform`` training jitter: "reference" adds floor(u*T) (M3DFEL),
            "segment" adds floor(u*N/T).
        pad: filler for short clips, "edge" (repeat last) or "loop" (i mod k).
        reference_quirks: ``segments`` only: short clips get start 0 for every
            segment (frames 0, 1, 0, 1, ...) as Former-DFER does.
    """
    scheme: str = "segments"
    num_frames: int = 16
    num_segments: int = 8
    frames_per_segment: int = 2
    rate: int = 4
    jitter: str = "reference"
    pad: str = "edge"
    reference_quirks: bool = False

    def __post_init__(self):
        if self.scheme not in SCHEMES:
            raise ValueError(f"sampling scheme {self.scheme!r} not in {SCHEMES}")
        if self.jitter not in JITTERS:
            raise ValueError(f"jitter {self.jitter!r} not in {JITTERS}")
        if self.pad not in PADS:
            raise ValueError(f"pad {self.pad!r} not in {PADS}")
        if self.num_frames < 1 or self.rate < 1:
            raise ValueError(f"num_frames ({self.num_frames}) and rate "
                             f"({self.rate}) must be >= 1")
        if (self.scheme == "segments"
                and self.num_segments * self.frames_per_segment != self.num_frames):
            raise ValueError(
                f"segments: num_segments * frames_per_segment = "
                f"{self.num_segments} * {self.frames_per_segment} must equal "
                f"num_frames = {self.num_frames}")


def spec_from_config(config) -> SamplingSpec:
    """The `SamplingSpec` of a data config (`audfer_jax.data.config.DataConfig`)."""
    return SamplingSpec(scheme=config.sampling, num_frames=int(config.num_frames),
                        num_segments=int(config.num_segments),
                        frames_per_segment=int(config.frames_per_segment),
                        rate=int(config.sampling_rate), jitter=config.jitter, pad=config.pad,
                        reference_quirks=bool(config.reference_quirks))


def num_uniforms(spec: SamplingSpec) -> int:
    """Length of the uniform-draw vector `train_indices` consumes."""
    return max(spec.num_frames, spec.num_segments, 1)


def pad_sequence(seq: np.ndarray, length: int, pad: str) -> np.ndarray:
    """Extends `seq` ([k] int, k >= 1) to `length` entries.

    "edge" repeats seq[-1]; "loop" takes seq[i mod k]. Longer input is cut.
    """
    seq = np.asarray(seq, np.int64)
    if seq.size == 0:
        raise ValueError("cannot pad an empty index sequence")
    i = np.arange(length)
    j = np.minimum(i, seq.size - 1) if pad == "edge" else i % seq.size
    return seq[j]


def _check_n(n: int) -> int:
    n = int(n)
    if n < 1:
        raise ValueError(f"a clip needs at least one frame, got num_frames={n}")
    return n


def _expand_segments(starts: np.ndarray, d: int, n: int) -> np.ndarray:
    """Each start -> d consecutive frames, clamped at n - 1 (Former-DFER)."""
    idx = starts[:, None] + np.arange(d)[None, :]
    return np.minimum(idx, n - 1).reshape(-1)


def _floor_draw(u: np.ndarray, m: int) -> np.ndarray:
    """floor(u * m) clamped to [0, m - 1]: an integer draw from U{0..m-1}."""
    return np.minimum(np.floor(np.asarray(u, np.float64) * m).astype(np.int64), m - 1)


def train_indices(n: int, spec: SamplingSpec, u: np.ndarray) -> np.ndarray:
    """Training indices of one clip.

    Args:
        n: N, frames in the clip (>= 1).
        spec: the scheme.
        u: `[num_uniforms(spec)]` float uniform draws in [0, 1).

    Returns:
        `[T] int32` frame indices in [0, N - 1].

    Raises:
        ValueError: N < 1, or `u` too short.
    """
    n = _check_n(n)
    u = np.asarray(u, np.float64)
    if u.shape != (num_uniforms(spec),):
        raise ValueError(f"expected {num_uniforms(spec)} uniform draws, got "
                         f"shape {u.shape}")
    t = spec.num_frames
    if spec.scheme == "segments":
        s, d = spec.num_segments, spec.frames_per_segment
        n1 = n - d + 1
        a = n1 // s if n1 > 0 else 0
        if a > 0:
            starts = np.arange(s) * a + _floor_draw(u[:s], a)
        elif n > s:
            starts = np.sort(_floor_draw(u[:s], max(n1, 1)))
        elif spec.reference_quirks:
            starts = np.zeros(s, np.int64)
        else:
            return pad_sequence(np.arange(n), t, spec.pad).astype(np.int32)
        return _expand_segments(starts, d, n).astype(np.int32)
    if spec.scheme == "uniform":
        i = np.arange(t)
        base = (n * i) // t
        if spec.jitter == "reference":
            jit = np.floor(u[:t] * t).astype(np.int64)
        else:
            jit = np.floor(u[:t] * n / t).astype(np.int64)
        return np.minimum(base + jit, n - 1).astype(np.int32)
    # fixed_rate
    rate = spec.rate
    span = t * rate
    if n <= span:
        k = max(n // rate, 1)
        i = np.arange(k)
        seq = (i * n) // (k - 1) if k > 1 else np.zeros(1, np.int64)
        seq = np.minimum(seq, n - 1)
        return pad_sequence(seq, t, spec.pad).astype(np.int32)
    end = span + _floor_draw(u[:1], n - span)[0]
    start = end - span
    idx = start + (np.arange(t) * span) // max(t - 1, 1)
    return np.minimum(idx, end - 1).astype(np.int32)


def eval_indices(n: int, spec: SamplingSpec, num_views: int = 1) -> np.ndarray:
    """Deterministic evaluation indices, one row per temporal view.

    * segments: start_i = floor(t/2 + i*t) with t = (N-D+1)/S (Former-DFER
      ``_get_test_indices``); view v of V shifts the offset to t*(v+1/2)/V.
      Clips with N <= S+D-1 give the padded range 0..N-1 (or, with
      `reference_quirks`, start 0 for every segment).
    * uniform: floor(N*i/T) (M3DFEL without its test-time jitter); view v adds
      N*v/(T*V) before the floor.
    * fixed_rate: every s-th frame from 0, padded to >= T, then a T-long window
      at start floor(v * (len-T)/(V-1)) (MAE-DFER ``kinetics.py`` test mode,
      2 views: start 0 and len-T). With V = 1 the window is centred
      (the reference divides by V-1 and has no 1-view form).

    Args:
        n: N, frames in the clip (>= 1).
        spec: the scheme.
        num_views: V temporal views (>= 1).

    Returns:
        `[V, T] int32` frame indices in [0, N - 1].
    """
    n = _check_n(n)
    if num_views < 1:
        raise ValueError(f"num_views must be >= 1, got {num_views}")
    t, v_all = spec.num_frames, num_views
    rows = []
    for v in range(v_all):
        if spec.scheme == "segments":
            s, d = spec.num_segments, spec.frames_per_segment
            if n > s + d - 1:
                n1 = n - d + 1
                i = np.arange(s)
                starts = (n1 * (2 * (i * v_all + v) + 1)) // (2 * s * v_all)
                row = _expand_segments(starts, d, n)
            elif spec.reference_quirks:
                row = _expand_segments(np.zeros(s, np.int64), d, n)
            else:
                row = pad_sequence(np.arange(n), t, spec.pad)
        elif spec.scheme == "uniform":
            i = np.arange(t)
            row = np.minimum((n * (i * v_all + v)) // (t * v_all), n - 1)
        else:
            seq = pad_sequence(np.arange(0, n, spec.rate),
                               max(-(-n // spec.rate), t), spec.pad)
            extra = seq.size - t
            start = extra // 2 if v_all == 1 else (v * extra) // (v_all - 1)
            row = seq[start:start + t]
        rows.append(row)
    return np.stack(rows).astype(np.int32)


def sample_indices(n: int, spec: SamplingSpec, *, train: bool,
                   rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """`[T] int32` indices: training (drawing from `rng`) or the first eval view."""
    if not train:
        return eval_indices(n, spec, 1)[0]
    rng = np.random.default_rng() if rng is None else rng
    return train_indices(n, spec, rng.random(num_uniforms(spec)))
