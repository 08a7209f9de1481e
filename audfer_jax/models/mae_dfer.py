"""MAE-DFER backbone (LGI-Former) in Flax linen, with the AU-DFER AU head.

Re-implements `modeling_finetune.py::vit_base_dim512_no_depth_patch16_160` of
sunlicai/MAE-DFER @80b651d (MIT) with the constructor arguments of the DFEW
fine-tuning script (spec: /work/shared/spec/backbones.md section 3; every key
and shape in spec/state_dicts/mae_dfer.json). Written from the spec and the
original code's behaviour; no code is copied.

Forward pass (full size; `B` clips):

1. `clips [B, 16, 160, 160, 3] uint8` (or float in [0, 1]) -> float32
   `/255` (uint8 only), ImageNet mean (0.485, 0.456, 0.406) / std
   (0.229, 0.224, 0.225) (original `kinetics.py` / `run_class_finetuning.py`).
2. `patch_embed/proj`: Conv3d 3->512, kernel = stride = (2, 16, 16), VALID,
   bias -> `[B, 8, 10, 10, 512]` -> `[B, 800, 512]`, token t*100 + h*10 + w
   (PyTorch's flatten of `[C, T, H, W]`).
3. `+` the fixed sinusoid table `[1, 800, 512]` (a constant, never a param).
4. Region partition (einops `b (nt t nh h nw w) c -> b (nt nh nw) (t h w) c`,
   region size (2, 5, 10)): 8 regions of 100 tokens; token (t, h, w) goes to
   region `2*floor(t/2) + floor(h/5)` at position
   `50*(t mod 2) + 10*(h mod 5) + w`. `lg_region_tokens [8, 512]` is prepended
   to its region -> `[B*8, 101, 512]`, row b*8 + r.
5. 16 `LGBlock`s, see `LGBlock`: blocks 0-14 stored stacked (`blocks`, every
   leaf with a leading axis of 15) and run as one `nn.scan`; block 15 is
   `last_block`, which returns only the region tokens (see "Layout" below).
6. Region tokens `[B, 8, 512]` -> mean over the 8 -> `fc_norm` (LayerNorm,
   eps 1e-6) -> feature `[B, 512]` -> `head` (512->C) and `au_head` (512->18).

Parameter count with a 7-class head and without the AU head: 84,878,343
(patch_embed 786,944; lg_region_tokens 4,096; blocks 84,082,688 = 16 x
5,255,168; fc_norm 1,024; head 3,591); the AU head adds 9,234.

Layout. Blocks 0 .. depth-2 are one subtree `blocks` whose leaves carry a
leading layer axis (`blocks/first_attn/q/kernel [15, 512, 512]`: row k is
block k), the last block is `last_block` (its own program, below). That is
what `init` creates, what checkpoints and `convert` hold and what the
optimizer updates (about 70 leaves instead of 560). Checkpoints written before
(the per-block layout `blocks_0` .. `blocks_15`) are converted on load
(`stacked_layout`; `per_block_layout` is the inverse, for comparisons leaf by
leaf with the original's tensors).

PyTorch state_dict key -> Flax path (`params/...`; k = 0..15 and `B(k)` =
`blocks/...[k]` for k < 15, `last_block/...` for k = 15; X in {first, second,
third}). Linear weights `[O, I]` become Dense kernels `[I, O]` (transpose);
LayerNorm `weight` becomes `scale`:

| PyTorch key (fine-tuned; pre-training adds `encoder.`) | Flax path | rule |
|---|---|---|
| `patch_embed.proj.weight [512, 3, 2, 16, 16]` | `patch_embed/proj/kernel [2, 16, 16, 3, 512]` | transpose (2, 3, 4, 1, 0) |
| `patch_embed.proj.bias [512]` | `patch_embed/proj/bias` | as is |
| `lg_region_tokens [8, 512]` | `lg_region_tokens [8, 512]` | as is |
| `blocks.k.X_attn.q.weight [512, 512]` | `B(k)/X_attn/q/kernel` | transpose |
| `blocks.k.X_attn.q_bias [512]` | `B(k)/X_attn/q/bias` | as is |
| `blocks.k.X_attn.kv.weight [1024, 512]` rows 0-511 | `B(k)/X_attn/k/kernel [512, 512]` (no bias) | rows, transpose |
| `blocks.k.X_attn.kv.weight [1024, 512]` rows 512-1023 | `B(k)/X_attn/v/kernel [512, 512]` | rows, transpose |
| `blocks.k.X_attn.v_bias [512]` | `B(k)/X_attn/v/bias` | as is |
| `blocks.k.X_attn.proj.{weight, bias}` | `B(k)/X_attn/proj/{kernel, bias}` | transpose / as is |
| `blocks.k.{first_attn_norm0, second_attn_norm0, third_attn_norm0, third_attn_norm1, norm2}.{weight, bias}` | `B(k)/<same name>/{scale, bias}` | as is |
| `blocks.k.mlp.fc1.{weight [2048, 512], bias}` | `B(k)/mlp/fc1/{kernel [512, 2048], bias}` | transpose / as is |
| `blocks.k.mlp.fc2.{weight [512, 2048], bias}` | `B(k)/mlp/fc2/{kernel [2048, 512], bias}` | transpose / as is |
| `fc_norm.{weight, bias}` | `fc_norm/{scale, bias}` | as is (absent in pre-training: fresh) |
| `head.{weight [C, 512], bias [C]}` | `head/{kernel [512, C], bias}` | transpose (fresh when C differs) |
| (none: AU-DFER's MAE-DFER code is unpublished) | `au_head/{kernel [512, 18], bias}` | fresh |
| `encoder.norm.*`, `decoder.*`, `encoder_to_decoder.weight`, `mask_token` (pre-training only) | - | dropped (unused by fine-tuning) |

The sinusoid `pos_embed` is in no checkpoint and is recomputed, never loaded.

Quirk (backbones.md section 3): with region-token pooling, step 3 of the last
block cannot reach the output, so `last_block/third_attn`,
`third_attn_norm0` and `third_attn_norm1` (1,052,160 parameters at full size)
get exactly zero gradient. In PyTorch that gradient is a zero tensor, not
None, so the original's AdamW still decays their 2-D weights, and so does the
recipe in `audfer_jax.optim` (issue 21's training-parity test checks it);
`frozen_by_design` and `weight_decay_mask` select them for anyone who wants
them untouched instead. The output is the same either way.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import traverse_util

from audfer_jax.models import conv as conv_lib
from audfer_jax.models import layers
from audfer_jax.models import platform
from audfer_jax.models.base import ModelOutput

# ImageNet statistics used by the original MAE-DFER data pipeline
# (timm IMAGENET_DEFAULT_MEAN / IMAGENET_DEFAULT_STD, backbones.md section 3).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# timm `trunc_normal_(std=.02)` truncates at +-2 absolute (= +-100 std), i.e.
# practically an untruncated normal (backbones.md sections 3 and 4).
_TRUNC_STD = 0.02
_TRUNC_ABS = 2.0

Dtype = Any
Array = jax.Array


def timm_trunc_normal(std: float = _TRUNC_STD,
                      bound: float = _TRUNC_ABS,
                      scale: float = 1.0) -> Callable[..., Array]:
    """Initialiser matching timm 0.4.12 `trunc_normal_(t, std=std)` times `scale`.

    timm cuts the normal at the absolute values `[-bound, bound]` (default
    +-2), not at +-2 standard deviations as `jax.nn.initializers.truncated_normal`
    does. `scale` implements the original's `head.weight.data.mul_(init_scale)`.

    Args:
        std: standard deviation of the normal (0.02 in MAE-DFER).
        bound: absolute truncation bound.
        scale: factor applied after sampling.

    Returns:
        `init(key, shape, dtype=float32) -> Array` of that shape.
    """
    def init(key: Array, shape: Sequence[int], dtype: Dtype = jnp.float32) -> Array:
        z = jax.random.truncated_normal(key, -bound / std, bound / std, shape, jnp.float32)
        return (z * (std * scale)).astype(dtype)
    return init


def _torch_conv_bias_init(fan_in: int) -> Callable[..., Array]:
    """PyTorch's default Conv bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / np.sqrt(fan_in)

    def init(key: Array, shape: Sequence[int], dtype: Dtype = jnp.float32) -> Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


