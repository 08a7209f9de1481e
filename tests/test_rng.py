"""audfer_jax.rng: the dropout stream's generator."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from audfer_jax import rng
from audfer_jax.models import mae_dfer


@pytest.mark.parametrize("impl", ["rbg", "unsafe_rbg"])
def test_dropout_key_impl_and_determinism(impl):
    base = jax.random.PRNGKey(3)
    k1, k2 = rng.dropout_key(base, impl), rng.dropout_key(base, impl)
    assert jax.random.key_impl(k1) == jax.random.key_impl(jax.random.key(0, impl=impl))
    np.testing.assert_array_equal(jax.random.key_data(k1), jax.random.key_data(k2))
    other = rng.dropout_key(jax.random.PRNGKey(4), impl)
    assert not np.array_equal(jax.random.key_data(k1), jax.random.key_data(other))
    # Bernoulli draws with the new key keep their rate (10,000 draws, p = 0.9:
    # std of the mean 0.003).
    draws = jax.random.bernoulli(k1, 0.9, (10_000,))
    assert abs(float(jnp.mean(draws)) - 0.9) < 0.015


def test_threefry_is_identity_and_unknown_raises():
    key = jax.random.PRNGKey(0)
    assert rng.dropout_key(key, "threefry") is key
    with pytest.raises(ValueError, match="rng_impl"):
        rng.dropout_key(key, "philox")


def test_drop_path_runs_with_an_rbg_key():
    model = mae_dfer.mae_dfer_tiny(drop_path_rate=0.5)
    clips = jnp.zeros((2, 8, 32, 32, 3), jnp.uint8)
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), clips, train=False))
    params = jax.tree.map(lambda s: jnp.full(s.shape, 0.01, s.dtype), variables)
    key = rng.dropout_key(jax.random.PRNGKey(1), "rbg")
    out = model.apply(params, clips, train=True, rngs={"dropout": key})
    assert out.logits.shape == (2, 7) and np.all(np.isfinite(np.asarray(out.logits)))
