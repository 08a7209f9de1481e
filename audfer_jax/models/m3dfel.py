"""M3DFEL (Wang et al., CVPR 2023) with the AU-DFER AU head, in Flax linen.

Source of every detail: Tencent/TFace @171ec14, attribute/M3DFEL/models/M3DFEL.py
and utils.py (DMIN); torchvision `r3d_18`; spec backbones.md section 2 and
state_dicts/m3dfel.json. The network:

    clips [B, 16, 112, 112, 3] uint8 -> /255 (no mean/std)
    bag: instance i = frames 4i..4i+3, row b*4 + i           [B*4, 4, 112, 112, 3]
    features = R3D-18 without fc:
      stem Conv3d (3,7,7)/(1,2,2) p(1,3,3) -> BN -> ReLU     [B*4, 4, 56, 56, 64]
      layer1..4 (2 BasicBlocks each, stride 1/2/2/2 in t,h,w) [B*4, 1, 7, 7, 512]
      global average pool                                    [B*4, 512] -> [B, 4, 512]
    lstm: 2-layer bidirectional LSTM, hidden 512             h [B, 4, 1024]
    MHSA: packed to_qkv (no bias), 8 heads x 128, no output projection  a [B, 4, 1024]
    DMIN(a), gate g = h * sigmoid(DMIN(a))                   [B, 4, 1024]
    pwconv: Conv1d over the 1024 features with the 4 instances as channels,
      k3 p1 -> pooled feature                                [B, 1024]
    fc 1024->C (logits), fc_au 1024->18 (AU logits).
The original `squeeze()`s the pooled feature, so its batch 1 gives `[C]`; here
batch 1 gives `[1, C]`.

PyTorch key (M3DFEL checkpoint, without `module.`) -> Flax path:
    features.0.0.weight [O,I,kt,kh,kw] -> features/stem_conv/kernel [kt,kh,kw,I,O]
    features.0.1.*                     -> features/stem_bn/* (running_* -> batch_stats)
    features.{K}.{J}.conv1.0 / conv1.1 -> features/layer{K}_{J}/conv1 / bn1
    features.{K}.{J}.conv2.0 / conv2.1 -> features/layer{K}_{J}/conv2 / bn2
    features.{K}.0.downsample.{0,1}    -> features/layer{K}_0/downsample_conv / downsample_bn
      (torchvision r3d_18 keys: `stem.{0,1}` and `layer{K}.{J}.*`; its `fc` is dropped)
    lstm.{weight,bias}_{ih,hh}_l{k}    -> lstm/l{k}/forward_rnn/cell/{i,h}{i,f,g,o}/*
    lstm.*_l{k}_reverse                -> lstm/l{k}/backward_rnn/cell/*
                                          (see layers.TorchLSTMCell for the row split)
    to_qkv.weight [3072, 1024]         -> to_qkv/kernel [1024, 3072] (transpose)
    norm.weight, norm.bias [1,1024,1]  -> norm/weight, norm/bias [1024]
    norm.mean_weight, norm.var_weight  -> norm/mean_weight, norm/var_weight [2]
    pwconv.weight [1, 4, 3], bias [1]  -> pwconv/kernel [3, 4, 1], pwconv/bias [1]
    fc.*                               -> fc/{kernel (transposed), bias}
    fc_au.* (AU-DFER)                  -> fc_au/{kernel (transposed), bias}
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


def make_bag(clips: Array, instance_length: int) -> Array:
    """Splits each clip into consecutive instances, folded into the batch.

    The einops rearrange `b (t1 t2) c h w -> (b t1) c t2 h w` of M3DFEL.py in
    channels-last form: instance i holds frames `i*L .. i*L + L-1`, at row
    `b * (T // L) + i`.

    Args:
        clips: `[B, T, H, W, C]`, T a multiple of `instance_length` L.
        instance_length: frames per instance L.

    Returns:
        `[B * T // L, L, H, W, C]`.
    """
    b, t = clips.shape[:2]
    if t % instance_length:
        raise ValueError(f"M3DFEL: {t} frames do not split into instances of "
                         f"{instance_length}")
    return clips.reshape((b * (t // instance_length), instance_length) + clips.shape[2:])


def dmin(a: Array,
         weight: Array,
         bias: Array,
         mean_weight: Array,
         var_weight: Array,
         eps: float = 1e-5) -> Array:
    """Dynamic Multi-Instance Normalisation (M3DFEL utils.py `DMIN`), pure.

    With i over the N instances and f over the F features of one clip:
        mu_in[f] = mean_i a[i, f];  var_in[f] = unbiased variance over i (N - 1);
        mu_ln = mean_f mu_in[f];    var_ln = mean_f(var_in[f] + mu_in[f]^2) - mu_ln^2;
        (wm0, wm1) = softmax(mean_weight); (wv0, wv1) = softmax(var_weight);
        out = (a - (wm0 mu_in + wm1 mu_ln)) / sqrt(wv0 var_in + wv1 var_ln + eps)
              * weight[f] + bias[f].
    Computed in float32.

    Args:
        a: `[B, N, F]`, N >= 2.
        weight, bias: `[F]`.
        mean_weight, var_weight: `[2]` logits of the mixing weights.
        eps: 1e-5 (DMIN default).

    Returns:
        `[B, N, F]` float32.
    """
    a = a.astype(jnp.float32)
    mu_in = jnp.mean(a, axis=1, keepdims=True)
    var_in = jnp.var(a, axis=1, ddof=1, keepdims=True)
    mu_ln = jnp.mean(mu_in, axis=2, keepdims=True)
    var_ln = jnp.mean(var_in + mu_in**2, axis=2, keepdims=True) - mu_ln**2
    wm = jax.nn.softmax(mean_weight.astype(jnp.float32))
    wv = jax.nn.softmax(var_weight.astype(jnp.float32))
    mean = wm[0] * mu_in + wm[1] * mu_ln
    var = wv[0] * var_in + wv[1] * var_ln
    return (a - mean) / jnp.sqrt(var + eps) * weight + bias


class DMIN(nn.Module):
    """DMIN with its four parameters: `weight` [F] (ones), `bias` [F] (zeros),
    `mean_weight` [2] (ones), `var_weight` [2] (ones). No running statistics.

    Input `[B, N, F]`; output `[B, N, F]` float32 (see `dmin`).
    """
    eps: float = 1e-5

    @nn.compact
    def __call__(self, a: Array) -> Array:
        f = a.shape[-1]
        weight = self.param("weight", nn.initializers.ones, (f,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (f,), jnp.float32)
        mean_weight = self.param("mean_weight", nn.initializers.ones, (2,), jnp.float32)
        var_weight = self.param("var_weight", nn.initializers.ones, (2,), jnp.float32)
        return dmin(a, weight, bias, mean_weight, var_weight, self.eps)


class R3D18Features(nn.Module):
    """torchvision `r3d_18` without `fc`: stem, layer1-4, global average pool.

    Attributes:
        widths: channels of layer1..4 (64, 128, 256, 512); the stem has widths[0].
        dtype: activation dtype.
        remat_policy: what the BasicBlocks' backward pass recomputes
            (`layers.REMAT_POLICIES`, `layers.remat_module`).

    Input `[N, T, H, W, 3]` float; output `[N, widths[3]]`.
    """
    widths: Sequence[int] = (64, 128, 256, 512)
    dtype: Dtype = jnp.float32
    remat_policy: str = "none"

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        block_cls = layers.remat_module(layers.BasicBlock, self.remat_policy)
        x = nn.Conv(self.widths[0], (3, 7, 7),
                    strides=(1, 2, 2),
                    padding=((1, 1), (3, 3), (3, 3)),
                    use_bias=False,
                    dtype=self.dtype,
                    param_dtype=jnp.float32,
                    kernel_init=layers.kaiming_normal_fan_out,
                    # A 9-channel 2-D convolution per frame on XLA:CPU (4x faster
                    # than its 3-channel 3-D convolution; conv.frames_conv).
                    conv_general_dilated=conv_lib.frames_conv_general_dilated,
                    name="stem_conv")(x)
        x = nn.relu(layers.batch_norm(train, self.dtype, "stem_bn")(x))
        for k, (width, stride) in enumerate(zip(self.widths, (1, 2, 2, 2)), start=1):
            for j in range(2):
                s = stride if j == 0 else 1
                x = block_cls(width, (s, s, s), self.dtype, name=f"layer{k}_{j}")(x, train)
        return jnp.mean(x, axis=(1, 2, 3))


class M3DFEL(nn.Module):
    """M3DFEL with an AU head (AU-DFER).

    Attributes:
        num_classes: expression classes C.
        num_aus: AU head width (18).
        num_frames: T (16).
        instance_length: frames per instance (4); the bag has T // L instances.
        image_size: input side (112).
        widths: R3D-18 widths (64, 128, 256, 512).
        lstm_hidden: LSTM hidden size per direction (512); the MIL width is twice it.
        lstm_layers: 2.
        heads: MHSA heads (8); head width = 2 * lstm_hidden / heads (128).
        dtype: activation dtype; parameters float32, outputs float32;
            BatchNorm statistics, attention softmax and DMIN are float32.
        remat_policy: what the R3D-18 blocks' backward pass recomputes
            (`layers.REMAT_POLICIES`; `nn.remat`; same values and parameter
            paths, less memory).

    `__call__(clips, train)`: clips `[B, T, S, S, 3]` uint8 (or float in [0, 1]);
    returns `ModelOutput(logits [B, C] f32, au_logits [B, num_aus] f32,
    features [B, 2 * lstm_hidden] f32)`. Raises ValueError on any other shape.
    """
    num_classes: int = 7
    num_aus: int = 18
    num_frames: int = 16
    instance_length: int = 4
    image_size: int = 112
    widths: Sequence[int] = (64, 128, 256, 512)
    lstm_hidden: int = 512
    lstm_layers: int = 2
    heads: int = 8
    dtype: Dtype = jnp.float32
    remat_policy: str = "none"

    @nn.compact
    def __call__(self, clips: Array, train: bool) -> ModelOutput:
        layers.check_clips(clips, self.num_frames, self.image_size, "M3DFEL")
        b = clips.shape[0]
        bag = self.num_frames // self.instance_length
        x = make_bag(layers.to_float_clips(clips, self.dtype), self.instance_length)
        x = R3D18Features(self.widths, self.dtype, self.remat_policy, name="features")(x, train)
        x = x.reshape(b, bag, x.shape[-1])
        h = layers.BiLSTM(self.lstm_hidden, self.lstm_layers, self.dtype, name="lstm")(x)
        width = h.shape[-1]
        qkv = layers.torch_dense(3 * width, width, use_bias=False, dtype=self.dtype,
                                 name="to_qkv")(h)
        a = layers.multi_head_attention(*layers.split_qkv(qkv), heads=self.heads)
        g = h * nn.sigmoid(DMIN(name="norm")(a)).astype(h.dtype)
        # Conv1d(bag -> 1, k3, p1): the instances are the channels and the 1024
        # features the length, so channels-last input is [B, F, N].
        fan_in = bag * 3
        pooled = nn.Conv(1, (3,),
                         padding=((1, 1),),
                         dtype=self.dtype,
                         param_dtype=jnp.float32,
                         kernel_init=layers.torch_default_kernel_init,
                         bias_init=layers.torch_uniform_init(fan_in),
                         name="pwconv")(jnp.swapaxes(g, 1, 2))
        feat = pooled.reshape(b, width).astype(jnp.float32)
        logits = layers.torch_dense(self.num_classes, width, name="fc")(feat)
        au_logits = layers.torch_dense(self.num_aus, width, name="fc_au")(feat)
        return ModelOutput(logits=logits, au_logits=au_logits, features=feat)


def m3dfel(num_classes: int = 7, num_aus: int = 18, **overrides: Any) -> M3DFEL:
    """The full-size M3DFEL (16 x 112 x 112; 46,823,384 params with 7 classes)."""
    return M3DFEL(num_classes=num_classes, num_aus=num_aus, **overrides)


def m3dfel_tiny(num_classes: int = 7, num_aus: int = 18, **overrides: Any) -> M3DFEL:
    """A tiny M3DFEL for tests: 8 x 32 x 32 clips as 4 instances of 2 frames,
    widths (8,16,32,64), LSTM hidden 16, 2 heads; same code path."""
    cfg: dict[str, Any] = dict(num_frames=8,
                               instance_length=2,
                               image_size=32,
                               widths=(8, 16, 32, 64),
                               lstm_hidden=16,
                               heads=2)
    cfg.update(overrides)
    return M3DFEL(num_classes=num_classes, num_aus=num_aus, **cfg)
