"""Layers shared by the backbones: PyTorch-compatible initialisers, BatchNorm,
ResNet BasicBlocks (2-D and 3-D), the pre-norm transformer layer with a packed
`to_qkv` projection, a PyTorch-style LSTM cell and DropPath.

Everything here mirrors the PyTorch modules the original repositories use, so
that converted weights give the same numbers (spec: backbones.md section 4):

* Convolutions pad symmetrically, `padding=((p, p), ...)` per spatial axis, as
  PyTorch does (`'SAME'` pads asymmetrically for strided convolutions).
* BatchNorm: PyTorch momentum 0.1 is Flax `momentum=0.9`, eps 1e-5, two-pass
  variance (PyTorch subtracts the mean before squaring), and the running
  variance updated with the unbiased batch variance (`batch_norm.py`).
* LayerNorm eps 1e-5 (PyTorch default; the Flax default is 1e-6).
* Packed attention projection `to_qkv`: one bias-free Dense with kernel
  `[D, 3*h*d]`. Output columns `[0:hd]` are q, `[hd:2hd]` k, `[2hd:3hd]` v, each
  head-major (`(h d)`), exactly the row order of PyTorch's `to_qkv.weight
  [3*h*d, D]`, so the converter only transposes.

Parameters are always float32 (`param_dtype`); `dtype` sets the activation dtype.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from audfer_jax.models import batch_norm as batch_norm_lib

from audfer_jax.models import conv as conv_lib
from audfer_jax.models import platform

Array = jax.Array
Dtype = Any
Initializer = Callable[..., Array]

# PyTorch's default Linear/Conv weight init, kaiming_uniform(a=sqrt(5)), is
# U(-1/sqrt(fan_in), 1/sqrt(fan_in)); variance_scaling(1/3, fan_in, uniform)
# draws U(-sqrt(3 * (1/3) / fan_in), ...) which is the same interval.
torch_default_kernel_init: Initializer = nn.initializers.variance_scaling(
    1.0 / 3.0, "fan_in", "uniform")

# torchvision ResNet / Former-DFER S-Former: kaiming_normal_(mode='fan_out',
# nonlinearity='relu') = N(0, 2 / fan_out), untruncated.
# (In this JAX, "normal" is untruncated; "truncated_normal" is the cut one.)
kaiming_normal_fan_out: Initializer = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def torch_uniform_init(fan_in: int) -> Initializer:
    """PyTorch's default bias init (and LSTM init): U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    Args:
        fan_in: the fan-in that PyTorch computes for the owning layer (input
            features of a Linear, `in_channels * prod(kernel)` of a Conv, the
            hidden size of an LSTM).

    Returns:
        An initializer `(key, shape, dtype) -> Array`.
    """
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0

    def init(key: Array, shape: Sequence[int], dtype: Dtype = jnp.float32) -> Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def torch_dense(features: int,
                fan_in: int,
                *,
                use_bias: bool = True,
                dtype: Dtype = jnp.float32,
                name: str | None = None) -> nn.Dense:
    """A Dense with PyTorch's default `nn.Linear` initialisation.

    Args:
        features: output width.
        fan_in: input width (PyTorch computes the bias bound from it).
        use_bias: whether the layer has a bias.
        dtype: activation dtype; parameters stay float32.
        name: module name (the parameter path).

    Returns:
        An unbound `nn.Dense`; its kernel is `[fan_in, features]` (PyTorch
        `weight.T`).
    """
    return nn.Dense(features,
                    use_bias=use_bias,
                    dtype=dtype,
                    param_dtype=jnp.float32,
                    kernel_init=torch_default_kernel_init,
                    bias_init=torch_uniform_init(fan_in),
                    name=name)


def batch_norm(train: bool, dtype: Dtype, name: str) -> nn.Module:
    """PyTorch-equivalent BatchNorm over the last (channel) axis.

    Momentum 0.1 in PyTorch's convention (Flax 0.9), eps 1e-5, affine, running
    statistics in the `batch_stats` collection, the running variance updated
    with the unbiased batch variance as PyTorch does (`batch_norm.TorchBatchNorm`);
    scale 1, bias 0 at init (the PyTorch default and torchvision's explicit init).
    """
    return batch_norm_lib.TorchBatchNorm(use_running_average=not train,
                                         momentum=0.9,
                                         epsilon=1e-5,
                                         dtype=dtype,
                                         param_dtype=jnp.float32,
                                         name=name)


def layer_norm(dtype: Dtype, name: str, epsilon: float = 1e-5) -> "LayerNorm":
    """PyTorch-equivalent LayerNorm (eps 1e-5 default, two-pass variance; `LayerNorm`)."""
    return LayerNorm(epsilon=epsilon, dtype=dtype, name=name)


class LayerNorm(nn.Module):
    """LayerNorm over the last axis whose backward pass keeps only its input.

    `y = (x - mean) * (rsqrt(var + eps) * scale) + bias` with the mean and the
    two-pass variance (PyTorch subtracts the mean first) over the last axis,
    all in float32 whatever `x`'s dtype, then cast to `dtype`: the values of
    `nn.LayerNorm(use_fast_variance=False)`. Parameters `scale` (ones) and
    `bias` (zeros), `[C]` float32, the paths of `nn.LayerNorm`.

    The difference is what the backward pass keeps (`layer_norm_fn`): the
    input in its own dtype and the float32 statistics `[..., 1]`, from which
    it recomputes the normalised values. Differentiating `nn.LayerNorm`
    keeps several float32 `[..., C]` intermediates (`x - mean`, the
    normalised values): in a bfloat16 model they were a third of MAE-DFER's
    saved activations (263 of 745 MiB per clip), which is why bfloat16 saved
    so little memory.

    Attributes:
        epsilon: added to the variance (PyTorch 1e-5; MAE-DFER 1e-6).
        dtype: output dtype.
    """
    epsilon: float = 1e-5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """`x [..., C]` -> `[..., C]` in `dtype`."""
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        return layer_norm_fn(x, scale, bias, float(self.epsilon), jnp.dtype(self.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def layer_norm_fn(x: Array, scale: Array, bias: Array, epsilon: float, dtype: Any) -> Array:
    """`LayerNorm`'s function: `x [..., C]`, `scale`, `bias` `[C]` float32 -> `[..., C]` `dtype`.

    Its gradient (written out, the standard LayerNorm backward in float32)
    keeps `x` and the float32 mean and `1/std` `[..., 1]` only.
    """
    return _layer_norm_fwd(x, scale, bias, epsilon, dtype)[0]


def _layer_norm_stats(x: Array, epsilon: float) -> tuple[Array, Array, Array]:
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    return x32, mean, jax.lax.rsqrt(var + epsilon)


def _layer_norm_fwd(x, scale, bias, epsilon, dtype):
    x32, mean, rstd = _layer_norm_stats(x, epsilon)
    y = (x32 - mean) * (rstd * scale) + bias
    return y.astype(dtype), (x, mean, rstd, scale)


def _layer_norm_bwd(epsilon, dtype, res, g):
    del epsilon, dtype
    x, mean, rstd, scale = res
    xhat = (x.astype(jnp.float32) - mean) * rstd
    g32 = g.astype(jnp.float32)
    lead = tuple(range(g.ndim - 1))
    gx = g32 * scale
    # d/dx of (x - mean) * rstd applied to gx: rstd * (gx - mean(gx) - xhat * mean(gx * xhat)).
    dx = rstd * (gx - jnp.mean(gx, axis=-1, keepdims=True)
                 - xhat * jnp.mean(gx * xhat, axis=-1, keepdims=True))
    return dx.astype(x.dtype), jnp.sum(g32 * xhat, axis=lead), jnp.sum(g32, axis=lead)


layer_norm_fn.defvjp(_layer_norm_fwd, _layer_norm_bwd)


def to_float_clips(clips: Array, dtype: Dtype) -> Array:
    """Scales clips to [0, 1] in `dtype`.

    Args:
        clips: `[..., 3]` uint8 (divided by 255, as Former-DFER and M3DFEL's
            `ToTensor` do) or float already in [0, 1] (kept as is).
        dtype: output dtype.

    Returns:
        `clips` as `dtype` in [0, 1].
    """
    if clips.dtype == jnp.uint8:
        return clips.astype(dtype) / jnp.asarray(255.0, dtype)
    if not jnp.issubdtype(clips.dtype, jnp.floating):
        raise ValueError(f"clips must be uint8 or float in [0, 1], got dtype {clips.dtype}")
    return clips.astype(dtype)


def check_clips(clips: Array, num_frames: int, image_size: int, model: str) -> None:
    """Raises ValueError unless `clips` is `[B, num_frames, image_size, image_size, 3]`.

    The original models hard-code their frame count and resolution (e.g.
    Former-DFER's `view(-1, 3, 112, 112)` and `view(-1, 16, 512)`), so any other
    shape is a caller error, not something to adapt to silently.
    """
    expected = (num_frames, image_size, image_size, 3)
    if clips.ndim != 5 or tuple(clips.shape[1:]) != expected:
        raise ValueError(f"{model}: clips must have shape [B, {num_frames}, {image_size}, "
                         f"{image_size}, 3] (B, T, H, W, RGB), got {tuple(clips.shape)}")


# `config.remat_policy` values (docs/usage.md, "Memory"): what the backward pass
# keeps of a block's forward pass. `full` keeps only the block's inputs and
# recomputes everything (about one more forward pass, the least memory);
# the `jax.checkpoint_policies` names keep matrix-product outputs and
# recompute the rest (norms, GELU, softmax: cheap elementwise work) --
# `dots_with_no_batch_dims_saveable` keeps the Dense layers' outputs but not
# attention's batched products, `dots_saveable` keeps both.
REMAT_POLICIES = ("none", "full", "dots_with_no_batch_dims_saveable", "dots_saveable")


def remat_policy_name(value: Any) -> str:
    """A `remat_policy` value as one of `REMAT_POLICIES`.

    Booleans are the old `remat` switch: True -> `full`, False -> `none`
    (run configs written before `remat_policy` existed).

    Raises:
        ValueError: not a known policy (names the known ones).
    """
    if isinstance(value, bool):
        return "full" if value else "none"
    name = str(value)
    if name not in REMAT_POLICIES:
        raise ValueError(f"remat_policy must be one of {', '.join(REMAT_POLICIES)}; got "
                         f"{value!r}")
    return name


def remat_module(cls: type[nn.Module], policy: Any, *, static_argnums: tuple[int, ...] = (2,),
                 prevent_cse: bool = True) -> type[nn.Module]:
    """`cls` wrapped in `nn.remat` with the named policy (`REMAT_POLICIES`), or `cls` for `none`.

    For modules called as `module(x, train)`: `train` (argument 2, counting
    self) is static by default. Rematerialised modules keep their parameter
    paths, so checkpoints load either way; values and gradients are the same,
    the backward pass recomputes what the policy does not save.

    Args:
        cls: the module class.
        policy: a `REMAT_POLICIES` name, or a bool (the old switch).
        static_argnums: arguments of `__call__` (self = 0) that are static.
        prevent_cse: keep XLA from merging the recomputation with the forward
            pass; False inside `nn.scan`, which already prevents it (jax.checkpoint docs).

    Raises:
        ValueError: an unknown policy name.
    """
    name = remat_policy_name(policy)
    if name == "none":
        return cls
    saveable = None if name == "full" else getattr(jax.checkpoint_policies, name)
    return nn.remat(cls, static_argnums=static_argnums, prevent_cse=prevent_cse,
                    policy=saveable)


class BasicBlock(nn.Module):
    """ResNet BasicBlock, 2-D (torchvision resnet18) or 3-D (torchvision r3d_18).

    conv(k, stride, pad 1, no bias) -> BN -> ReLU -> conv(k, pad 1, no bias) -> BN,
    plus identity or downsample (1x..x1 conv with stride, no bias -> BN) when the
    stride or width changes, then ReLU.

    Parameter paths (PyTorch keys; 2-D = Former-DFER `s_former.layerK.J.*`,
    3-D = torchvision `layerK.J.*` / M3DFEL `features.K.J.*`):
        conv1/kernel  <- conv1.weight         | conv1.0.weight
        bn1/{scale,bias}, batch_stats bn1/{mean,var}
                       <- bn1.{weight,bias,running_mean,running_var} | conv1.1.*
        conv2/kernel  <- conv2.weight         | conv2.0.weight
        bn2/*         <- bn2.*                | conv2.1.*
        downsample_conv/kernel <- downsample.0.weight
        downsample_bn/*        <- downsample.1.*

    Attributes:
        features: output channels.
        strides: stride per spatial axis, e.g. (2, 2) or (2, 2, 2) (t, h, w).
        dtype: activation dtype.

    Input `[N, *spatial, C_in]`, output `[N, *spatial // strides, features]`.
    """
    features: int
    strides: Sequence[int]
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        ndim = len(self.strides)
        k3 = (3,) * ndim
        pad1 = ((1, 1),) * ndim
        # On XLA:CPU (conv.py): 3-D convolutions run frame by frame as 2-D
        # ones where that is faster, strided ones otherwise take the
        # polyphase backward pass (XLA:CPU's dilated gradient convolutions
        # are 15-60x slower); 2-D ones compute their gradients in batch
        # chunks. Elsewhere all of these are lax's convolution.
        conv_fn = (conv_lib.frames_conv_general_dilated if ndim == 3
                   else conv_lib.cpu_conv_general_dilated)
        conv = lambda feats, k, s, p, name: nn.Conv(  # noqa: E731
            feats,
            k,
            strides=tuple(s),
            padding=p,
            use_bias=False,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=kaiming_normal_fan_out,
            conv_general_dilated=conv_fn,
            name=name)
        y = conv(self.features, k3, self.strides, pad1, "conv1")(x)
        y = nn.relu(batch_norm(train, self.dtype, "bn1")(y))
        y = conv(self.features, k3, (1,) * ndim, pad1, "conv2")(y)
        y = batch_norm(train, self.dtype, "bn2")(y)
        if any(s != 1 for s in self.strides) or x.shape[-1] != self.features:
            x = conv(self.features, (1,) * ndim, self.strides, ((0, 0),) * ndim,
                     "downsample_conv")(x)
            x = batch_norm(train, self.dtype, "downsample_bn")(x)
        return nn.relu(y + x)


def gelu(x: Array, approximate: bool) -> Array:
    """GELU, exact (`x/2 (1 + erf(x/sqrt 2))`) or the tanh form; same values everywhere.

    In programs compiled for TPU the exact form is kept out of the matrix
    products' fusions by optimisation barriers on its input and output (and,
    through their autodiff rules, in the backward pass): XLA:TPU fuses the
    float32 `erf` polynomial and its derivative into the neighbouring
    convolution fusions, and generating code for those took most of the
    compile time of MAE-DFER's train step (its MLP's forward and backward
    alone: 56 s of CPU with the fusions, 12 s without, v5e, 2-core host).
    The cost is one more pass over the hidden activation, which the backward
    pass keeps anyway.

    Args:
        x: any shape and float dtype.
        approximate: the tanh form (Former-DFER) instead of the erf one.

    Returns:
        `gelu(x)`, same shape and dtype.
    """
    if approximate or platform.current() != "tpu":
        return nn.gelu(x, approximate=approximate)
    x = jax.lax.optimization_barrier(x)
    return jax.lax.optimization_barrier(nn.gelu(x, approximate=False))


def dot_product_attention(q: Array, k: Array, v: Array, scale: float,
                          implementation: str | None = None) -> Array:
    """`softmax(q k^T * scale) v` per head, logits and softmax in float32.

    Two equivalent forms (equal up to float32 rounding):
    * "fused": `jax.nn.dot_product_attention`, so that on GPU JAX can pick
      cuDNN's fused attention (bfloat16/float16) and XLA:GPU/TPU its fused
      form; it computes the logits with `preferred_element_type=float32`;
    * "einsum": the explicit einsum-softmax-einsum, whose backward pass is
      15-100 % faster on XLA:CPU than the fused form's (docs/performance.md);
    * "cpu": the fused form's forward values with the einsum form's gradient
      (XLA:CPU runs the fused forward faster, the einsum backward faster).
    `None` picks "cpu" in a program traced for CPU devices and "fused" for
    GPU and TPU devices (`platform.is_cpu()`).

    Args:
        q: `[..., N, h, d]`.
        k, v: `[..., M, h, d]`, the same leading axes as q.
        scale: logit scale (`d ** -0.5` in all three backbones).
        implementation: "fused", "einsum", "cpu" or None (by target platform).

    Returns:
        `[..., N, h, d]` in v's dtype.

    Raises:
        ValueError: unknown implementation.
    """
    if implementation is None:
        implementation = "cpu" if platform.is_cpu() else "fused"
    if implementation in ("einsum", "fused", "cpu"):
        platform.note(f"{implementation}_attention")
    if implementation == "einsum":
        return _einsum_attention(q, k, v, scale)
    if implementation == "fused":
        if platform.current() == "tpu":
            # XLA:TPU's attention keeps the float32 softmax (its exp and its
            # quotient, [..., h, N, M] each) for the backward pass; recomputing
            # it from q, k, v instead, as flash attention does, costs the
            # logits' product again (about 1 % of MAE-DFER's train step) and
            # saves the largest float32 activations of the blocks.
            return jax.checkpoint(_fused_attention, static_argnums=(3,))(q, k, v, scale)
        return _fused_attention(q, k, v, scale)
    if implementation == "cpu":
        return _cpu_attention(q, k, v, scale)
    raise ValueError(f"attention implementation must be 'fused', 'einsum', 'cpu' or None, "
                     f"got {implementation!r}")


def _einsum_attention(q: Array, k: Array, v: Array, scale: float) -> Array:
    logits = jnp.einsum("...nhd,...mhd->...hnm", q, k,
                        preferred_element_type=jnp.float32) * jnp.float32(scale)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    return jnp.einsum("...hnm,...mhd->...nhd", weights, v).astype(v.dtype)


def _fused_attention(q: Array, k: Array, v: Array, scale: float) -> Array:
    lead = q.shape[:-3]
    flat = lambda t: t.reshape((-1,) + t.shape[-3:])  # noqa: E731  (one batch axis)
    out = jax.nn.dot_product_attention(flat(q), flat(k), flat(v), scale=scale)
    return out.reshape(lead + out.shape[1:]).astype(v.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _cpu_attention(q, k, v, scale):
    return _fused_attention(q, k, v, scale)


def _cpu_attention_fwd(q, k, v, scale):
    return _fused_attention(q, k, v, scale), (q, k, v)


def _cpu_attention_bwd(scale, res, g):
    # The gradient of the einsum form (recomputing its softmax): on XLA:CPU
    # this is faster than the fused form's own backward pass.
    _, vjp = jax.vjp(lambda a, b, c: _einsum_attention(a, b, c, scale), *res)
    return vjp(g)


_cpu_attention.defvjp(_cpu_attention_fwd, _cpu_attention_bwd)


def multi_head_attention(q: Array, k: Array, v: Array, heads: int) -> Array:
    """Scaled dot-product attention over head-major packed features.

    Computes `softmax(q_h k_h^T * d^-0.5) v_h` per head h and concatenates the
    heads head-major, as the `einops` code of Former-DFER (`b n (h d) -> b h n d`)
    and M3DFEL do. Logits and softmax are computed in float32 (see
    `dot_product_attention`).

    Args:
        q: `[..., N, h*d]`.
        k: `[..., M, h*d]`.
        v: `[..., M, h*d]`.
        heads: h; the last axis splits as `(h, d)`, head-major.

    Returns:
        `[..., N, h*d]` in q's dtype.
    """
    inner = q.shape[-1]
    if inner % heads:
        raise ValueError(f"attention width {inner} is not divisible by {heads} heads")
    d = inner // heads
    split = lambda t: t.reshape(t.shape[:-1] + (heads, d))  # noqa: E731
    out = dot_product_attention(split(q), split(k), split(v), d**-0.5)
    return out.reshape(out.shape[:-2] + (inner,)).astype(q.dtype)


def split_qkv(qkv: Array) -> tuple[Array, Array, Array]:
    """Splits a packed `to_qkv` output `[..., 3*h*d]` into q, k, v `[..., h*d]`.

    Equal thirds in the order q, k, v, as PyTorch's `.chunk(3, dim=-1)`.
    """
    return tuple(jnp.split(qkv, 3, axis=-1))  # type: ignore[return-value]


class Attention(nn.Module):
    """Multi-head self-attention with a packed bias-free `to_qkv` (Former-DFER).

    Parameter paths (PyTorch keys of `Attention` in Former-DFER
    models/S_Former.py and T_Former.py):
        to_qkv/kernel `[D, 3*h*d]` <- to_qkv.weight `[3*h*d, D]` transposed
        to_out/kernel `[h*d, D]`, to_out/bias <- to_out.0.weight (transposed), to_out.0.bias

    Attributes:
        heads: number of heads h.
        dim_head: per-head width d.
        dtype: activation dtype.

    Input and output `[..., N, D]`.
    """
    heads: int
    dim_head: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        dim = x.shape[-1]
        inner = self.heads * self.dim_head
        qkv = torch_dense(3 * inner, dim, use_bias=False, dtype=self.dtype, name="to_qkv")(x)
        out = multi_head_attention(*split_qkv(qkv), heads=self.heads)
        return torch_dense(dim, inner, dtype=self.dtype, name="to_out")(out)


class FeedForward(nn.Module):
    """Linear(D->mlp) -> GELU -> Linear(mlp->D); dropouts of the original are 0.

    Parameter paths: net_0/{kernel,bias} <- net.0.*, net_3/{kernel,bias} <- net.3.*
    (PyTorch `nn.Sequential(Linear, GELU, Dropout, Linear, Dropout)`).

    Attributes:
        mlp_dim: hidden width.
        approximate_gelu: True for the tanh GELU of Former-DFER
            (0.5x(1+tanh(sqrt(2/pi)(x+0.044715x^3))), its own `GELU` class),
            False for the exact erf GELU.
        dtype: activation dtype.
    """
    mlp_dim: int
    approximate_gelu: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        dim = x.shape[-1]
        y = torch_dense(self.mlp_dim, dim, dtype=self.dtype, name="net_0")(x)
        y = gelu(y, self.approximate_gelu)
        return torch_dense(dim, self.mlp_dim, dtype=self.dtype, name="net_3")(y)


class TransformerLayer(nn.Module):
    """Pre-norm transformer layer: `x += Attn(LN(x)); x += FF(LN(x))`.

    Former-DFER's `Residual(PreNorm(dim, Attention))`, `Residual(PreNorm(dim,
    FeedForward))` (models/S_Former.py, T_Former.py); LayerNorm eps 1e-5.

    Parameter paths (PyTorch `...layers.i.*`):
        attn_norm/{scale,bias} <- layers.i.0.fn.norm.{weight,bias}
        attn/...               <- layers.i.0.fn.fn.* (see `Attention`)
        ff_norm/{scale,bias}   <- layers.i.1.fn.norm.{weight,bias}
        ff/...                 <- layers.i.1.fn.fn.* (see `FeedForward`)

    Attributes:
        heads, dim_head, mlp_dim: attention and MLP sizes.
        approximate_gelu: see `FeedForward`.
        drop_path: stochastic-depth rate on both residual branches (0 here: the
            originals have none; kept for reuse).
        dtype: activation dtype.

    Input and output `[..., N, D]`.
    """
    heads: int
    dim_head: int
    mlp_dim: int
    approximate_gelu: bool = True
    drop_path: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        dp = DropPath(self.drop_path)
        y = Attention(self.heads, self.dim_head, self.dtype,
                      name="attn")(layer_norm(self.dtype, "attn_norm")(x))
        x = x + dp(y, deterministic=not train)
        y = FeedForward(self.mlp_dim, self.approximate_gelu, self.dtype,
                        name="ff")(layer_norm(self.dtype, "ff_norm")(x))
        return x + dp(y, deterministic=not train)


class Transformer(nn.Module):
    """A stack of `TransformerLayer`s named `layers_0 ... layers_{depth-1}`, no final norm.

    PyTorch `Transformer.layers.i` -> Flax `layers_i`. `remat_policy` (see
    `REMAT_POLICIES`) says what each layer's backward pass recomputes
    (`remat_module`).
    """
    depth: int
    heads: int
    dim_head: int
    mlp_dim: int
    approximate_gelu: bool = True
    dtype: Dtype = jnp.float32
    remat_policy: str = "none"

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        layer_cls = remat_module(TransformerLayer, self.remat_policy)
        for i in range(self.depth):
            x = layer_cls(self.heads,
                          self.dim_head,
                          self.mlp_dim,
                          self.approximate_gelu,
                          dtype=self.dtype,
                          name=f"layers_{i}")(x, train)
        return x


class DropPath(nn.Module):
    """Stochastic depth, timm style: drops whole rows of axis 0.

    Each row along axis 0 is kept with probability `1 - rate` and scaled by
    `1 / (1 - rate)` when kept (timm `drop_path`, `scale_by_keep=True`).
    Draws from the `dropout` rng. Identity when `deterministic` or `rate == 0`.

    Attributes:
        rate: drop probability in [0, 1).
    """
    rate: float = 0.0

    @nn.compact
    def __call__(self, x: Array, deterministic: bool) -> Array:
        if deterministic or self.rate == 0.0:
            return x
        if not 0.0 <= self.rate < 1.0:
            raise ValueError(f"DropPath rate must be in [0, 1), got {self.rate}")
        keep = 1.0 - self.rate
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = jax.random.bernoulli(self.make_rng("dropout"), keep, shape)
        return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros_like(x))


class TorchLSTMCell(nn.RNNCellBase):
    """An LSTM cell with PyTorch's parameters: a bias on both the input and the
    recurrent projections (`bias_ih` and `bias_hh`).

    Equations (PyTorch `nn.LSTM`, gate order i, f, g, o):
        i = sigmoid(x W_ii + b_ii + h W_hi + b_hi), f = sigmoid(...), g = tanh(...),
        o = sigmoid(...); c' = f*c + i*g; h' = o*tanh(c').
    Flax's `nn.LSTMCell` has the same equations but one bias per gate; keeping
    both makes the parameter count equal PyTorch's (M3DFEL `lstm` 10,502,144,
    backbones.md) and the conversion a plain split without summing biases.

    Parameter paths, with H the hidden size and PyTorch rows split into four
    blocks of H in the order i, f, g, o (block 0 -> `*i`, 1 -> `*f`, 2 -> `*g`,
    3 -> `*o`):
        ii, if, ig, io: kernel `[in, H]` <- weight_ih block transposed,
                        bias `[H]` <- bias_ih block
        hi, hf, hg, ho: kernel `[H, H]` <- weight_hh block transposed,
                        bias `[H]` <- bias_hh block
    Init: every weight and bias U(-1/sqrt(H), 1/sqrt(H)) (PyTorch default).
    Carry `(c, h)`, each `[..., H]`, zeros by default.

    Attributes:
        features: hidden size H.
        dtype: activation dtype.
        param_dtype: parameter dtype (float32).
    """
    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, carry: tuple[Array, Array], inputs: Array):
        c, h = carry
        init = torch_uniform_init(self.features)
        dense = lambda name: nn.Dense(  # noqa: E731
            self.features,
            use_bias=True,
            kernel_init=init,
            bias_init=init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name)
        gate = lambda g: dense("i" + g)(inputs) + dense("h" + g)(h)  # noqa: E731
        i = nn.sigmoid(gate("i"))
        f = nn.sigmoid(gate("f"))
        g = jnp.tanh(gate("g"))
        o = nn.sigmoid(gate("o"))
        new_c = f * c + i * g
        new_h = o * jnp.tanh(new_c)
        return (new_c, new_h), new_h

    @nn.nowrap
    def initialize_carry(self, rng: Array, input_shape: tuple[int, ...]):
        """Zero `(c, h)` carry of shape `input_shape[:-1] + (features,)`."""
        del rng
        shape = tuple(input_shape[:-1]) + (self.features,)
        return (jnp.zeros(shape, self.dtype), jnp.zeros(shape, self.dtype))

    @property
    def num_feature_axes(self) -> int:
        return 1


class BiLSTM(nn.Module):
    """Multi-layer bidirectional LSTM, `batch_first`, zero initial state, no
    inter-layer dropout (PyTorch `nn.LSTM(bidirectional=True, batch_first=True)`).

    Each layer is `nn.Bidirectional(nn.RNN(cell), nn.RNN(cell))`, whose merge
    concatenates the forward then the backward output, as PyTorch does.

    Parameter paths (layer k):
        l{k}/forward_rnn/cell/*  <- weight_ih_l{k}, weight_hh_l{k}, bias_ih_l{k}, bias_hh_l{k}
        l{k}/backward_rnn/cell/* <- the same with suffix `_reverse`
    (see `TorchLSTMCell` for the per-gate split).

    Attributes:
        hidden: hidden size H per direction.
        num_layers: stacked layers.
        dtype: activation dtype.

    Input `[B, L, F]`, output `[B, L, 2H]`.
    """
    hidden: int
    num_layers: int = 2
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        # parent=None leaves the cells and RNNs unbound here, so that they nest
        # under the Bidirectional as `forward_rnn/cell` and `backward_rnn/cell`.
        rnn = lambda: nn.RNN(
            TorchLSTMCell(self.hidden, dtype=self.dtype, parent=None),  # noqa: E731
            parent=None)
        for k in range(self.num_layers):
            x = nn.Bidirectional(rnn(), rnn(), name=f"l{k}")(x)
        return x
