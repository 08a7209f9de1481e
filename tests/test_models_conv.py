"""The polyphase strided convolution (audfer_jax/models/conv.py) against lax's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from audfer_jax.models import conv

# (input shape, kernel, strides, padding): the strided convolutions of R3D-18
# (stem, BasicBlock conv1, 1x1x1 downsample, a length-1 time axis as in layer4),
# 2-D and 1-D cases, odd sizes and string padding.
CASES = [
    ((2, 4, 9, 8, 3), (3, 3, 3), (2, 2, 2), ((1, 1),) * 3),
    ((2, 1, 6, 6, 4), (3, 3, 3), (2, 2, 2), ((1, 1),) * 3),
    ((2, 4, 8, 8, 4), (1, 1, 1), (2, 2, 2), ((0, 0),) * 3),
    ((2, 4, 14, 14, 3), (3, 7, 7), (1, 2, 2), ((1, 1), (3, 3), (3, 3))),
    ((2, 9, 9, 3), (7, 7), (2, 2), ((3, 3), (3, 3))),
    ((2, 8, 8, 3), (3, 3), (2, 2), "SAME"),
    ((2, 11, 3), (4,), (3,), ((2, 1),)),
]


def _reference(x, w, strides, padding):
    dn = lax.conv_dimension_numbers(x.shape, w.shape, conv._channels_last_spec(len(strides)))
    return lambda a, b: lax.conv_general_dilated(a, b, strides, padding, dimension_numbers=dn)


@pytest.mark.parametrize("x_shape, kernel, strides, padding", CASES)
def test_forward_is_lax_and_gradients_match(x_shape, kernel, strides, padding):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
    w = jnp.asarray(rng.standard_normal(kernel + (x_shape[-1], 5)), jnp.float32)
    ref = _reference(x, w, strides, padding)
    dn = lax.conv_dimension_numbers(x.shape, w.shape, conv._channels_last_spec(len(strides)))
    new = lambda a, b: conv.conv_general_dilated(a, b, strides, padding,  # noqa: E731
                                                 dimension_numbers=dn)
    y = ref(x, w)
    # The forward pass is lax's own convolution: bit-identical.
    np.testing.assert_array_equal(np.asarray(jax.jit(new)(x, w)), np.asarray(y))
    g = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
    want = jax.vjp(ref, x, w)[1](g)
    got = jax.jit(lambda a, b, c: jax.vjp(new, a, b)[1](c))(x, w, g)
    for u, v in zip(want, got):
        np.testing.assert_allclose(np.asarray(v), np.asarray(u), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("x_shape, kernel, strides, padding", CASES)
def test_polyphase_form_equals_the_strided_convolution(x_shape, kernel, strides, padding):
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
    w = jnp.asarray(rng.standard_normal(kernel + (x_shape[-1], 3)), jnp.float32)
    pads = conv._pads(padding, x_shape[1:-1], kernel, strides)
    np.testing.assert_allclose(np.asarray(conv.polyphase_conv(x, w, strides, pads)),
                               np.asarray(_reference(x, w, strides, padding)(x, w)),
                               rtol=1e-5, atol=1e-4)


def test_other_convolutions_fall_back_to_lax():
    # Dilated, grouped or unstrided convolutions are passed to lax unchanged
    # (their jaxpr holds no custom_vjp).
    x = jnp.ones((1, 8, 8, 4))
    w = jnp.ones((3, 3, 2, 4))
    dn = ("NHWC", "HWIO", "NHWC")
    for kwargs in (dict(window_strides=(1, 1)),
                   dict(window_strides=(2, 2), feature_group_count=2),
                   dict(window_strides=(2, 2), rhs_dilation=(2, 2))):
        ww = w if kwargs.get("feature_group_count") else jnp.ones((3, 3, 4, 4))
        jaxpr = jax.make_jaxpr(lambda a, b: conv.conv_general_dilated(
                a, b, padding="SAME", dimension_numbers=dn, **kwargs))(x, ww)
        assert "custom_vjp" not in str(jaxpr)


@pytest.mark.parametrize("shape, window, strides, padding", [
    ((2, 9, 9, 3), (3, 3), (2, 2), ((1, 1), (1, 1))),
    ((2, 8, 7, 2), (3, 3), (2, 2), ((1, 1), (1, 1))),
    ((1, 6, 5, 4, 2), (2, 3, 3), (2, 1, 2), ((0, 0), (1, 1), (1, 0))),
])
def test_max_pool_matches_flax_with_ties(shape, window, strides, padding):
    from flax import linen as nn
    rng = np.random.default_rng(2)
    # ReLU-like input: many exact zeros, so many windows have tied maxima.
    x = jnp.asarray(np.maximum(rng.standard_normal(shape), 0.0), jnp.float32)
    ref = lambda a: nn.max_pool(a, window, strides=strides, padding=padding)  # noqa: E731
    new = lambda a: conv.max_pool(a, window, strides, padding)  # noqa: E731
    y = ref(x)
    np.testing.assert_array_equal(np.asarray(jax.jit(new)(x)), np.asarray(y))
    g = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
    want = jax.vjp(ref, x)[1](g)[0]
    got = jax.jit(lambda a, b: jax.vjp(new, a)[1](b))(x, g)[0]
    # Same routing of every output's gradient; sums of overlapping windows
    # may round differently.
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("x_shape, kernel", [((2, 4, 32, 32, 3), (2, 16, 16)),
                                             ((2, 5, 33, 31, 3), (2, 8, 8)),
                                             ((3, 12, 12, 2), (4, 4))])
def test_patchify_convolution_gradients(x_shape, kernel):
    # Kernel = stride, VALID (MAE-DFER's tubelet embedding); odd sizes drop
    # the incomplete patch like the convolution does.
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
    w = jnp.asarray(rng.standard_normal(kernel + (x_shape[-1], 6)), jnp.float32)
    ref = _reference(x, w, kernel, "VALID")
    dn = lax.conv_dimension_numbers(x.shape, w.shape, conv._channels_last_spec(len(kernel)))
    new = lambda a, b: conv.conv_general_dilated(a, b, kernel, "VALID",  # noqa: E731
                                                 dimension_numbers=dn)
    y = ref(x, w)
    np.testing.assert_array_equal(np.asarray(jax.jit(new)(x, w)), np.asarray(y))
    np.testing.assert_allclose(np.asarray(conv.patch_conv(x, w, kernel)), np.asarray(y),
                               rtol=1e-5, atol=1e-4)
    g = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
    want = jax.vjp(ref, x, w)[1](g)
    got = jax.jit(lambda a, b, c: jax.vjp(new, a, b)[1](c))(x, w, g)
    for u, v in zip(want, got):
        np.testing.assert_allclose(np.asarray(v), np.asarray(u), rtol=1e-4, atol=1e-4)


# 3-D convolutions with temporal stride 1 that `frames_conv_general_dilated`
# runs frame by frame on CPU: R3D-18's stem, its stride-1 3x3x3 convolutions,
# a length-1 clip axis (two of three taps read only padding) and uneven
# temporal padding.
FRAME_CASES = [
    ((2, 4, 14, 14, 3), (3, 7, 7), (1, 2, 2), ((1, 1), (3, 3), (3, 3))),
    ((2, 4, 8, 8, 5), (3, 3, 3), (1, 1, 1), ((1, 1),) * 3),
    ((2, 1, 6, 6, 4), (3, 3, 3), (1, 1, 1), ((1, 1),) * 3),
    ((1, 3, 7, 6, 2), (2, 3, 3), (1, 2, 1), ((0, 1), (1, 1), (1, 1))),
    ((2, 5, 6, 6, 3), (3, 3, 3), (1, 1, 1), "SAME"),
    # Temporal stride 2 with taps that read only padding (R3D-18's layer3
    # and layer4 first convolutions on 4-frame instances).
    ((2, 2, 8, 8, 3), (3, 3, 3), (2, 2, 2), ((1, 1),) * 3),
    ((2, 1, 7, 7, 3), (3, 3, 3), (2, 2, 2), ((1, 1),) * 3),
]


def _numpy_conv3d(x, w, g, strides, pads):
    """Float64 NumPy 3-D convolution, tap by tap, with its vjp for cotangent `g`.

    y[n, o] = sum_taps x_pad[n, o * s + tap] @ w[tap]; dw[tap] and dx_pad
    collect the same products. Returns (y, dx, dw); `g` may be None (y only).
    """
    (lt, ht), (lh, hh), (lw, hw) = pads
    xp = np.pad(x, ((0, 0), (lt, ht), (lh, hh), (lw, hw), (0, 0)))
    out = [(n - k) // s + 1 for n, k, s in zip(xp.shape[1:4], w.shape[:3], strides)]
    y = np.zeros((x.shape[0], *out, w.shape[-1]))
    dxp, dw = np.zeros_like(xp), np.zeros_like(w)
    for a, b, c in np.ndindex(*w.shape[:3]):
        index = (slice(None),) + tuple(slice(t, t + (m - 1) * s + 1, s)
                                       for t, m, s in zip((a, b, c), out, strides))
        y += np.einsum("nthwi,io->nthwo", xp[index], w[a, b, c])
        if g is not None:
            dw[a, b, c] = np.einsum("nthwi,nthwo->io", xp[index], g)
            dxp[index] += np.einsum("nthwo,io->nthwi", g, w[a, b, c])
    dx = dxp[:, lt:lt + x.shape[1], lh:lh + x.shape[2], lw:lw + x.shape[3]]
    return y, dx, dw


@pytest.mark.parametrize("x_shape, kernel, strides, padding", FRAME_CASES)
def test_frames_convolution_matches_a_float64_numpy_convolution(x_shape, kernel, strides,
                                                                padding):
    # The frame-by-frame float32 form must match an independent float64
    # convolution as closely as lax's own float32 3-D convolution does.
    rng = np.random.default_rng(2)
    x64 = rng.standard_normal(x_shape)
    w64 = rng.standard_normal(kernel + (x_shape[-1], 6))
    pads = conv._pads(padding, x_shape[1:-1], kernel, strides)
    y64, _, _ = _numpy_conv3d(x64, w64, None, strides, pads)
    g64 = rng.standard_normal(y64.shape)
    _, dx64, dw64 = _numpy_conv3d(x64, w64, g64, strides, pads)
    dn = ("NDHWC", "DHWIO", "NDHWC")
    new = lambda a, b: conv.frames_conv_general_dilated(a, b, strides, padding,  # noqa: E731
                                                        dimension_numbers=dn)
    x, w, g = (jnp.asarray(a, jnp.float32) for a in (x64, w64, g64))
    y = jax.jit(new)(x, w)
    dx, dw = jax.jit(lambda a, b, c: jax.vjp(new, a, b)[1](c))(x, w, g)
    assert y.shape == y64.shape and y.dtype == jnp.float32
    for got, want in ((y, y64), (dx, dx64), (dw, dw64)):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5,
                                   atol=1e-5 * np.abs(want).max())


def test_frames_convolution_drops_taps_that_read_only_padding():
    # One frame, temporal padding 1: taps 0 and 2 multiply zeros only. The
    # frame form convolves with the middle tap alone (a 2-D convolution of
    # C_in channels, not 3*C_in) and their kernel gradient is exactly 0.
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((2, 1, 6, 6, 4)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 3, 3, 4, 5)), jnp.float32)
    pads = ((1, 1),) * 3
    jaxpr = str(jax.make_jaxpr(lambda a, b: conv.frames_conv(a, b, pads))(x, w))
    assert "f32[3,3,4,5]" in jaxpr and "f32[3,3,12,5]" not in jaxpr
    dw = jax.grad(lambda b: jnp.sum(conv.frames_conv(x, b, pads) ** 2))(w)
    assert np.all(np.asarray(dw[0]) == 0) and np.all(np.asarray(dw[2]) == 0)
    assert np.abs(np.asarray(dw[1])).max() > 0


def test_frames_dispatch():
    # Temporal stride 2 with all taps live keeps the polyphase path (a
    # custom_vjp around lax's forward); the frame form is a 2-D
    # batch_chunked_conv; conv.frames_conv_general_dilated leaves a 2-D
    # convolution to lax.
    x3 = jnp.ones((1, 4, 8, 8, 2))
    w3 = jnp.ones((3, 3, 3, 2, 3))
    dn3 = ("NDHWC", "DHWIO", "NDHWC")
    strided = str(jax.make_jaxpr(lambda a, b: conv.frames_conv_general_dilated(
            a, b, (2, 2, 2), ((1, 1),) * 3, dimension_numbers=dn3))(x3, w3))
    assert "name=_strided_conv" in strided and "concatenate" not in strided
    framed = str(jax.make_jaxpr(lambda a, b: conv.frames_conv_general_dilated(
            a, b, (1, 1, 1), ((1, 1),) * 3, dimension_numbers=dn3))(x3, w3))
    assert "concatenate" in framed and "name=batch_chunked_conv" in framed
    assert "_strided_conv" not in framed
    flat = str(jax.make_jaxpr(lambda a, b: conv.frames_conv_general_dilated(
            a, b, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))(
                jnp.ones((1, 8, 8, 2)), jnp.ones((3, 3, 2, 3))))
    assert "concatenate" not in flat and "custom_vjp" not in flat
    # Stride 2 over a 2-frame clip: tap 0 reads only padding -> frame form.
    pruned = str(jax.make_jaxpr(lambda a, b: conv.frames_conv_general_dilated(
            a, b, (2, 2, 2), ((1, 1),) * 3, dimension_numbers=dn3))(x3[:, :2], w3))
    assert "concatenate" in pruned and "_strided_conv" not in pruned


def test_frames_convolution_without_output_frames_is_an_error():
    with pytest.raises(ValueError, match="no output frame"):
        conv.frames_conv(jnp.ones((1, 1, 4, 4, 2)), jnp.ones((3, 3, 3, 2, 2)),
                         ((0, 0), (1, 1), (1, 1)))


@pytest.mark.parametrize("batch, nbytes, want", [
    (64, 147 << 20, 16),   # R3D-18 layer1 as frames: capped at 16 chunks
    (64, 3 << 20, 2),      # 3 MB: 3 wanted; 2 is the largest divisor of 64 <= 3
    (64, 1 << 19, 1),      # half a MB: no chunking
    (12, 20 << 20, 12),    # 16 wanted; 12 is the largest divisor <= 16
    (7, 5 << 20, 1),       # prime batch: only 1 divides it below 5
])
def test_grad_chunks(batch, nbytes, want):
    assert conv.grad_chunks(batch, nbytes) == want


@pytest.mark.parametrize("x_shape, kernel, strides, padding", [
    ((8, 9, 9, 3), (7, 7), (2, 2), ((3, 3), (3, 3))),
    ((6, 8, 7, 5), (3, 3), (1, 1), ((1, 1), (1, 1))),
])
def test_batch_chunked_convolution_matches_float64(monkeypatch, x_shape, kernel, strides,
                                                   padding):
    # Tiny chunk size so that the backward pass really runs in several chunks
    # (8 and 6 of them); the reference is the float64 NumPy convolution with a
    # length-1 time axis.
    monkeypatch.setattr(conv, "_CHUNK_BYTES", 64)
    assert conv.grad_chunks(x_shape[0], int(np.prod(x_shape)) * 4) == x_shape[0]
    rng = np.random.default_rng(4)
    x64 = rng.standard_normal(x_shape)
    w64 = rng.standard_normal(kernel + (x_shape[-1], 4))
    pads3 = ((0, 0),) + tuple(padding)
    y64, _, _ = _numpy_conv3d(x64[:, None], w64[None], None, (1,) + strides, pads3)
    g64 = rng.standard_normal(y64.shape)[:, 0]
    _, dx64, dw64 = _numpy_conv3d(x64[:, None], w64[None], g64[:, None], (1,) + strides, pads3)
    x, w, g = (jnp.asarray(a, jnp.float32) for a in (x64, w64, g64))
    f = lambda a, b: conv.batch_chunked_conv(a, b, strides, padding)  # noqa: E731
    y = jax.jit(f)(x, w)
    np.testing.assert_array_equal(np.asarray(y),
                                  np.asarray(_reference(x, w, strides, padding)(x, w)))
    dx, dw = jax.jit(lambda a, b, c: jax.vjp(f, a, b)[1](c))(x, w, g)
    for got, want in ((y, y64[:, 0]), (dx, dx64[:, 0]), (dw, dw64[0])):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5,
                                   atol=1e-5 * np.abs(want).max())


def test_cpu_convolution_dispatch():
    x2, w2 = jnp.ones((2, 8, 8, 2)), jnp.ones((3, 3, 2, 3))
    dn2 = ("NHWC", "HWIO", "NHWC")
    chunked = str(jax.make_jaxpr(lambda a, b: conv.cpu_conv_general_dilated(
            a, b, (1, 1), "SAME", dimension_numbers=dn2))(x2, w2))
    assert "name=batch_chunked_conv" in chunked
    grouped = str(jax.make_jaxpr(lambda a, b: conv.cpu_conv_general_dilated(
            a, b, (1, 1), "SAME", dimension_numbers=dn2, feature_group_count=2))(
                x2, jnp.ones((3, 3, 1, 4))))
    assert "custom_vjp" not in grouped
    x3, w3 = jnp.ones((1, 4, 8, 8, 2)), jnp.ones((3, 3, 3, 2, 3))
    three_d = str(jax.make_jaxpr(lambda a, b: conv.cpu_conv_general_dilated(
            a, b, (1, 1, 1), "SAME", dimension_numbers=("NDHWC", "DHWIO", "NDHWC")))(x3, w3))
    assert "custom_vjp" not in three_d


# One frame at Former-DFER's 112 pixels: the old equality-based backward
# failed here (and with 2 frames), passed at 64 pixels, where XLA:CPU fused
# the program otherwise.
@pytest.mark.parametrize("batch, size", [(1, 112)])
def test_max_pool_gradient_after_fused_batchnorm_relu(batch, size):
    # Former-DFER's stem: conv 7x7/2 -> BatchNorm (batch statistics) -> ReLU ->
    # max-pool 3/2/1, one jitted program. XLA:CPU may compute the BatchNorm +
    # ReLU output twice, in the forward reduction and in the backward pass,
    # with different last bits; an argmax found by equality with the forward
    # output then misses (issue 21: s_former/bn1 gradients 80-160 % off).
    # Expected: lax's reduce_window gradient (select_and_scatter) of the same
    # program, and, with an all-ones output gradient, each output's 1 lands
    # on exactly one input (the per-channel sum of the pooled-input gradient
    # is the number of outputs per channel).
    from audfer_jax.models import layers, platform
    rng = np.random.default_rng(4)
    clips = jnp.asarray(rng.integers(0, 256, (batch, size, size, 3)), jnp.float32) / 255.0
    kernel = jnp.asarray(rng.standard_normal((7, 7, 3, 8)) / np.sqrt(147.0), jnp.float32)
    bn = layers.batch_norm(True, jnp.float32, "bn")
    bn_vars = bn.init(jax.random.key(0), jnp.zeros((1, 1, 1, 8)))

    def stem(pool, kernel, scale, bias):
        y = lax.conv_general_dilated(clips, kernel, (2, 2), ((3, 3), (3, 3)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
        y, _ = bn.apply({"params": {"scale": scale, "bias": bias},
                         "batch_stats": bn_vars["batch_stats"]}, y, mutable=["batch_stats"])
        return pool(jax.nn.relu(y))

    ours = lambda a: conv.max_pool(a, (3, 3), (2, 2), ((1, 1), (1, 1)))  # noqa: E731

    def ref(a):
        return lax.reduce_window(a, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                                 ((0, 0), (1, 1), (1, 1), (0, 0)))

    scale, bias = bn_vars["params"]["scale"], bn_vars["params"]["bias"]
    out = size // 4
    g = jnp.asarray(rng.standard_normal((batch, out, out, 8)), jnp.float32)

    def grads(pool, weights):
        fn = lambda k, s, b: jnp.sum(stem(pool, k, s, b) * weights)  # noqa: E731
        with platform.target("cpu"):
            return jax.jit(jax.grad(fn, argnums=(0, 1, 2)))(kernel, scale, bias)

    for weights in (g, jnp.ones_like(g)):
        want, got = grads(ref, weights), grads(ours, weights)
        for name, u, v in zip(("kernel", "scale", "bias"), want, got):
            np.testing.assert_allclose(np.asarray(v), np.asarray(u), rtol=2e-5, atol=2e-4,
                                       err_msg=name)

    # Routing count, independent of lax: d(sum of pooled values)/d(pooled input).
    def pooled_input_grad(pool):
        def fn(k, s, b):
            y = lax.conv_general_dilated(clips, k, (2, 2), ((3, 3), (3, 3)),
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
            y, _ = bn.apply({"params": {"scale": s, "bias": b},
                             "batch_stats": bn_vars["batch_stats"]}, y, mutable=["batch_stats"])
            y = jax.nn.relu(y)
            return jax.vjp(pool, y)[1](jnp.ones((batch, out, out, 8), jnp.float32))[0]
        with platform.target("cpu"):
            return jax.jit(fn)(kernel, scale, bias)

    routed = np.asarray(pooled_input_grad(ours))
    np.testing.assert_array_equal(routed.sum(axis=(0, 1, 2)), np.full(8, batch * out * out))
