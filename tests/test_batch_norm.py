"""`audfer_jax.models.batch_norm.TorchBatchNorm` against NumPy re-computations."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from audfer_jax.models.batch_norm import TorchBatchNorm


def _variables(rng, c):
    return {"params": {"scale": jnp.asarray(1 + 0.1 * rng.standard_normal(c), jnp.float32),
                       "bias": jnp.asarray(0.1 * rng.standard_normal(c), jnp.float32)},
            "batch_stats": {"mean": jnp.asarray(0.1 * rng.standard_normal(c), jnp.float32),
                            "var": jnp.asarray(1 + rng.random(c), jnp.float32)}}


def test_training_update_uses_unbiased_variance_like_pytorch():
    rng = np.random.default_rng(0)
    x = (3 * rng.standard_normal((2, 3, 5, 4)) + 1).astype(np.float32)   # n = 30 per channel
    v = _variables(rng, 4)
    y, new = TorchBatchNorm(use_running_average=False).apply(v, jnp.asarray(x),
                                                           mutable=["batch_stats"])
    x64 = x.reshape(-1, 4).astype(np.float64)
    mean, var = x64.mean(0), x64.var(0)            # biased, for normalising
    expect_y = ((x64 - mean) / np.sqrt(var + 1e-5) * np.asarray(v["params"]["scale"])
                + np.asarray(v["params"]["bias"]))
    np.testing.assert_allclose(np.asarray(y).reshape(-1, 4), expect_y, rtol=1e-5, atol=1e-5)
    stats = v["batch_stats"]
    # torch.nn.BatchNorm2d(momentum=0.1): running_var uses var * n / (n - 1).
    np.testing.assert_allclose(new["batch_stats"]["mean"],
                               0.9 * np.asarray(stats["mean"]) + 0.1 * mean, rtol=1e-6)
    np.testing.assert_allclose(new["batch_stats"]["var"],
                               0.9 * np.asarray(stats["var"]) + 0.1 * var * 30 / 29, rtol=1e-6)


def test_forward_equals_flax_batch_norm_and_eval_uses_running_stats():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((4, 6, 3)), jnp.float32)
    v = _variables(rng, 3)
    flax_bn = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5,
                           use_fast_variance=False)
    ours, _ = TorchBatchNorm(use_running_average=False).apply(v, x, mutable=["batch_stats"])
    ref, _ = flax_bn.apply(v, x, mutable=["batch_stats"])
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(ref))
    y = TorchBatchNorm(use_running_average=True).apply(v, x)
    s = v["batch_stats"]
    expect = ((np.asarray(x) - np.asarray(s["mean"])) / np.sqrt(np.asarray(s["var"]) + 1e-5)
              * np.asarray(v["params"]["scale"]) + np.asarray(v["params"]["bias"]))
    np.testing.assert_allclose(np.asarray(y), expect, rtol=1e-5, atol=1e-6)