# PyTorch's default Conv weight init, kaiming_uniform(a=sqrt(5)), is
# U(-1/sqrt(fan_in), 1/sqrt(fan_in)) = variance scaling 1/3, fan_in, uniform.
_torch_conv_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


@functools.lru_cache(maxsize=8)
def sinusoid_table(n_position: int, dim: int) -> np.ndarray:
    """Fixed sinusoid position table of the original (`get_sinusoid_encoding_table`).

    `angle(p, j) = p / 10000^(2*floor(j/2)/dim)`; sin at even j, cos at odd j;
    computed in float64 and cast to float32 (backbones.md section 3).

    Args:
        n_position: number of tokens (800 at full size).
        dim: embedding width (512).

    Returns:
        `[1, n_position, dim] float32` NumPy array (read-only, cached).
    """
    pos = np.arange(n_position, dtype=np.float64)[:, None]
    j = np.arange(dim)
    denom = np.power(10000.0, 2.0 * (j // 2) / dim)
    angle = pos / denom[None, :]
    table = np.where(j % 2 == 0, np.sin(angle), np.cos(angle)).astype(np.float32)[None]
    table.setflags(write=False)
    return table


def partition_regions(x: Array, grid: Sequence[int], region: Sequence[int]) -> Array:
    """Split tokens into local regions (einops `b (nt t nh h nw w) c -> b (nt nh nw) (t h w) c`).

    Args:
        x: `[B, T*H*W, C]` tokens, index t*H*W + h*W + w.
        grid: token grid `(T, H, W)` (8, 10, 10 at full size).
        region: region size `(t, h, w)` (2, 5, 10); each must divide `grid`.

    Returns:
        `[B, N, t*h*w, C]` with N = (T/t)*(H/h)*(W/w) regions in (nt, nh, nw)
        order and tokens in (t, h, w) order inside a region.
    """
    b, _, c = x.shape
    (gt, gh, gw), (rt, rh, rw) = tuple(grid), tuple(region)
    nt, nh, nw = gt // rt, gh // rh, gw // rw
    x = x.reshape(b, nt, rt, nh, rh, nw, rw, c)
    x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)
    return x.reshape(b, nt * nh * nw, rt * rh * rw, c)


def merge_regions(x: Array, grid: Sequence[int], region: Sequence[int]) -> Array:
    """Inverse of `partition_regions`: `[B, N, t*h*w, C] -> [B, T*H*W, C]`."""
    b, _, _, c = x.shape
    (gt, gh, gw), (rt, rh, rw) = tuple(grid), tuple(region)
    nt, nh, nw = gt // rt, gh // rh, gw // rw
    x = x.reshape(b, nt, nh, nw, rt, rh, rw, c)
    x = x.transpose(0, 1, 4, 2, 5, 3, 6, 7)
    return x.reshape(b, gt * gh * gw, c)


def drop_path_rates(rate: float, depth: int) -> list[float]:
    """Per-block stochastic-depth rates `torch.linspace(0, rate, depth)` (float32).

    Block k gets `rate * k / (depth - 1)` (0.1*k/15 at full size; block 0 none).

    Returns:
        `depth` Python floats, rounded through float32 like the original.
    """
    return [float(v) for v in np.linspace(0.0, rate, depth, dtype=np.float64).astype(np.float32)]


class DropPath(nn.Module):
    """timm-style stochastic depth: zero whole rows of dim 0, scale kept rows.

    Each call draws fresh noise from the `dropout` rng: a row is kept with
    probability `keep = 1 - rate` and kept rows are divided by `keep`
    (timm 0.4.12 `drop_path`). Identity when `deterministic` or `rate == 0`.
    In training the keep mask `[rows] float32` is sown into the
    `intermediates` collection as `keep_mask` (a no-op unless that collection
    is mutable), which lets tests check the noise.

    The rate may also be a traced float32 scalar (`MAEDFER` scans its stacked
    blocks with their per-block rates as a scanned array): then a mask is
    drawn even where the rate is 0 (all rows kept, scale 1: the same values),
    since a traced value cannot decide whether to draw.

    Attributes:
        rate: drop probability in [0, 1): a Python float, or a `[] float32`
            (possibly traced) array.
    """
    rate: float | Array = 0.0

    @nn.compact
    def __call__(self, x: Array, deterministic: bool) -> Array:
        """`x [R, ...]` -> same shape and dtype."""
        if deterministic:
            return x
        if isinstance(self.rate, jax.Array):
            # Traced (scanned) rate: keep = 1 - rate in float32, no rate-0 shortcut.
            keep = 1.0 - jnp.asarray(self.rate, jnp.float32)
        elif self.rate == 0.0:
            return x
        else:
            keep = 1.0 - self.rate
        mask = jax.random.bernoulli(self.make_rng('dropout'), keep, (x.shape[0],))
        self.sow('intermediates', 'keep_mask', mask.astype(jnp.float32))
        scale = jnp.where(mask, 1.0 / keep, 0.0).astype(x.dtype)
        return x * scale.reshape((x.shape[0],) + (1,) * (x.ndim - 1))


class GeneralAttention(nn.Module):
    """Multi-head (cross-)attention of MAE-DFER (`GeneralAttention`).

    `q = x Wq + q_bias`; `k = ctx Wk` (**no bias**); `v = ctx Wv + v_bias`;
    heads are head-major slices of the channels (`h*head_dim + d`); logits
    `q k^T * head_dim**-0.5` and their softmax over the context in float32
    (`jax.nn.dot_product_attention`); `proj` with bias. Attention and projection dropout are 0 in
    MAE-DFER and are not implemented.

    Attributes:
        num_heads: number of heads (8).
        dtype: computation dtype; parameters are float32.
    """
    num_heads: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, context: Array | None = None) -> Array:
        """Attend from `x [B, T1, C]` to `context [B, T2, C]` (default `x`).

        Returns:
            `[B, T1, C]` in `dtype`.
        """
        ctx = x if context is None else context
        b, t1, c = x.shape
        t2 = ctx.shape[1]
        if c % self.num_heads:
            raise ValueError(f'GeneralAttention: width {c} is not divisible by '
                             f'num_heads={self.num_heads}')
        hd = c // self.num_heads
        dense = functools.partial(nn.Dense, c, dtype=self.dtype, param_dtype=jnp.float32,
                                  kernel_init=timm_trunc_normal())
        q = dense(name='q')(x).reshape(b, t1, self.num_heads, hd)
        k = dense(use_bias=False, name='k')(ctx).reshape(b, t2, self.num_heads, hd)
        v = dense(name='v')(ctx).reshape(b, t2, self.num_heads, hd)
        # The original scales q before q k^T; scaling the float32 logits
        # instead is the same up to rounding, and lets the fused kernel
        # (cuDNN on GPU) do it. Softmax in float32 (layers.dot_product_attention).
        out = layers.dot_product_attention(q, k, v, hd ** -0.5).reshape(b, t1, c)
        return dense(name='proj')(out)


