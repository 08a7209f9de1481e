"""TensorFlow twin of `audfer_jax.data.sampling`, for use inside tf.data.

Same formulas (../shared/spec/datasets.md section 7), same integer arithmetic,
same mapping from uniform draws to integer draws: given the same `u` and N, the
indices equal `sampling.train_indices` / `sampling.eval_indices` exactly (tested
in tests/test_sampling.py). N is a scalar tensor, so every branch is computed
and the right one picked with `tf.where` (all branches are cheap index math).

Also holds the clip-level AU vote of datasets.md section 6c in TF.
"""

from __future__ import annotations

import tensorflow as tf

from audfer_jax.data.sampling import SamplingSpec, num_uniforms


def _pad_positions(length: int, k: tf.Tensor, pad: str) -> tf.Tensor:
    """Positions into a k-long sequence for a `length`-long padded one."""
    i = tf.range(length, dtype=tf.int64)
    if pad == "edge":
        return tf.minimum(i, k - 1)
    return i % k


def _expand(starts: tf.Tensor, d: int, n: tf.Tensor) -> tf.Tensor:
    idx = starts[:, None] + tf.range(d, dtype=tf.int64)[None, :]
    return tf.reshape(tf.minimum(idx, n - 1), [-1])


def _floor_draw(u: tf.Tensor, m: tf.Tensor) -> tf.Tensor:
    """floor(u * m) clamped to m - 1, u float64, m int64 scalar >= 1."""
    m = tf.maximum(m, 1)
    return tf.minimum(tf.cast(tf.floor(u * tf.cast(m, tf.float64)), tf.int64),
                      m - 1)


def train_indices(n: tf.Tensor, spec: SamplingSpec, u: tf.Tensor) -> tf.Tensor:
    """Training indices; see `sampling.train_indices`.

    Args:
        n: scalar int tensor, N >= 1 frames in the clip.
        spec: the scheme (static).
        u: `[num_uniforms(spec)] float64` uniform draws in [0, 1).

    Returns:
        `[T] int32` indices in [0, N - 1].
    """
    n = tf.cast(n, tf.int64)
    u = tf.cast(u, tf.float64)
    u.shape.assert_is_compatible_with([num_uniforms(spec)])
    t = spec.num_frames
    if spec.scheme == "segments":
        s, d = spec.num_segments, spec.frames_per_segment
        n1 = n - d + 1
        a = tf.maximum(n1, 0) // s
        i = tf.range(s, dtype=tf.int64)
        regular = _expand(i * a + _floor_draw(u[:s], a), d, n)
        sorted_draws = _expand(tf.sort(_floor_draw(u[:s], n1)), d, n)
        if spec.reference_quirks:
            short = _expand(tf.zeros([s], tf.int64), d, n)
        else:
            short = _pad_positions(t, n, spec.pad)
        out = tf.where(a > 0, regular, tf.where(n > s, sorted_draws, short))
    elif spec.scheme == "uniform":
        i = tf.range(t, dtype=tf.int64)
        base = (n * i) // t
        if spec.jitter == "reference":
            jit = tf.cast(tf.floor(u[:t] * t), tf.int64)
        else:
            jit = tf.cast(tf.floor(u[:t] * tf.cast(n, tf.float64) / t), tf.int64)
        out = tf.minimum(base + jit, n - 1)
    else:
        rate, span = spec.rate, t * spec.rate
        k = tf.maximum(n // rate, 1)
        j = _pad_positions(t, k, spec.pad)
        seq = tf.where(k > 1, (j * n) // tf.maximum(k - 1, 1), tf.zeros_like(j))
        short = tf.minimum(seq, n - 1)
        end = span + _floor_draw(u[:1], n - span)[0]
        idx = end - span + (tf.range(t, dtype=tf.int64) * span) // max(t - 1, 1)
        long = tf.minimum(idx, end - 1)
        out = tf.where(n <= span, short, long)
    return tf.cast(out, tf.int32)


def eval_indices(n: tf.Tensor, spec: SamplingSpec, num_views: int = 1) -> tf.Tensor:
    """`[V, T] int32` deterministic eval indices; see `sampling.eval_indices`."""
    n = tf.cast(n, tf.int64)
    t, vv = spec.num_frames, num_views
    rows = []
    for v in range(vv):
        if spec.scheme == "segments":
            s, d = spec.num_segments, spec.frames_per_segment
            i = tf.range(s, dtype=tf.int64)
            starts = ((n - d + 1) * (2 * (i * vv + v) + 1)) // (2 * s * vv)
            regular = _expand(starts, d, n)
            if spec.reference_quirks:
                short = _expand(tf.zeros([s], tf.int64), d, n)
            else:
                short = _pad_positions(t, n, spec.pad)
            row = tf.where(n > s + d - 1, regular, short)
        elif spec.scheme == "uniform":
            i = tf.range(t, dtype=tf.int64)
            row = tf.minimum((n * (i * vv + v)) // (t * vv), n - 1)
        else:
            rate = spec.rate
            m = (n + rate - 1) // rate          # frames 0, s, 2s, ... < n
            extra = tf.maximum(m, t) - t
            start = extra // 2 if vv == 1 else (v * extra) // (vv - 1)
            pos = start + tf.range(t, dtype=tf.int64)
            pos = tf.minimum(pos, m - 1) if spec.pad == "edge" else pos % m
            row = pos * rate
        rows.append(row)
    return tf.cast(tf.stack(rows), tf.int32)


def au_vote(au_frames: tf.Tensor, au_valid: tf.Tensor,
            indices: tf.Tensor | None = None) -> tuple[tf.Tensor, tf.Tensor]:
    """Clip-level AU target by majority vote (datasets.md section 6c).

    Per AU, 1 if positives >= n/2 (ties positive), n = number of *distinct*
    indices whose frame has a valid AU entry (repeated padding indices count
    once). n = 0 gives zeros and has_au = 0 (never the reference's all-ones).

    Args:
        au_frames: `[N, 18] uint8` per-frame AU presence.
        au_valid: `[N] bool` validity.
        indices: `[T] int` sampled frame indices, or None for all frames.

    Returns:
        (target `[18] float32`, has_au scalar `float32`).
    """
    if indices is None:
        rows = tf.cast(au_frames, tf.float32)
        valid = tf.cast(au_valid, tf.float32)
    else:
        uniq, _ = tf.unique(tf.cast(tf.reshape(indices, [-1]), tf.int32))
        rows = tf.cast(tf.gather(au_frames, uniq), tf.float32)
        valid = tf.cast(tf.gather(au_valid, uniq), tf.float32)
    count = tf.reduce_sum(valid)
    positives = tf.reduce_sum(rows * valid[:, None], axis=0)
    target = tf.where((2.0 * positives >= count) & (count > 0), 1.0, 0.0)
    return target, tf.cast(count > 0, tf.float32)
