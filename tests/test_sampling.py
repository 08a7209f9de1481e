"""Temporal sampling (datasets.md section 7): hand-worked index lists, padding,
and the TF twin against the NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest

from audfer_jax.data import sampling
from audfer_jax.data.sampling import SamplingSpec

SEG = SamplingSpec("segments", 16, 8, 2)
UNI = SamplingSpec("uniform", 16)
FIX4 = SamplingSpec("fixed_rate", 16, rate=4)
FIX1 = SamplingSpec("fixed_rate", 16, rate=1)


def _u(spec, value):
    return np.full(sampling.num_uniforms(spec), value)


# --- segments (Former-DFER 8 x 2) -------------------------------------------

def test_segments_eval_n70_by_hand():
    # t = 69/8 = 8.625; start_i = floor(4.3125 + 8.625 i).
    starts = [4, 12, 21, 30, 38, 47, 56, 64]
    expected = [s + d for s in starts for d in (0, 1)]
    assert sampling.eval_indices(70, SEG)[0].tolist() == expected


def test_segments_eval_n16_is_all_frames():
    # t = 15/8: starts 0, 2, ..., 14 -> frames 0..15.
    assert sampling.eval_indices(16, SEG)[0].tolist() == list(range(16))


def test_segments_eval_n10_by_hand():
    # t = 9/8 = 1.125: floor(0.5625 + 1.125 i) = 0 1 2 3 5 6 7 8.
    starts = [0, 1, 2, 3, 5, 6, 7, 8]
    assert sampling.eval_indices(10, SEG)[0].tolist() == [s + d for s in starts for d in (0, 1)]


def test_segments_train_n70_extremes():
    # a = 69 // 8 = 8: offsets 0 or 7 within each segment of 8.
    lo = sampling.train_indices(70, SEG, _u(SEG, 0.0)).tolist()
    hi = sampling.train_indices(70, SEG, _u(SEG, 0.9999)).tolist()
    assert lo == [8 * i + d for i in range(8) for d in (0, 1)]
    assert hi == [8 * i + 7 + d for i in range(8) for d in (0, 1)]


def test_segments_train_n16():
    # a = 15 // 8 = 1: start_i = i, each expanded to (i, i+1).
    got = sampling.train_indices(16, SEG, _u(SEG, 0.5)).tolist()
    assert got == [i + d for i in range(8) for d in (0, 1)]


@pytest.mark.parametrize("train", [True, False])
def test_segments_short_clip_n8_padding(train):
    # N = 8 <= S: the library pads the range 0..7; the reference repeats 0, 1.
    def get(spec):
        if train:
            return sampling.train_indices(8, spec, _u(spec, 0.3)).tolist()
        return sampling.eval_indices(8, spec)[0].tolist()
    assert get(SEG) == list(range(8)) + [7] * 8
    assert get(SamplingSpec("segments", 16, 8, 2, pad="loop")) == list(range(8)) * 2
    assert get(SamplingSpec("segments", 16, 8, 2, reference_quirks=True)) == [0, 1] * 8


def test_segments_train_sorted_draws_branch():
    # S = 4, D = 3 (T = 12), N = 5: a = 3 // 4 = 0 and N > S -> 4 sorted draws
    # from U{0..2}; u = (0.9, 0.1, 0.5, 0.4) -> floor(3u) = 2, 0, 1, 1 -> sorted.
    spec = SamplingSpec("segments", 12, 4, 3)
    u = np.array([0.9, 0.1, 0.5, 0.4] + [0.0] * 8)
    starts = [0, 1, 1, 2]
    expected = [min(s + d, 4) for s in starts for d in range(3)]
    assert sampling.train_indices(5, spec, u).tolist() == expected


# --- uniform (M3DFEL) -------------------------------------------------------

def test_uniform_eval_n70_by_hand():
    expected = [0, 4, 8, 13, 17, 21, 26, 30, 35, 39, 43, 48, 52, 56, 61, 65]
    assert sampling.eval_indices(70, UNI)[0].tolist() == expected


def test_uniform_eval_n8_repeats():
    assert sampling.eval_indices(8, UNI)[0].tolist() == [i // 2 for i in range(16)]


def test_uniform_train_jitter_reference_and_segment():
    # reference: i + floor(0.5 * 16) = i + 8, clipped to 15.
    ref = sampling.train_indices(16, UNI, _u(UNI, 0.5)).tolist()
    assert ref == [min(i + 8, 15) for i in range(16)]
    # segment: floor(0.5 * 16 / 16) = 0.
    seg = SamplingSpec("uniform", 16, jitter="segment")
    assert sampling.train_indices(16, seg, _u(seg, 0.5)).tolist() == list(range(16))
    # N = 70 segment jitter: floor(70 i / 16) + floor(0.99 * 70 / 16) = base + 4.
    base = [(70 * i) // 16 for i in range(16)]
    got = sampling.train_indices(70, seg, _u(seg, 0.99)).tolist()
    assert got == [min(b + 4, 69) for b in base]


# --- fixed rate (MAE-DFER) --------------------------------------------------

def test_fixed_rate_train_n70_s4_window():
    # L = 64 < 70: end = 64 + floor(u * 6); u = 0 -> window [0, 64],
    # floor(linspace(0, 64, 16)) with the end clipped to 63.
    expected = np.floor(np.linspace(0, 64, 16)).astype(int)
    expected[-1] = 63
    assert sampling.train_indices(70, FIX4, _u(FIX4, 0.0)).tolist() == expected.tolist()
    # u -> 1: end = 69, start 5.
    hi = sampling.train_indices(70, FIX4, _u(FIX4, 0.9999))
    assert hi[0] == 5 and hi[-1] == 68


def test_fixed_rate_train_short_clips():
    # N = 16, s = 4: floor(linspace(0, 16, 4)) = 0 5 10 16 -> clip 15, pad with 15.
    assert sampling.train_indices(16, FIX4, _u(FIX4, 0.7)).tolist() == [0, 5, 10, 15] + [15] * 12
    loop = SamplingSpec("fixed_rate", 16, rate=4, pad="loop")
    assert sampling.train_indices(16, loop, _u(loop, 0.7)).tolist() == [0, 5, 10, 15] * 4
    # FERV39k N = 8, s = 1: floor(linspace(0, 8, 8)) = 0..6, 8 -> 7; pad with 7.
    assert sampling.train_indices(8, FIX1, _u(FIX1, 0.2)).tolist() == list(range(8)) + [7] * 8


def test_fixed_rate_eval_views():
    # N = 70, s = 4: 0, 4, ..., 68 (18 frames); 2 views start at 0 and 18 - 16 = 2.
    views = sampling.eval_indices(70, FIX4, 2)
    assert views[0].tolist() == list(range(0, 64, 4))
    assert views[1].tolist() == list(range(8, 72, 4))
    assert sampling.eval_indices(70, FIX4, 1)[0].tolist() == list(range(4, 68, 4))
    # N = 16: 0 4 8 12 padded with 12; both views identical.
    short = sampling.eval_indices(16, FIX4, 2)
    assert short[0].tolist() == [0, 4, 8, 12] + [12] * 12
    assert short[1].tolist() == short[0].tolist()


# --- properties over many clips ---------------------------------------------

ALL_SPECS = [
    SEG, SamplingSpec("segments", 16, 8, 2, pad="loop"),
    SamplingSpec("segments", 16, 8, 2, reference_quirks=True),
    SamplingSpec("segments", 16, 16, 1), UNI, SamplingSpec("uniform", 16, jitter="segment"),
    FIX4, FIX1, SamplingSpec("fixed_rate", 16, rate=4, pad="loop"),
]


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_indices_in_range_and_shape(spec):
    rng = np.random.default_rng(0)
    for n in list(range(1, 40)) + [70, 200, 847]:
        for _ in range(3):
            idx = sampling.train_indices(n, spec, rng.random(sampling.num_uniforms(spec)))
            assert idx.shape == (16,) and idx.min() >= 0 and idx.max() <= n - 1
        ev = sampling.eval_indices(n, spec, 2)
        assert ev.shape == (2, 16) and ev.min() >= 0 and ev.max() <= n - 1


def test_segments_train_covers_each_segment_uniformly():
    # N = 70: offset within a segment is U{0..7}; check all 8 values appear
    # with roughly equal frequency in 4000 draws.
    rng = np.random.default_rng(1)
    offs = [sampling.train_indices(70, SEG, rng.random(16))[0] for _ in range(4000)]
    counts = np.bincount(offs, minlength=8)
    assert counts.size == 8 and counts.min() > 400


def test_bad_specs_raise():
    with pytest.raises(ValueError, match="must equal num_frames"):
        SamplingSpec("segments", 16, 8, 3)
    with pytest.raises(ValueError, match="scheme"):
        SamplingSpec("tsn")
    with pytest.raises(ValueError, match="at least one frame"):
        sampling.eval_indices(0, SEG)


# --- TF twin ----------------------------------------------------------------

@pytest.fixture(scope="module")
def tf_mod():
    tf = pytest.importorskip("tensorflow")
    from audfer_jax.data import sampling_tf
    return tf, sampling_tf


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_tf_equals_numpy_given_same_draws(tf_mod, spec):
    tf, sampling_tf = tf_mod
    rng = np.random.default_rng(2)
    k = sampling.num_uniforms(spec)
    ns = list(range(1, 36)) + [64, 65, 70, 100, 847]
    us = rng.random((len(ns), k))

    @tf.function
    def run(n, u):
        return sampling_tf.train_indices(n, spec, u), sampling_tf.eval_indices(n, spec, 2)

    for n, u in zip(ns, us):
        tr, ev = run(tf.constant(n, tf.int32), tf.constant(u, tf.float64))
        np.testing.assert_array_equal(tr.numpy(), sampling.train_indices(n, spec, u),
                                      err_msg=f"train N={n}")
        np.testing.assert_array_equal(ev.numpy(), sampling.eval_indices(n, spec, 2),
                                      err_msg=f"eval N={n}")


def _vote_reference(au, valid, idx):
    """Independent NumPy vote: distinct sampled frames with a valid entry."""
    frames = [i for i in sorted(set(int(i) for i in idx)) if valid[i]]
    if not frames:
        return np.zeros(18, np.float32), 0.0
    pos = au[frames].sum(0)
    return (2 * pos >= len(frames)).astype(np.float32), 1.0


def test_tf_au_vote_matches_numpy(tf_mod):
    tf, sampling_tf = tf_mod
    try:
        from audfer_jax.data.readers import clip_au_target
    except ImportError:
        clip_au_target = None
    rng = np.random.default_rng(3)
    vote = tf.function(sampling_tf.au_vote, input_signature=[
        tf.TensorSpec([None, 18], tf.uint8), tf.TensorSpec([None], tf.bool),
        tf.TensorSpec([None], tf.int64)])
    for case in range(60):
        n = int(rng.integers(1, 40))
        au = rng.integers(0, 2, (n, 18)).astype(np.uint8)
        valid = rng.random(n) < (0.0 if case % 10 == 0 else 0.8)
        idx = np.minimum(np.sort(rng.integers(0, n + 4, 16)), n - 1)   # with repeats
        target, has = vote(tf.constant(au), tf.constant(valid), tf.constant(idx, tf.int64))
        ref_t, ref_h = _vote_reference(au, valid, idx)
        np.testing.assert_array_equal(target.numpy(), ref_t)
        assert float(has) == ref_h
        if clip_au_target is not None:
            t2, h2 = clip_au_target(au, valid, idx)
            np.testing.assert_array_equal(target.numpy(), np.asarray(t2, np.float32))
            assert float(has) == float(h2)


def test_tf_au_vote_tie_is_positive(tf_mod):
    tf, sampling_tf = tf_mod
    au = np.zeros((4, 18), np.uint8)
    au[:2, 0] = 1          # AU01 in 2 of 4 frames: a tie -> positive
    au[:1, 1] = 1          # AU02 in 1 of 4 -> negative
    target, has = sampling_tf.au_vote(tf.constant(au), tf.constant(np.ones(4, bool)),
                                      tf.constant([0, 1, 2, 3, 3, 3]))
    assert target.numpy()[0] == 1 and target.numpy()[1] == 0 and float(has) == 1
