"""Device (JAX) augmentation against the tf.data reference (augment.py).

Per op: the same fixed parameters on the same frames (a real photo,
scikit-image's astronaut, subsampled to small non-square frames so that
height/width mix-ups show) give the same uint8 pixels to +-1 (rounding: the
two paths sum in different orders). Random policy: frequencies of the drawn
ops, magnitudes, flips, erasures and crop boxes against the recipe's
distributions (binomial and chi-square tests at p = 1e-4, KS against an
independent NumPy sampler); one draw for all frames of a clip.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

import jax
import jax.numpy as jnp

tf = pytest.importorskip("tensorflow")
skdata = pytest.importorskip("skimage.data")

from audfer_jax.data import augment, pipeline  # noqa: E402
from audfer_jax.data import augment_device as ad  # noqa: E402
from audfer_jax.models import platform  # noqa: E402

P_MIN = 1e-4          # smallest accepted p-value of the statistical tests
N_DRAWS = 4000        # clips per statistical test

# Jitted once per shape (eager switch branches would compile one by one).
_rand_augment_op = jax.jit(ad.rand_augment_op)
_rand_augment = jax.jit(ad.rand_augment)
_crop_resize = jax.jit(ad.crop_resize, static_argnums=2)
_color_jitter = jax.jit(ad.color_jitter)
_apply = jax.jit(ad.apply_clip_params, static_argnums=(2, 3))


@pytest.fixture(scope="module")
def frames():
    """`[2, 64, 72, 3] uint8`: the astronaut photo and a shifted copy."""
    img = skdata.astronaut()
    out = np.stack([img[0::8, 0::7][:64, :72], img[4::8, 3::7][:64, :72]])
    assert out.shape == (2, 64, 72, 3)
    return out


def _max_diff(a, b) -> int:
    return int(np.abs(np.asarray(a).astype(np.int32) - np.asarray(b).astype(np.int32)).max())


# --- ops with fixed parameters ------------------------------------------------

@pytest.mark.parametrize("box,out,flip", [
    ((0, 0, 64, 72), 48, False),      # whole frame, shrink (area filter)
    ((5, 9, 30, 20), 48, True),       # enlarge (bilinear)
    ((3, 2, 60, 25), 40, False),      # mixed: one side larger -> area on both
    ((10, 10, 40, 40), 40, True),     # same size: copy
    ((7, 30, 17, 41), 24, False),
])
def test_crop_resize_flip_matches_tf(frames, box, out, flip):
    y, x, h, w = box
    ref = augment.resize(tf.constant(frames[:, y:y + h, x:x + w]), out, fast_shrink=True)
    if flip:
        ref = tf.reverse(ref, axis=[2])
    got = _crop_resize(jnp.asarray(frames), jnp.array(box, jnp.int32), out, jnp.array(flip))
    assert got.shape == (2, out, out, 3)
    assert _max_diff(ad.to_uint8(got), augment.to_uint8(ref)) <= 1


NAMES = ["auto_contrast", "equalize", "invert", "rotate", "posterize", "solarize",
         "solarize_add", "color", "contrast", "brightness", "sharpness", "shear_x",
         "shear_y", "translate_x", "translate_y"]


@pytest.mark.parametrize("level,sign", [(7.0, 1.0), (9.3, -1.0)])
@pytest.mark.parametrize("op", range(15), ids=NAMES)
def test_rand_augment_op_matches_tf(frames, op, level, sign):
    x = frames.astype(np.float32)
    ref = augment._rand_ops(tf.constant(x), tf.constant(level), tf.constant(sign))[op]()
    ref = tf.clip_by_value(ref, 0.0, 255.0)
    got = jnp.clip(_rand_augment_op(jnp.asarray(x), op, level, sign), 0.0, 255.0)
    assert _max_diff(ad.to_uint8(got), augment.to_uint8(ref)) <= 1
    if op not in (0, 1):     # not a no-op on the photo (auto_contrast/equalize may be)
        assert _max_diff(ad.to_uint8(got), frames) > 1


@pytest.mark.parametrize("level,sign", [(7.0, 1.0), (9.3, -1.0)])
def test_equalize_accelerator_form_matches_tf(frames, level, sign):
    """Off CPU, equalize counts and looks up by comparison: the same pixels as TF."""
    x = np.concatenate([frames, frames[:, ::-1] // 2]).astype(np.float32)
    ref = augment._rand_ops(tf.constant(x), tf.constant(level), tf.constant(sign))[1]()
    with platform.record_forms() as forms, platform.target("tpu"):
        # Traced for TPU, run here: the accelerator form on this CPU (a fresh
        # function: jit's cache does not know the target).
        got = jax.jit(lambda *a: ad.rand_augment_op(*a))(jnp.asarray(x), 1, level, sign)
    assert ("compare_equalize", "tpu") in forms and not any(
            f == "scatter_equalize" for f, _ in forms)
    assert _max_diff(ad.to_uint8(got), augment.to_uint8(ref)) <= 1
    assert _max_diff(ad.to_uint8(got), x) > 1          # the darkened copy is stretched
    np.testing.assert_array_equal(got, _rand_augment_op(jnp.asarray(x), 1, level, sign))


def test_rand_augment_identity_and_chained_policy_match_tf(frames):
    x = jnp.asarray(frames, jnp.float32)
    np.testing.assert_array_equal(_rand_augment_op(x, 15, 7.0, 1.0), x)
    # Whole policies with drawn parameters: the TF ops applied in the same order.
    for seed in range(6):
        p = jax.device_get(ad.sample_rand_augment(jax.random.PRNGKey(seed), prob=0.8))
        ref = tf.constant(frames.astype(np.float32))
        for k in range(4):
            if p["apply"][k]:
                ref = augment._rand_ops(ref, tf.constant(float(p["levels"][k])),
                                        tf.constant(float(p["signs"][k])))[int(p["ops"][k])]()
            ref = tf.clip_by_value(ref, 0.0, 255.0)
        got = _rand_augment(x, p)
        assert _max_diff(ad.to_uint8(got), augment.to_uint8(ref)) <= 1, (seed, p)


def _tf_jitter_params(seed):
    """The draws of augment.color_jitter(x, seed), recomputed with its TF calls."""
    s = tf.random.experimental.stateless_split(seed, 5)
    u = lambda k, lo, hi: float(tf.random.stateless_uniform((), s[k], lo, hi))  # noqa: E731
    order = tf.argsort(tf.random.stateless_uniform([4], s[4]))
    return {"brightness": u(0, 0.6, 1.4), "contrast": u(1, 0.6, 1.4),
            "saturation": u(2, 0.6, 1.4), "hue": u(3, -0.4, 0.4),
            "order": jnp.asarray(order.numpy(), jnp.int32)}


def test_color_jitter_matches_tf(frames):
    x = frames.astype(np.float32)
    orders = set()
    for i in range(8):
        seed = tf.constant([i, 11], tf.int64)
        params = _tf_jitter_params(seed)
        orders.add(tuple(np.asarray(params["order"])))
        ref = augment.color_jitter(tf.constant(x), seed)
        got = _color_jitter(jnp.asarray(x), params)
        assert _max_diff(ad.to_uint8(got), augment.to_uint8(ref)) <= 1, params
    assert len(orders) > 3     # several op orders were compared


def test_random_erasing_box_and_noise(frames):
    params = {"erase": jnp.array(True), "box": jnp.array([10, 20, 30, 40], jnp.int32),
              "noise_key": jax.random.PRNGKey(3)}
    out = np.asarray(ad.random_erasing(jnp.asarray(frames), params))
    inside = np.zeros((64, 72), bool)
    inside[10:40, 20:60] = True
    np.testing.assert_array_equal(out[:, ~inside], frames[:, ~inside])
    # Noise: round(255 (mean + std z)) saturated; its mean per channel from the
    # normal CDF (independent of the sampler), within 5 standard errors.
    box = out[:, inside].astype(np.float64)            # [T, n, 3]
    v = np.arange(256.0)
    for c in range(3):
        mu, sd = 255 * ad.IMAGENET_MEAN[c], 255 * ad.IMAGENET_STD[c]
        cdf_hi = stats.norm.cdf((np.minimum(v + 0.5, np.inf) - mu) / sd)
        cdf_hi[-1] = 1.0
        cdf_lo = stats.norm.cdf((v - 0.5 - mu) / sd)
        cdf_lo[0] = 0.0
        pmf = cdf_hi - cdf_lo
        mean = (pmf * v).sum()
        std = math.sqrt((pmf * (v - mean) ** 2).sum())
        assert abs(box[..., c].mean() - mean) < 5 * std / math.sqrt(box[..., c].size)
    assert _max_diff(out[0, inside], out[1, inside]) > 0       # fresh noise per frame
    params["erase"] = jnp.array(False)
    np.testing.assert_array_equal(ad.random_erasing(jnp.asarray(frames), params), frames)


# --- random policy ----------------------------------------------------------

def _binomial_ok(successes: int, n: int, p: float) -> bool:
    return stats.binomtest(int(successes), n, p).pvalue > P_MIN


def test_rand_augment_draw_frequencies():
    keys = jax.random.split(jax.random.PRNGKey(0), N_DRAWS)
    p = jax.device_get(jax.vmap(ad.sample_rand_augment)(keys))
    ops = p["ops"].reshape(-1)
    counts = np.bincount(ops, minlength=15)
    assert counts.size == 15 and stats.chisquare(counts).pvalue > P_MIN
    assert _binomial_ok(p["apply"].sum(), p["apply"].size, 0.5)
    assert _binomial_ok((p["signs"] > 0).sum(), p["signs"].size, 0.5)
    levels = p["levels"].reshape(-1)
    # N(7, 0.5) clipped to [0, 10]: the clip is 6 sigma away, so a normal.
    assert stats.kstest(levels, stats.norm(7.0, 0.5).cdf).pvalue > P_MIN


def test_flip_erase_and_jitter_frequencies():
    keys = jax.random.split(jax.random.PRNGKey(1), N_DRAWS)
    flips = jax.device_get(jax.vmap(ad.sample_flip)(keys))
    assert _binomial_ok(flips.sum(), N_DRAWS, 0.5)
    er = jax.device_get(jax.vmap(lambda k: ad.sample_erasing(k, 160, 160))(keys))
    assert _binomial_ok(er["erase"].sum(), N_DRAWS, 0.25)
    frac = er["box"][:, 2] * er["box"][:, 3] / 160.0 ** 2
    assert frac.min() > 0.015 and frac.max() < 0.36
    cj = jax.device_get(jax.vmap(ad.sample_color_jitter)(keys))
    for name in ("brightness", "contrast", "saturation"):
        assert stats.kstest(cj[name], stats.uniform(0.6, 0.8).cdf).pvalue > P_MIN
    assert stats.kstest(cj["hue"], stats.uniform(-0.4, 0.8).cdf).pvalue > P_MIN
    perms = {p: i for i, p in enumerate(itertools.permutations(range(4)))}
    counts = np.bincount([perms[tuple(o)] for o in cj["order"]], minlength=24)
    assert stats.chisquare(counts).pvalue > P_MIN


def _numpy_crop_boxes(rng, n, height, width, *, log_ratio, swap, scale=(0.08, 1.0),
                      ratio=(3 / 4, 4 / 3)):
    """Reference sampler (torchvision RandomResizedCrop / Former-DFER) in NumPy."""
    out = []
    for _ in range(n):
        for _ in range(10):
            area = rng.uniform(*scale) * height * width
            aspect = (math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
                      if log_ratio else rng.uniform(*ratio))
            w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if swap and rng.random() < 0.5:
                w, h = h, w
            if 0 < w <= width and 0 < h <= height:
                out.append((h, w))
                break
        else:
            out.append((height, width))
    return np.array(out)


@pytest.mark.parametrize("log_ratio,swap", [(False, True), (True, False)])
def test_crop_box_distribution(log_ratio, swap):
    h, w = 96, 128
    keys = jax.random.split(jax.random.PRNGKey(2), N_DRAWS)
    boxes = jax.device_get(jax.vmap(
        lambda k: ad.sample_crop_box(k, h, w, log_ratio=log_ratio, swap=swap))(keys))
    y, x, bh, bw = boxes.T
    assert (y >= 0).all() and (x >= 0).all() and (y + bh <= h).all() and (x + bw <= w).all()
    ref = _numpy_crop_boxes(np.random.default_rng(0), N_DRAWS, h, w, log_ratio=log_ratio,
                            swap=swap)
    assert stats.ks_2samp(bh * bw, ref[:, 0] * ref[:, 1]).pvalue > P_MIN
    assert stats.ks_2samp(bw / bh, ref[:, 1] / ref[:, 0]).pvalue > P_MIN
    # Position uniform over the free range: its fraction is U(0, 1).
    free = (h - bh + 1).astype(np.float64)
    assert stats.kstest((y + 0.5) / free, "uniform").pvalue > P_MIN


def test_crop_box_fallback():
    key = jax.random.PRNGKey(0)
    # No try fits (area > image): torchvision's centre crop, aspect clamped.
    np.testing.assert_array_equal(ad.sample_crop_box(key, 64, 72, scale=(1.5, 2.0)),
                                  [0, 0, 64, 72])
    np.testing.assert_array_equal(ad.sample_crop_box(key, 40, 100, scale=(1.5, 2.0)),
                                  [0, (100 - 53) // 2, 40, 53])     # w = round(40 * 4/3)


@pytest.mark.parametrize("recipe", ad.RECIPES)
def test_frames_of_a_clip_share_one_draw(frames, recipe):
    clip = jnp.asarray(np.repeat(frames[:1], 4, axis=0))          # 4 identical frames
    key = jax.random.PRNGKey(5)
    outs = []
    for i in range(6):
        k = jax.random.fold_in(key, i)
        params = ad.sample_clip_params(k, recipe, 64, 72, 32)
        if recipe == "mae_dfer":
            params["erasing"]["erase"] = jnp.array(True)
        out = np.asarray(_apply(clip, params, recipe, 32))
        assert out.shape == (4, 32, 32, 3) and out.dtype == np.uint8
        same = np.ones((32, 32), bool)
        if recipe == "mae_dfer":
            t, l, bh, bw = np.asarray(params["erasing"]["box"])
            same[t:t + bh, l:l + bw] = False
        for f in range(1, 4):
            np.testing.assert_array_equal(out[f][same], out[0][same])
        outs.append(out[0])
    # ... and different clips get different draws.
    assert len({o.tobytes() for o in outs}) == len(outs)


def test_augment_batch_jit_shapes_and_per_clip_keys(frames):
    clips = jnp.asarray(np.repeat(frames[None], 4, axis=0))        # [4, 2, 64, 72, 3]
    key = jax.random.PRNGKey(3)
    out = np.asarray(jax.jit(lambda k, c: ad.augment_batch(k, c, "mae_dfer", out_size=40))(
            key, clips))
    assert out.shape == (4, 2, 40, 40, 3) and out.dtype == np.uint8
    assert _max_diff(out[0], out[1]) > 0
    # Clip i's draw is augment_clip with the i-th split key (the batch path
    # runs RandAugment batch-wise and erasing under a batch-level cond).
    keys = jax.random.split(key, 4)
    one = jax.jit(lambda k, c: ad.augment_clip(k, c, "mae_dfer", out_size=40))
    erased = 0
    for i in range(4):
        np.testing.assert_array_equal(out[i], one(keys[i], clips[i]))
        p = ad.sample_clip_params(keys[i], "mae_dfer", 64, 72, 40)
        erased += int(p["erasing"]["erase"])
    assert erased >= 1      # this key erases a clip: the cond's erasing branch is checked
    with pytest.raises(ValueError, match="uint8"):
        ad.augment_batch(jax.random.PRNGKey(0), clips.astype(jnp.float32), "mae_dfer",
                         out_size=40)
    with pytest.raises(ValueError, match="recipe"):
        ad.augment_clip(keys[0], clips[0], "randaug", out_size=40)


def test_make_device_augment_follows_config():
    c = pipeline.default_data_config()
    assert c.augment_device is True
    c.image_size, c.prepare_size = 24, 32
    assert ad.host_frame_size(c) == 32
    fn = jax.jit(ad.make_device_augment(c))
    out = fn(jax.random.PRNGKey(0), jnp.zeros((2, 3, 32, 32, 3), jnp.uint8))
    assert out.shape == (2, 3, 24, 24, 3)
    c.augment = "none"
    assert ad.make_device_augment(c) is None
    c.augment, c.augment_device = "m3dfel", False
    assert ad.make_device_augment(c) is None
    c.augment = "bogus"
    with pytest.raises(ValueError, match="bogus"):
        ad.make_device_augment(c)
