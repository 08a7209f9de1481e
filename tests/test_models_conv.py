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
