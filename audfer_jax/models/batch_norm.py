"""BatchNorm with PyTorch's running-statistics update.

`flax.linen.BatchNorm` normalises a training batch like `torch.nn.BatchNorm*d`
(biased batch variance, two-pass with `use_fast_variance=False`) but updates
its running variance with that biased variance, while PyTorch updates it with
the unbiased one, `var * n / (n - 1)` over the n values per channel
(`torch.nn.functional.batch_norm`, documented in `torch.nn.BatchNorm2d`: "the
running variance is calculated via the unbiased estimator"). The difference
is a factor 1 + 1/(n - 1) on the new term: 1/31 of each update for M3DFEL's
R3D-18 layer 4 with 2 clips (4 instances each, 1 x 2 x 2 maps at a 32-pixel
input, n = 32), and still 1/391 at the real 112-pixel size; it changes the evaluation outputs of
Former-DFER and M3DFEL after training, so the training-parity test
(tests/test_recipe_parity.py, issue 21) caught it.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

Array = jax.Array


class TorchBatchNorm(nn.Module):
    """BatchNorm over the last axis with PyTorch's semantics.

    Attributes:
        use_running_average: eval mode (normalise with the running statistics).
        momentum: Flax convention, the weight of the old running value
            (PyTorch momentum 0.1 is 0.9 here).
        epsilon: added to the variance (PyTorch 1e-5).
        dtype: output dtype (statistics and normalisation are float32).
        param_dtype: dtype of `scale` and `bias` (float32).

    Variables: `params` `scale [C]` (init 1), `bias [C]` (init 0);
    `batch_stats` `mean [C]` (0), `var [C]` (1): the paths of
    `flax.linen.BatchNorm`, so converted checkpoints load unchanged.

    `__call__(x)`: `x [..., C]`; in training mode (`use_running_average`
    False, `batch_stats` mutable) normalises with the batch mean and biased
    variance over all axes but the last, and updates
    `mean <- m mean + (1 - m) batch_mean`,
    `var <- m var + (1 - m) batch_var * n / (n - 1)` (n values per channel;
    n = 1 keeps the biased value, as PyTorch refuses such a batch anyway).
    Returns `[..., C]` in `dtype`.
    """
    use_running_average: bool = False
    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        features = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean",
                                lambda s: jnp.zeros(s, jnp.float32), (features,))
        ra_var = self.variable("batch_stats", "var",
                               lambda s: jnp.ones(s, jnp.float32), (features,))
        scale = self.param("scale", nn.initializers.ones, (features,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (features,), self.param_dtype)
        if self.use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            axes = tuple(range(x.ndim - 1))
            xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
            mean = jnp.mean(xf, axes)
            # Two passes (mean first), as PyTorch and Flax's use_fast_variance=False.
            var = jnp.mean(jnp.square(xf - mean), axes)
            if not self.is_initializing():
                n = x.size // features
                unbiased = var * (n / (n - 1)) if n > 1 else var
                m = self.momentum
                ra_mean.value = m * ra_mean.value + (1.0 - m) * mean
                ra_var.value = m * ra_var.value + (1.0 - m) * unbiased
        # The normalisation of flax.linen.BatchNorm (same operation order, so
        # forward numbers are unchanged): (x - mean) * (rsqrt(var + eps) * scale) + bias.
        y = x - mean
        y = y * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias
        return jnp.asarray(y, self.dtype if self.dtype is not None else x.dtype)