class Mlp(nn.Module):
    """Token-wise MLP: `fc1` (C -> hidden) -> exact erf GELU -> `fc2` (hidden -> C).

    Attributes:
        hidden: hidden width (4*C = 2048).
        dtype: computation dtype; parameters are float32.
    """
    hidden: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """`[..., C] -> [..., C]` in `dtype`."""
        dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=jnp.float32,
                                  kernel_init=timm_trunc_normal())
        c = x.shape[-1]
        x = dense(self.hidden, name='fc1')(x)
        # GELU then fc2 under a rematerialisation that keeps matrix products:
        # the backward pass keeps fc1's output [rows, hidden] alone and
        # recomputes the GELU from it (elementwise), where plain autodiff
        # kept the GELU's input, output and erf terms too (3-4 copies of the
        # largest activation of the block).
        return _GeluDense(c, dtype=self.dtype, param_dtype=jnp.float32,
                          kernel_init=timm_trunc_normal(), name='fc2')(x)


class _GeluDense(nn.Dense):
    """`Dense(gelu(x))` (exact erf GELU, PyTorch's nn.GELU(), backbones.md
    section 4), its parameters those of the Dense (`kernel`, `bias`)."""

    def __call__(self, x: Array) -> Array:
        return super().__call__(layers.gelu(x, approximate=False))


_GeluDense = nn.remat(_GeluDense, prevent_cse=False,  # type: ignore[misc]
                      policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)


