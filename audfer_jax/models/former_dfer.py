"""Former-DFER (Zhao & Liu, ACM MM 2021) with the AU-DFER AU head, in Flax linen.

Source of every detail: zengqunzhao/Former-DFER @1b5ad6f, models/ST_Former.py,
S_Former.py, T_Former.py; spec backbones.md section 1 and
state_dicts/former_dfer.json. The network:

    clips [B, T=16, 112, 112, 3] uint8 -> /255 (no mean/std)
    -> frames folded into the batch, row b*T + t                  [B*T, 112, 112, 3]
    S-Former (per frame, ResNet-18 with a transformer after layer3):
      conv1 7x7/2 p3 -> bn1 -> ReLU -> max-pool 3/2 p1            [B*T, 28, 28, 64]
      layer1, layer2, layer3 (2 BasicBlocks each)                  [B*T, 7, 7, 256]
      tokens h*7+w (PyTorch flatten of [C, H, W]) + pos_embedding  [B*T, 49, 256]
      1 transformer layer (8 heads x 32, mlp 512), back to a map    [B*T, 7, 7, 256]
      layer4, global average pool                                   [B*T, 512]
    T-Former: [B, T, 512], CLS prepended, + pos_embedding [1, T+1, 512],
      3 transformer layers (8 x 64, mlp 1024), CLS output           [B, 512]
    fc 512->C (logits), AU_fc 512->18 (AU logits) on that vector.

PyTorch key (without `module.`) -> Flax path, params unless noted:
    s_former.pos_embedding             -> s_former/pos_embedding [1, 49, 256]
    s_former.conv1.weight [O,I,kh,kw]  -> s_former/conv1/kernel [kh,kw,I,O]
    s_former.bn1.{weight,bias}         -> s_former/bn1/{scale,bias}
    s_former.bn1.running_{mean,var}    -> batch_stats s_former/bn1/{mean,var}
    s_former.layer{K}.{J}.*            -> s_former/layer{K}_{J}/* (see layers.BasicBlock)
    s_former.spatial_transformer.layers.{i}.* -> s_former/spatial_transformer/layers_{i}/*
                                          (see layers.TransformerLayer)
    t_former.cls_token [1,1,512]       -> t_former/cls_token
    t_former.pos_embedding [1,17,512]  -> t_former/pos_embedding
    t_former.spatial_transformer.layers.{i}.* -> t_former/spatial_transformer/layers_{i}/*
                                          (the original names the T-Former stack
                                          `spatial_transformer` too; kept 1:1)
    fc.{weight,bias}                   -> fc/{kernel (transposed), bias}
    AU_fc.{weight,bias} (AU-DFER)      -> AU_fc/{kernel (transposed), bias}
    *.num_batches_tracked              -> dropped
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from audfer_jax.models import conv as conv_lib
from audfer_jax.models import layers
from audfer_jax.models.base import ModelOutput

Array = jax.Array
Dtype = Any


class SFormer(nn.Module):
    """Spatial Former: ResNet-18 with one transformer layer after layer3.

    Attributes:
        widths: channels of stem/layer1, layer2, layer3, layer4 (64,128,256,512).
        depth, heads, dim_head, mlp_dim: transformer sizes (1, 8, 32, 512).
        dtype: activation dtype.
        remat_policy: what the BasicBlocks' and transformer layers' backward
            pass recomputes (`layers.REMAT_POLICIES`).

    Input `[N, S, S, 3]` float in [0, 1]; output `[N, widths[3]]`. The token grid
    is the layer3 map, `S / 16` squared (7 x 7 = 49 tokens at S = 112), and sizes
    `pos_embedding`.
    """
    widths: Sequence[int] = (64, 128, 256, 512)
    depth: int = 1
    heads: int = 8
    dim_head: int = 32
    mlp_dim: int = 512
    dtype: Dtype = jnp.float32
    remat_policy: str = "none"

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        w = self.widths
        block_cls = layers.remat_module(layers.BasicBlock, self.remat_policy)
        x = nn.Conv(w[0], (7, 7),
                    strides=(2, 2),
                    padding=((3, 3), (3, 3)),
                    use_bias=False,
                    dtype=self.dtype,
                    param_dtype=jnp.float32,
                    kernel_init=layers.kaiming_normal_fan_out,
                    # Kernel gradient in batch chunks on XLA:CPU (3x faster here).
                    conv_general_dilated=conv_lib.cpu_conv_general_dilated,
                    name="conv1")(x)
        x = nn.relu(layers.batch_norm(train, self.dtype, "bn1")(x))
        # = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1))),
        # with a backward pass 2-3x faster on XLA:CPU (conv.max_pool).
        x = conv_lib.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)))
        for k, (width, stride) in enumerate(zip(w[:3], (1, 2, 2)), start=1):
            for j in range(2):
                s = stride if j == 0 else 1
                x = block_cls(width, (s, s), self.dtype, name=f"layer{k}_{j}")(x, train)
        n, h, wd, c = x.shape
        # Row-major reshape of [H, W, C] gives token h*W + w, the same order as
        # PyTorch's reshape of [C, H, W] to [C, H*W] followed by a permute.
        tokens = x.reshape(n, h * wd, c)
        pos = self.param("pos_embedding", nn.initializers.normal(1.0), (1, h * wd, c), jnp.float32)
        tokens = tokens + pos.astype(self.dtype)
        tokens = layers.Transformer(self.depth,
                                    self.heads,
                                    self.dim_head,
                                    self.mlp_dim,
                                    approximate_gelu=True,
                                    dtype=self.dtype,
                                    remat_policy=self.remat_policy,
                                    name="spatial_transformer")(tokens, train)
        x = tokens.reshape(n, h, wd, c)
        for j in range(2):
            s = 2 if j == 0 else 1
            x = block_cls(w[3], (s, s), self.dtype, name=f"layer4_{j}")(x, train)
        return jnp.mean(x, axis=(1, 2))


class TFormer(nn.Module):
    """Temporal Former: CLS token + learned positions + transformer, CLS output.

    Attributes:
        depth, heads, dim_head, mlp_dim: transformer sizes (3, 8, 64, 1024).
        dtype: activation dtype.
        remat_policy: what the transformer layers' backward pass recomputes
            (`layers.REMAT_POLICIES`).

    Input `[B, T, D]`; output `[B, D]` (token 0, no final norm).
    """
    depth: int = 3
    heads: int = 8
    dim_head: int = 64
    mlp_dim: int = 1024
    dtype: Dtype = jnp.float32
    remat_policy: str = "none"

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        b, t, d = x.shape
        cls = self.param("cls_token", nn.initializers.normal(1.0), (1, 1, d), jnp.float32)
        pos = self.param("pos_embedding", nn.initializers.normal(1.0), (1, t + 1, d), jnp.float32)
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (b, 1, d)), x], axis=1)
        x = x + pos.astype(self.dtype)
        x = layers.Transformer(self.depth,
                               self.heads,
                               self.dim_head,
                               self.mlp_dim,
                               approximate_gelu=True,
                               dtype=self.dtype,
                               remat_policy=self.remat_policy,
                               name="spatial_transformer")(x, train)
        return x[:, 0]


class FormerDFER(nn.Module):
    """Former-DFER with an AU head (AU-DFER).

    Attributes:
        num_classes: expression classes C (7 for DFEW/FERV39k, 11 for MAFW).
        num_aus: AU head width (18, `audfer_jax.au.AU_NAMES`).
        num_frames: T (16 in the original, hard-coded there).
        image_size: input side (112 in the original).
        widths: S-Former ResNet widths; widths[2] is the S-Former transformer
            width and widths[3] the T-Former width and the feature size D.
        s_depth, s_heads, s_dim_head, s_mlp_dim: S-Former transformer (1, 8, 32, 512).
        t_depth, t_heads, t_dim_head, t_mlp_dim: T-Former (3, 8, 64, 1024).
        dtype: activation dtype (float32 or bfloat16); parameters are float32 and
            the outputs are cast to float32; BatchNorm/LayerNorm statistics,
            attention logits and softmax are float32 either way.
        remat_policy: what each ResNet block's and transformer layer's
            backward pass recomputes (`layers.REMAT_POLICIES`: `none`, `full`
            or a policy saving matrix products; `nn.remat`; same values and
            parameter paths, less memory, about one more forward pass).

    `__call__(clips, train)`: clips `[B, T, S, S, 3]` uint8 (or float in [0, 1]);
    returns `ModelOutput(logits [B, C] f32, au_logits [B, num_aus] f32,
    features [B, D] f32)`. Raises ValueError on any other clip shape.
    """
    num_classes: int = 7
    num_aus: int = 18
    num_frames: int = 16
    image_size: int = 112
    widths: Sequence[int] = (64, 128, 256, 512)
    s_depth: int = 1
    s_heads: int = 8
    s_dim_head: int = 32
    s_mlp_dim: int = 512
    t_depth: int = 3
    t_heads: int = 8
    t_dim_head: int = 64
    t_mlp_dim: int = 1024
    dtype: Dtype = jnp.float32
    remat_policy: str = "none"

    @nn.compact
    def __call__(self, clips: Array, train: bool) -> ModelOutput:
        layers.check_clips(clips, self.num_frames, self.image_size, "FormerDFER")
        b, t = clips.shape[:2]
        x = layers.to_float_clips(clips, self.dtype)
        x = x.reshape((b * t,) + x.shape[2:])
        x = SFormer(self.widths,
                    self.s_depth,
                    self.s_heads,
                    self.s_dim_head,
                    self.s_mlp_dim,
                    self.dtype,
                    self.remat_policy,
                    name="s_former")(x, train)
        x = x.reshape(b, t, x.shape[-1])
        feat = TFormer(self.t_depth,
                       self.t_heads,
                       self.t_dim_head,
                       self.t_mlp_dim,
                       self.dtype,
                       self.remat_policy,
                       name="t_former")(x, train)
        feat = feat.astype(jnp.float32)
        d = feat.shape[-1]
        logits = layers.torch_dense(self.num_classes, d, name="fc")(feat)
        au_logits = layers.torch_dense(self.num_aus, d, name="AU_fc")(feat)
        return ModelOutput(logits=logits, au_logits=au_logits, features=feat)


def former_dfer(num_classes: int = 7, num_aus: int = 18, **overrides: Any) -> FormerDFER:
    """The full-size Former-DFER (16 x 112 x 112; 18,031,943 params with 7 classes)."""
    return FormerDFER(num_classes=num_classes, num_aus=num_aus, **overrides)


def former_dfer_tiny(num_classes: int = 7, num_aus: int = 18, **overrides: Any) -> FormerDFER:
    """A tiny Former-DFER for tests: 8 x 32 x 32 clips, widths (8,16,32,64),
    2x2 token grid, 2-layer T-Former; same code path as the full model."""
    cfg: dict[str, Any] = dict(num_frames=8,
                               image_size=32,
                               widths=(8, 16, 32, 64),
                               s_depth=1,
                               s_heads=2,
                               s_dim_head=8,
                               s_mlp_dim=32,
                               t_depth=2,
                               t_heads=2,
                               t_dim_head=16,
                               t_mlp_dim=64)
    cfg.update(overrides)
    return FormerDFER(num_classes=num_classes, num_aus=num_aus, **cfg)