class LGBlock(nn.Module):
    """Local-global interaction block of LGI-Former (`LGBlock`, attn types self/cross).

    With `x [B*N, S, C]` (N regions, S = 1 + tokens per region, row b*N + r,
    region token at index 0), pre-norm, DP = `DropPath(drop_path)`, fresh
    noise at each of the four uses:

    1. local: `x += DP(first_attn(first_attn_norm0(x)))` (per region row);
    2. global: `m = x[:, 0]` as `[B, N, C]`;
       `m += DP(second_attn(second_attn_norm0(m)))` (per clip);
    3. propagation: `l = x[:, 1:]` as `[B, N*(S-1), C]` (regions concatenated);
       `l += DP(third_attn(third_attn_norm0(l), context=third_attn_norm1(m)))`
       with the updated m (per clip);
    4. `x = [m | l]` back as `[B*N, S, C]`; `x += DP(mlp(norm2(x)))` (per row).

    LayerNorms: eps 1e-6, `use_fast_variance=False` (PyTorch subtracts the
    mean first).

    With `region_tokens_only` (the last block, whose output is pooled over
    its region tokens) the block returns only the region-token rows
    `[B*N, 1, C]`, with the same values: step 3 cannot reach them
    (backbones.md section 3 quirks), and the step-4 MLP acts row by row. It
    skips step 3 and the MLP of the other 800 tokens (4.2 of the block's
    6.1 GFLOPs per clip at full size, about 4 % of the forward pass) but
    still draws step 3's drop-path noise, so every random draw is the one of
    the full block. At `init` the full block runs, so its parameter tree is
    always complete (checkpoints keep `third_attn*`).

    Attributes:
        num_regions: N.
        num_heads: heads of the three attentions.
        mlp_ratio: MLP hidden width / C.
        drop_path: stochastic-depth rate of this block (a Python float; the
            stacked blocks of `MAEDFER` pass theirs as the `rate` argument).
        norm_eps: LayerNorm epsilon.
        dtype: computation dtype; parameters are float32.
        region_tokens_only: return only the region tokens (see above).
    """
    num_regions: int
    num_heads: int
    mlp_ratio: float = 4.0
    drop_path: float | Array = 0.0
    norm_eps: float = 1e-6
    dtype: Dtype = jnp.float32
    region_tokens_only: bool = False

    @nn.compact
    def __call__(self, x: Array, train: bool, rate: Array | None = None) -> Array:
        """`x [B*N, S, C]` -> `[B*N, S, C]` (`[B*N, 1, C]` if `region_tokens_only`).

        `rate` (a `[] float32` array, e.g. the scanned per-block rate of
        `MAEDFER`'s stacked blocks) replaces the `drop_path` attribute when given.
        """
        bn, s, c = x.shape
        n = self.num_regions
        if bn % n:
            raise ValueError(f'LGBlock: {bn} rows is not a multiple of num_regions={n}')
        b = bn // n
        # layers.LayerNorm: nn.LayerNorm's values; its backward keeps x and
        # the float32 statistics only (no float32 [rows, C] copies).
        norm = functools.partial(layers.LayerNorm, epsilon=self.norm_eps, dtype=self.dtype)
        attn = functools.partial(GeneralAttention, num_heads=self.num_heads, dtype=self.dtype)
        dp = DropPath(self.drop_path if rate is None else rate, name='drop_path')
        det = not train

        x = x + dp(attn(name='first_attn')(norm(name='first_attn_norm0')(x)), det)

        m = x[:, 0].reshape(b, n, c)
        m = m + dp(attn(name='second_attn')(norm(name='second_attn_norm0')(m)), det)

        if self.region_tokens_only and not self.is_initializing():
            # Step 3's noise, drawn and unused: step 4 then draws what it
            # draws in the full block ([B] rows, as for `l` below).
            dp(jnp.zeros((b, 1), x.dtype), det)
            x = m.reshape(bn, 1, c)
        else:
            l = x[:, 1:].reshape(b, n * (s - 1), c)
            ctx = norm(name='third_attn_norm1')(m)
            l = l + dp(attn(name='third_attn')(norm(name='third_attn_norm0')(l), ctx), det)
            x = jnp.concatenate([m.reshape(bn, 1, c), l.reshape(bn, s - 1, c)], axis=1)
        h = Mlp(int(c * self.mlp_ratio), dtype=self.dtype, name='mlp')(norm(name='norm2')(x))
        return x + dp(h, det)


class PatchEmbed(nn.Module):
    """Tubelet embedding: Conv3d kernel = stride = (tubelet, patch, patch), VALID, bias.

    Init: PyTorch's Conv3d default (the original's `_init_weights` leaves
    convolutions alone). Parameters those of `nn.Conv` under `proj`:
    `kernel [tubelet, patch, patch, Cin, embed_dim]`, `bias [embed_dim]`,
    float32.

    Computed as the same convolution with each row's patch columns moved
    into the channels: input `[B, T, H, W/patch, patch*Cin]` (a free
    reshape), kernel `[tubelet, patch, 1, patch*Cin, embed_dim]`. The sums
    are the original's; what changes is the input's last axis (48 instead
    of 3): XLA:TPU tiles an array's two minor axes by (8, 128), so the
    channel-last `[..., W, 3]` input kept for the kernel gradient took ~40x
    its size (400 MiB per v5e chip at 8 clips, bfloat16 or float32; 0 with
    48 channels). A reshape into `[B, tokens, t*p*p*Cin]` tubelets and one
    matrix product was tried too: its transposition needs twice that.

    Attributes:
        embed_dim: output width (512).
        patch_size: spatial patch (16).
        tubelet_size: temporal patch (2).
        dtype: computation dtype; parameters are float32.
    """
    embed_dim: int
    patch_size: int
    tubelet_size: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """`x [B, T, H, W, Cin]` -> `[B, T/t * H/p * W/p, embed_dim]`, token t*Hp*Wp + h*Wp + w."""
        return _TubeletConv(self.embed_dim, self.patch_size, self.tubelet_size,
                            dtype=self.dtype, name='proj')(x)


class _TubeletConv(nn.Module):
    """`PatchEmbed`'s convolution (its docstring), parameters as `nn.Conv`'s."""
    features: int
    patch_size: int
    tubelet_size: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b, t, h, w, cin = x.shape
        p, kt = self.patch_size, self.tubelet_size
        shape = (kt, p, p, cin, self.features)
        kernel = self.param('kernel', _torch_conv_kernel_init, shape, jnp.float32)
        bias = self.param('bias', _torch_conv_bias_init(int(np.prod(shape[:-1]))),
                          (self.features,), jnp.float32)
        x = x.astype(self.dtype).reshape(b, t, h, w // p, p * cin)
        kernel = kernel.reshape(kt, p, 1, p * cin, self.features).astype(self.dtype)
        # Kernel = stride: conv.py's patchify backward on CPU (XLA:CPU's
        # 16x-dilated kernel-gradient convolution is slow), lax's elsewhere.
        y = conv_lib.conv_general_dilated(x, kernel, (kt, p, 1), 'VALID',
                                          dimension_numbers=('NDHWC', 'DHWIO', 'NDHWC'))
        y = y + bias.astype(self.dtype)
        return y.reshape(b, -1, self.features)


class MAEDFER(nn.Module):
    """MAE-DFER (LGI-Former, `local_global` attention) with an AU head.

    Defaults are the DFEW fine-tuning configuration (backbones.md section 3):
    160x160, 16 frames, patch 16, tubelet 2, width 512, depth 16, 8 heads,
    mlp ratio 4, region size (2, 5, 10), drop-path 0.1, init_scale 0.001,
    LayerNorm eps 1e-6, region-token mean pooling.

    The blocks are stored stacked (module docstring): `blocks` holds blocks
    0 .. depth-2, each leaf with a leading `[depth-1]` layer axis, and runs them
    as one `nn.scan` (one compiled loop body instead of depth-1 copies, forward
    and backward; the optimizer then updates ~35 stacked leaves instead of
    ~35 per block); `last_block` is block depth-1, whose region-token-only
    program differs (`LGBlock.region_tokens_only`). The per-block drop-path
    rates are the scan's input array, and the rematerialisation policy wraps
    the scanned block (`nn.remat` inside `nn.scan`, `prevent_cse=False`).

    Attributes:
        num_classes: expression classes C (`head` 512 -> C).
        num_aus: AU logits (`au_head` 512 -> num_aus), 18 OpenFace AUs.
        image_size: input height = width in pixels.
        num_frames: input frames T.
        patch_size: spatial patch in pixels.
        tubelet_size: temporal patch in frames.
        embed_dim: token width.
        depth: number of LGBlocks.
        num_heads: attention heads (head dim = embed_dim / num_heads).
        mlp_ratio: MLP hidden width / embed_dim.
        region_size: local region (t, h, w) in tokens; must divide the token grid.
        drop_path_rate: stochastic depth of the last block (linear from 0).
        init_scale: factor on the fresh `head` init (the original's `init_scale`).
        norm_eps: LayerNorm epsilon.
        dtype: activation dtype (float32 or bfloat16); parameters stay float32;
            `logits`, `au_logits` and `features` are float32.
        remat_policy: what each block's backward pass recomputes
            (`layers.REMAT_POLICIES`: `none`, `full`,
            `dots_with_no_batch_dims_saveable`, `dots_saveable`; a bool is
            the old `remat` switch).
        scan_blocks: True (default): the stacked blocks run as a loop. False:
            the same parameters and values as straight-line code
            (`nn.scan(unroll=depth-1)`), which compiles several times slower;
            so are programs traced inside `platform.unrolled_scans()`, which
            `audfer_jax.flops.unrolled_flops` uses because XLA's cost analysis
            counts a loop body once.
    """
    num_classes: int = 7
    num_aus: int = 18
    image_size: int = 160
    num_frames: int = 16
    patch_size: int = 16
    tubelet_size: int = 2
    embed_dim: int = 512
    depth: int = 16
    num_heads: int = 8
    mlp_ratio: float = 4.0
    region_size: tuple[int, int, int] = (2, 5, 10)
    drop_path_rate: float = 0.1
    init_scale: float = 0.001
    norm_eps: float = 1e-6
    dtype: Dtype = jnp.float32
    remat_policy: str = 'none'
    scan_blocks: bool = True

    @property
    def token_grid(self) -> tuple[int, int, int]:
        """Token grid `(T/tubelet, H/patch, W/patch)` = (8, 10, 10) at full size."""
        return (self.num_frames // self.tubelet_size, self.image_size // self.patch_size,
                self.image_size // self.patch_size)

    @property
    def num_regions(self) -> int:
        """Number of local regions (8 at full size)."""
        return int(np.prod([g // r for g, r in zip(self.token_grid, self.region_size)]))

    def check_config(self) -> None:
        """Raises ValueError (one line listing every problem) for sizes that do not fit.

        Called at the start of every forward pass, and by
        `model_state.build_model` so that a config error shows before any data
        is written.
        """
        problems = []
        if self.num_frames % self.tubelet_size:
            problems.append(f'num_frames={self.num_frames} not divisible by '
                            f'tubelet_size={self.tubelet_size}')
        if self.image_size % self.patch_size:
            problems.append(f'image_size={self.image_size} not divisible by '
                            f'patch_size={self.patch_size}')
        if len(tuple(self.region_size)) != 3 or any(
                g % r for g, r in zip(self.token_grid, self.region_size)):
            problems.append(f'region_size={tuple(self.region_size)} does not tile the token '
                            f'grid {self.token_grid}')
        if self.embed_dim % self.num_heads:
            problems.append(f'embed_dim={self.embed_dim} not divisible by '
                            f'num_heads={self.num_heads}')
        if problems:
            raise ValueError('MAEDFER config: ' + '; '.join(problems))

    def _normalise(self, clips: Array) -> Array:
        """`[B, T, H, W, 3]` uint8 or float in [0, 1] -> ImageNet-normalised float32."""
        expected = (self.num_frames, self.image_size, self.image_size, 3)
        if clips.ndim != 5 or tuple(clips.shape[1:]) != expected:
            raise ValueError(f'MAEDFER: clips must be [B, {expected[0]}, {expected[1]}, '
                             f'{expected[2]}, 3] (uint8, or float in [0, 1]); got shape '
                             f'{tuple(clips.shape)} dtype {clips.dtype}')
        if jnp.issubdtype(clips.dtype, jnp.integer):
            x = clips.astype(jnp.float32) / 255.0
        elif jnp.issubdtype(clips.dtype, jnp.floating):
            x = clips.astype(jnp.float32)
        else:
            raise ValueError(f'MAEDFER: clips dtype {clips.dtype} is neither uint8 nor float')
        mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
        std = jnp.asarray(IMAGENET_STD, jnp.float32)
        return (x - mean) / std

    @nn.compact
    def __call__(self, clips: Array, train: bool) -> ModelOutput:
        """Classify clips.

        Args:
            clips: `[B, T, H, W, 3]` uint8 (0..255) or float in [0, 1], RGB;
                T = num_frames, H = W = image_size.
            train: enables drop-path (needs the `dropout` rng); eval is
                deterministic.

        Returns:
            `ModelOutput(logits [B, C] float32, au_logits [B, num_aus] float32,
            features [B, embed_dim] float32)`.

        Raises:
            ValueError: wrong clip shape or dtype, or an inconsistent config.
        """
        self.check_config()
        x = self._normalise(clips).astype(self.dtype)
        b = x.shape[0]
        c = self.embed_dim
        grid = self.token_grid
        n = self.num_regions
        x = PatchEmbed(c, self.patch_size, self.tubelet_size, dtype=self.dtype,
                       name='patch_embed')(x)
        pos = sinusoid_table(int(np.prod(grid)), c)
        x = x + jnp.asarray(pos, self.dtype)

        x = partition_regions(x, grid, self.region_size)
        region_tokens = self.param('lg_region_tokens', timm_trunc_normal(), (n, c), jnp.float32)
        region_tokens = jnp.broadcast_to(region_tokens.astype(self.dtype)[None, :, None, :],
                                         (b, n, 1, c))
        x = jnp.concatenate([region_tokens, x], axis=2)
        x = x.reshape(b * n, x.shape[2], c)

        rates = drop_path_rates(self.drop_path_rate, self.depth)
        block_kw = dict(num_regions=n, num_heads=self.num_heads, mlp_ratio=self.mlp_ratio,
                        norm_eps=self.norm_eps, dtype=self.dtype)
        if self.depth > 1:
            x = self._stacked_blocks(x, train, rates[:-1], block_kw)
        last_cls = layers.remat_module(LGBlock, self.remat_policy)
        x = last_cls(**block_kw, drop_path=rates[-1], region_tokens_only=True,
                     name=LAST_BLOCK)(x, train)

        region_out = x[:, 0].reshape(b, n, c).astype(jnp.float32)
        # The pooled head runs in float32: it is tiny and feeds the losses.
        feat = layers.LayerNorm(epsilon=self.norm_eps, dtype=jnp.float32,
                                name='fc_norm')(region_out.mean(axis=1))
        logits = nn.Dense(self.num_classes, dtype=jnp.float32,
                          kernel_init=timm_trunc_normal(scale=self.init_scale),
                          bias_init=nn.initializers.zeros, name='head')(feat)
        au_logits = nn.Dense(self.num_aus, dtype=jnp.float32, kernel_init=timm_trunc_normal(),
                             bias_init=nn.initializers.zeros, name='au_head')(feat)
        return ModelOutput(logits=logits, au_logits=au_logits, features=feat)

    def _stacked_blocks(self, x: Array, train: bool, rates: Sequence[float],
                        block_kw: dict[str, Any]) -> Array:
        """Blocks 0 .. K-1 (K = len(rates) = depth - 1) as one `nn.scan`.

        The parameters of `blocks` get a leading `[K]` axis (`variable_axes`),
        each block its own initialisation and drop-path noise (`split_rngs`);
        sown `intermediates` (the drop-path `keep_mask`s) are stacked the same
        way. The drop-path rates (the original per-block values,
        `drop_path_rates`) are the scanned input, a `[K] float32` array, in
        training only and when some rate is not 0: otherwise no block draws.

        Args:
            x: `[B*N, S, C]` tokens in `dtype`.
            train: enables drop-path (Python bool).
            rates: the K blocks' drop-path rates (Python floats).
            block_kw: `LGBlock` attributes shared by all blocks.

        Returns:
            `[B*N, S, C]` in `dtype`, the output of block K-1.
        """
        count = len(rates)
        # Inside a scan prevent_cse is not needed (the loop keeps XLA from
        # merging the recomputation into the forward pass; jax.checkpoint docs).
        block_cls = layers.remat_module(LGBlock, self.remat_policy, prevent_cse=False)

        def step(block: nn.Module, carry: Array, rate: Array | None) -> tuple[Array, None]:
            return block(carry, train, rate), None

        scan = nn.scan(step, variable_axes={'params': 0, 'intermediates': 0},
                       split_rngs={'params': True, 'dropout': True}, in_axes=0,
                       length=count,
                       unroll=1 if self.scan_blocks and not platform.scans_unrolled() else count)
        xs = jnp.asarray(rates, jnp.float32) if train and any(rates) else None
        x, _ = scan(block_cls(**block_kw, name=STACKED_BLOCKS), x, xs)
        return x


def mae_dfer(num_classes: int = 7, num_aus: int = 18, **overrides: Any) -> MAEDFER:
    """Full-size MAE-DFER as the DFEW fine-tuning script builds it.

    Input `[B, 16, 160, 160, 3] uint8`; 84,878,343 parameters with 7 classes
    (AU head excluded).

    Args:
        num_classes: expression classes.
        num_aus: AU head width.
        **overrides: any other `MAEDFER` attribute (e.g. `dtype`, `remat_policy`,
            `drop_path_rate`).

    Raises:
        TypeError: an override that is not a `MAEDFER` attribute.
    """
    return _build(dict(num_classes=num_classes, num_aus=num_aus), overrides)


def mae_dfer_tiny(num_classes: int = 7, num_aus: int = 18, **overrides: Any) -> MAEDFER:
    """Same code path at toy size, for tests and smoke runs.

    Input `[B, 8, 32, 32, 3]`; patch 8, tubelet 2 -> token grid (4, 4, 4);
    region size (2, 2, 4) -> 4 regions of 16 tokens; width 64, depth 2,
    2 heads; drop-path 0.1. At another clip size (`image_size`, `num_frames`
    overrides: a config's data) the regions stay 2 x 2 x (a whole token row),
    which tiles every grid of even height and temporal length.
    """
    patch = int(overrides.get('patch_size', 8))
    side = int(overrides.get('image_size', overrides.get('img_size', 32)))
    config = dict(num_classes=num_classes, num_aus=num_aus, image_size=32, num_frames=8,
                  patch_size=patch, tubelet_size=2, embed_dim=64, depth=2, num_heads=2,
                  region_size=(2, 2, max(side // patch, 1)))
    return _build(config, overrides)


def _build(config: dict[str, Any], overrides: dict[str, Any]) -> MAEDFER:
    if 'img_size' in overrides:    # the original's name (older run configs)
        overrides = dict(overrides)
        overrides.setdefault('image_size', overrides.pop('img_size'))
    fields = set(MAEDFER.__dataclass_fields__) - {'parent', 'name'}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TypeError(f'MAEDFER has no attribute(s) {unknown}; known: {sorted(fields)}')
    config.update(overrides)
    if 'region_size' in config:
        config['region_size'] = tuple(config['region_size'])
    return MAEDFER(**config)


# --- the stacked layout and its per-block view (module docstring, "Layout") ---

STACKED_BLOCKS = 'blocks'
LAST_BLOCK = 'last_block'
_BLOCK_RE = re.compile(r'^blocks_(\d+)$')
# A key beside the blocks in every MAE-DFER parameter tree (and in the
# optimizer's moment trees, which mirror it), so that a plug-in backbone's
# own `blocks_k` are never taken for MAE-DFER's.
_SIBLING = 'lg_region_tokens'


def _is_stacked_dict(node: Any) -> bool:
    return isinstance(node, Mapping) and LAST_BLOCK in node and _SIBLING in node


def _is_per_block_dict(node: Any) -> bool:
    return isinstance(node, Mapping) and 'blocks_0' in node and _SIBLING in node


def _row(leaf: Any, k: int) -> Any:
    """Row k of a stacked leaf (array, NumPy array or `ShapeDtypeStruct`)."""
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype,
                                    sharding=getattr(leaf, 'sharding', None))
    return leaf[k]


def _stack(leaves: Sequence[Any]) -> Any:
    """Leaves of one path, one per block, as one leaf with a leading block axis."""
    first = leaves[0]
    if any(isinstance(x, jax.ShapeDtypeStruct) for x in leaves):
        return jax.ShapeDtypeStruct((len(leaves),) + tuple(first.shape), first.dtype,
                                    sharding=getattr(first, 'sharding', None))
    if all(isinstance(x, np.ndarray) for x in leaves):
        return np.stack(leaves)
    return jnp.stack(leaves)


def _unstack_dict(node: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in node.items() if k not in (STACKED_BLOCKS, LAST_BLOCK)}
    count = 0
    if STACKED_BLOCKS in node:
        count = int(jax.tree.leaves(node[STACKED_BLOCKS])[0].shape[0])
        for k in range(count):
            out[f'blocks_{k}'] = jax.tree.map(lambda a, k=k: _row(a, k), node[STACKED_BLOCKS])
    out[f'blocks_{count}'] = node[LAST_BLOCK]
    return out


def _stack_dict(node: Mapping[str, Any]) -> dict[str, Any]:
    ids = sorted(int(m.group(1)) for m in map(_BLOCK_RE.match, node) if m)
    if ids != list(range(len(ids))):
        raise ValueError(f'MAE-DFER per-block layout: expected blocks_0 .. blocks_{len(ids) - 1}, '
                         f'got blocks {ids}')
    out = {k: v for k, v in node.items() if not _BLOCK_RE.match(k)}
    depth = len(ids)
    if depth > 1:
        out[STACKED_BLOCKS] = jax.tree.map(lambda *xs: _stack(xs),
                                           *[node[f'blocks_{k}'] for k in range(depth - 1)])
    out[LAST_BLOCK] = node[f'blocks_{depth - 1}']
    return out


def per_block_layout(tree: Any) -> Any:
    """The stacked layout as the per-block one: `blocks/...[k]` -> `blocks_k/...`.

    Works on any pytree (variables, a `TrainState`, optimizer states, abstract
    `ShapeDtypeStruct` trees, gradients): every dict that holds MAE-DFER's
    `last_block` and `lg_region_tokens` gets `blocks_0` .. `blocks_{depth-2}`
    (row k of each `blocks` leaf; a `ShapeDtypeStruct` loses its leading
    axis) and `blocks_{depth-1}` (`last_block`). The layout of checkpoints
    written before the blocks were stacked, and the one the original's
    `blocks.k.*` tensors map onto one to one (`convert`, the recipe-parity
    test).

    Args:
        tree: any pytree; dicts without MAE-DFER blocks are left as they are.

    Returns:
        The same pytree with those dicts replaced (arrays are sliced, not
        copied where NumPy can view).
    """
    return jax.tree.map(lambda n: _unstack_dict(n) if _is_stacked_dict(n) else n, tree,
                        is_leaf=_is_stacked_dict)


def stacked_layout(tree: Any) -> Any:
    """The inverse of `per_block_layout`: `blocks_k/...` -> `blocks/...[k]`, `last_block`.

    Every dict that holds `blocks_0` and `lg_region_tokens` is restacked;
    NumPy leaves stack with NumPy, `ShapeDtypeStruct`s gain the leading axis,
    anything else with `jnp.stack` (so it runs under `jax.jit`).

    Raises:
        ValueError: the `blocks_k` are not numbered 0 .. n-1.
    """
    return jax.tree.map(lambda n: _stack_dict(n) if _is_per_block_dict(n) else n, tree,
                        is_leaf=_is_per_block_dict)


def has_per_block_layout(tree: Any) -> bool:
    """Whether some dict of `tree` holds MAE-DFER blocks in the per-block layout."""
    found = []
    jax.tree.map(lambda n: found.append(_is_per_block_dict(n)), tree,
                 is_leaf=_is_per_block_dict)
    return any(found)


# --- optimiser helpers (backbones.md section 3 recipe; original optim_factory.py) ---

def _keys(path: Sequence[Any]) -> tuple[str, ...]:
    """Path entries as strings (accepts jax key-path entries or plain strings)."""
    out = []
    for p in path:
        key = getattr(p, 'key', getattr(p, 'name', p))
        out.append(str(key))
    return tuple(out)


def is_stacked(path: Sequence[Any]) -> bool:
    """Whether the leaf at `path` is a stacked one (leading block axis, under `blocks`)."""
    return STACKED_BLOCKS in _keys(path)


def lr_layer_id(path: Sequence[Any], num_layers: int) -> int | np.ndarray:
    """Layer id for layer-wise lr decay (original `get_num_layer_for_vit`).

    id 0 = `patch_embed`; block k = k + 1; everything else
    (`lg_region_tokens`, `fc_norm`, `head`, `au_head`) = num_layers + 1
    (17 for depth 16). The lr scale is `decay ** (num_layers + 1 - id)`
    (decay 0.75 in MAE-DFER), see `lr_scale`.

    Args:
        path: parameter path, e.g. `('params', 'blocks', 'first_attn', 'q',
            'kernel')`; a leading collection name is allowed; the per-block
            names `blocks_k` are understood too.
        num_layers: number of blocks (model depth).

    Returns:
        An int, or for a stacked leaf (under `blocks`) the ids of its rows,
        `[1, 2, ..., num_layers - 1]` as a `[num_layers - 1] int64` array.
    """
    for key in _keys(path):
        if key == 'patch_embed':
            return 0
        if key == STACKED_BLOCKS:
            return np.arange(1, num_layers)
        if key == LAST_BLOCK:
            return num_layers
        match = _BLOCK_RE.match(key)
        if match:
            return int(match.group(1)) + 1
    return num_layers + 1


def lr_scale(path: Sequence[Any], num_layers: int, decay: float = 0.75) -> float | np.ndarray:
    """Layer-wise lr multiplier `decay ** (num_layers + 1 - lr_layer_id(path))`.

    A float, or for a stacked leaf one float64 value per row (`[num_layers - 1]`).
    """
    layer = lr_layer_id(path, num_layers)
    if isinstance(layer, np.ndarray):
        return np.power(float(decay), (num_layers + 1 - layer).astype(np.float64))
    return float(decay ** (num_layers + 1 - layer))


def no_weight_decay(path: Sequence[Any], shape: Sequence[int] | None = None) -> bool:
    """True for parameters the original excludes from weight decay.

    The original (`optim_factory.py`) skips 1-D tensors, `*.bias` and the
    names in `no_weight_decay()` (`lg_region_tokens`). In Flax the 1-D
    parameters are exactly the `bias` and LayerNorm `scale` leaves; pass
    `shape` to also catch any other 1-D leaf (for a stacked leaf, the shape of
    one row: its leading block axis does not count).
    """
    keys = _keys(path)
    if shape is not None:
        per_block = tuple(shape)[1:] if is_stacked(keys) else tuple(shape)
        if len(per_block) <= 1:
            return True
    return bool(keys) and (keys[-1] in ('bias', 'scale') or 'lg_region_tokens' in keys)


def frozen_by_design(path: Sequence[Any], num_layers: int = 16) -> bool:
    """True for the parameters that never get a gradient (backbones.md quirks).

    Those are `last_block/third_attn/*`, `third_attn_norm0/*` and
    `third_attn_norm1/*` (`blocks_{num_layers-1}/...` in the per-block
    layout): the last block's propagation step cannot reach the region-token
    output. Mask them out of weight decay so that they stay equal to the
    checkpoint, like torch's AdamW would if it were handed no gradient.
    """
    keys = _keys(path)
    for i, key in enumerate(keys[:-1]):
        if key in (LAST_BLOCK, f'blocks_{num_layers - 1}'):
            return keys[i + 1] in ('third_attn', 'third_attn_norm0', 'third_attn_norm1')
    return False


def weight_decay_mask(params: Any, num_layers: int) -> Any:
    """Pytree of bools like `params`: True where AdamW weight decay applies.

    False for `no_weight_decay` leaves and for `frozen_by_design` leaves.
    Use as `optax.adamw(..., mask=weight_decay_mask(params, depth))`.
    """
    flat = traverse_util.flatten_dict(params)
    mask = {k: not (no_weight_decay(k, getattr(v, 'shape', None))
                    or frozen_by_design(k, num_layers))
            for k, v in flat.items()}
    return traverse_util.unflatten_dict(mask)
