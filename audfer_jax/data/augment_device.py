"""Clip augmentations of the three recipes in JAX, run on the device.

The jittable counterpart of `audfer_jax.data.augment` (the tf.data reference;
see its docstring for the recipes and their sources). With
`data_config.augment_device` (default True) the host only reads, decodes,
samples frames and, where the stored size differs, resizes them to the crop
source size (`host_frame_size`); everything random runs here, inside the
jitted train step, on the sharded batch:

    augment = make_device_augment(data_config)     # None: nothing to do
    clips = augment(key, batch["clips"])           # before mixup / model.apply

Design:

* One draw of every transform's parameters per clip, shared by all its
  frames (as the tf.data path); per-clip keys are `jax.random.split(key, B)`
  of the step key, so a clip's draw depends on (step key, position in the
  global batch) and not on the device count.
* Parameters are drawn by `sample_*` functions and applied by pure functions
  of fixed parameters, so every op can be checked against the tf.data op with
  the same parameters (tests/test_augment_device.py).
* Batch-wise: the crop, resize and flip are one pair of `[out, in]` weight
  matrices per clip (matmuls, the accelerator's fastest op), vmapped over
  clips; RandAugment is written on the whole batch (per-clip parameters
  `[B]`), every op computed for every clip and the clip's op selected (what
  `vmap` of a `lax.switch` would do), with the five geometric ops sharing
  one affine sampler (their matrices are selected, not their outputs).
* Planar inside: `augment_batch` runs RandAugment and the crop on
  `[B, T, C, H, W]` float32 clips and hands the model `[B, T, H, W, C]`
  uint8. XLA:TPU tiles an array's two minor axes by (8, 128), so a
  channel-last float copy `[..., W, 3]`, and the `[N, 3]` rows or `[N, 1]`
  indices of a flat gather or scatter, take ~40x their size in HBM: the
  channel-last RandAugment of MAE-DFER's recipe needed 5.2 GiB of
  temporaries per v5e chip at 6 clips (0.86 GiB per clip, more than the
  whole model's backward pass) and 35 s to compile. Planar, the affine
  sampler gathers along the last axis (`take_along_axis`) and, off CPU,
  equalize counts its histograms and applies its table by comparison
  (fused reductions, no index arrays); XLA:CPU keeps its flat scatter and
  gather, 80x faster there.
* Input and output are `uint8` (the batch contract of layout.md): the models
  normalise uint8 inside, `mixup.mixup_cutmix` takes uint8, and rounding to
  uint8 where the tf.data path rounds keeps the two paths equal to +-1.

dm-pix provides `adjust_hue` (tf.image semantics) and `rgb_to_grayscale`
(torchvision weights). Written here because dm-pix lacks them or differs:
TF's area and half-pixel bilinear resize of a crop, the affine sampler (dm-pix
`affine_transform` in constant mode fills a whole sample outside [0, n-1];
TF/PIL fill each of the four bilinear neighbours, which gives the soft border
the reference has), PIL's equalize and sharpness, and torchvision/PIL's
blend-based colour ops (dm-pix brightness is additive and its contrast uses a
per-channel mean).
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Optional

import dm_pix as pix
import jax
import jax.numpy as jnp

from audfer_jax.models import platform

Array = jax.Array

RECIPES = ("former_dfer", "m3dfel", "mae_dfer")
# ImageNet mean/std (timm's erasing noise) and the geometric fill of MAE-DFER
# (the mean in 0..255), as augment.py.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FILL = tuple(round(255 * m) for m in IMAGENET_MEAN)
NUM_RAND_OPS = 15          # timm _RAND_INCREASING_TRANSFORMS
_HIGHEST = jax.lax.Precision.HIGHEST


# ---------------------------------------------------------------------------
# Config glue.
# ---------------------------------------------------------------------------

def uses_device_augment(data_config) -> bool:
    """True when the config's random train augmentation runs on the device."""
    return bool(getattr(data_config, "augment_device", False)) and data_config.augment in RECIPES


def host_frame_size(data_config) -> int:
    """Side of the square frames the host hands over for device augmentation.

    `prepare_size` (the size `prepare` stored, so the host does no resize),
    else `image_size` (frames stored at another size are resized to it on the
    host, antialiased bilinear as the 'none' recipe).
    """
    return int(data_config.prepare_size or data_config.image_size)


def make_device_augment(data_config) -> Optional[Callable[[Array, Array], Array]]:
    """The train step's augmentation, or None when the host did it all.

    Returns:
        None when `augment_device` is off or `augment == 'none'`; else
        `fn(key, clips [B, T, S, S, 3] uint8) -> [B, T, image_size,
        image_size, 3] uint8`, pure and jittable.

    Raises:
        ValueError: an unknown `augment`.
    """
    kind = data_config.augment
    if kind not in RECIPES + ("none",):
        raise ValueError(f"data_config.augment {kind!r} not in {RECIPES + ('none',)}")
    if not uses_device_augment(data_config):
        return None
    return functools.partial(augment_batch, recipe=kind, out_size=int(data_config.image_size))


# ---------------------------------------------------------------------------
# Parameter draws (one per clip).
# ---------------------------------------------------------------------------

def sample_crop_box(key: Array, height: int, width: int, *, scale=(0.08, 1.0),
                    ratio=(3 / 4, 4 / 3), log_ratio: bool = False, swap: bool = True,
                    attempts: int = 10) -> Array:
    """Random-resized-crop window `[4] int32` (y, x, h, w), as `augment.crop_box`.

    Area U(scale) of the image, aspect w/h U(ratio) (log-uniform with
    `log_ratio`, torchvision), w and h swapped with p 0.5 with `swap`
    (Former-DFER); the first of `attempts` tries that fits, else the centre
    crop with the aspect clamped into `ratio` (torchvision's fallback).
    """
    k_area, k_aspect, k_swap, k_pos = jax.random.split(key, 4)
    area = jax.random.uniform(k_area, (attempts,), minval=scale[0], maxval=scale[1]) * height * width
    if log_ratio:
        aspect = jnp.exp(jax.random.uniform(k_aspect, (attempts,), minval=math.log(ratio[0]),
                                            maxval=math.log(ratio[1])))
    else:
        aspect = jax.random.uniform(k_aspect, (attempts,), minval=ratio[0], maxval=ratio[1])
    cw = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
    ch = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
    if swap:
        flip = jax.random.uniform(k_swap, (attempts,)) < 0.5
        cw, ch = jnp.where(flip, ch, cw), jnp.where(flip, cw, ch)
    ok = (cw > 0) & (ch > 0) & (cw <= width) & (ch <= height)
    first = jnp.argmax(ok)
    cw, ch = cw[first], ch[first]
    u = jax.random.uniform(k_pos, (2,))
    y = jnp.minimum(jnp.floor(u[0] * (height - ch + 1)).astype(jnp.int32), height - ch)
    x = jnp.minimum(jnp.floor(u[1] * (width - cw + 1)).astype(jnp.int32), width - cw)
    # Fallback (static: the image size is known at trace time).
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, width / ratio[0]
    elif in_ratio > ratio[1]:
        fw, fh = height * ratio[1], height
    else:
        fw, fh = width, height
    fw, fh = min(int(round(fw)), width), min(int(round(fh)), height)
    fallback = jnp.array([(height - fh) // 2, (width - fw) // 2, fh, fw], jnp.int32)
    return jnp.where(jnp.any(ok), jnp.stack([y, x, ch, cw]), fallback)


def sample_flip(key: Array) -> Array:
    """Horizontal flip with p 0.5: `[] bool`."""
    return jax.random.uniform(key) < 0.5


def sample_color_jitter(key: Array, *, brightness=0.4, contrast=0.4, saturation=0.4,
                        hue=0.4) -> dict:
    """torchvision ColorJitter draw (M3DFEL values, backbones.md section 2).

    Returns:
        `{"brightness", "contrast", "saturation": [] float32 factors
        U[1-v, 1+v], "hue": [] float32 shift U[-hue, hue] in turns,
        "order": [4] int32 permutation of (brightness, contrast, saturation,
        hue)}`.
    """
    kb, kc, ks, kh, ko = jax.random.split(key, 5)
    return {"brightness": jax.random.uniform(kb, minval=1 - brightness, maxval=1 + brightness),
            "contrast": jax.random.uniform(kc, minval=1 - contrast, maxval=1 + contrast),
            "saturation": jax.random.uniform(ks, minval=1 - saturation, maxval=1 + saturation),
            "hue": jax.random.uniform(kh, minval=-hue, maxval=hue),
            "order": jax.random.permutation(ko, 4).astype(jnp.int32)}


def sample_rand_augment(key: Array, *, num_layers: int = 4, magnitude: float = 7.0,
                        magnitude_std: float = 0.5, prob: float = 0.5) -> dict:
    """timm RandAugment "rand-m7-n4-mstd0.5-inc1" draw, as `augment.rand_augment`.

    Returns:
        `{"ops": [L] int32` in 0..14 (uniform, with replacement), `"apply": [L]
        bool` (p `prob`), `"levels": [L] float32` N(magnitude, std) clipped to
        [0, 10], `"signs": [L] float32` +-1 with p 0.5}`.
    """
    ko, ka, kl, ks = jax.random.split(key, 4)
    return {"ops": jax.random.randint(ko, (num_layers,), 0, NUM_RAND_OPS, jnp.int32),
            "apply": jax.random.uniform(ka, (num_layers,)) < prob,
            "levels": jnp.clip(magnitude + magnitude_std * jax.random.normal(kl, (num_layers,)),
                               0.0, 10.0),
            "signs": jnp.where(jax.random.uniform(ks, (num_layers,)) < 0.5, -1.0, 1.0)}


def sample_erasing(key: Array, height: int, width: int, *, prob: float = 0.25,
                   area=(0.02, 1 / 3), log_ratio=(math.log(0.3), math.log(1 / 0.3)),
                   attempts: int = 10) -> dict:
    """timm RandomErasing draw (p 0.25, pixel mode, count 1), as `augment.random_erasing`.

    Returns:
        `{"erase": [] bool, "box": [4] int32 (top, left, h, w), "noise_key"}`.
    """
    ka, kr, kp, kn, ke = jax.random.split(key, 5)
    target = jax.random.uniform(ka, (attempts,), minval=area[0], maxval=area[1]) * height * width
    aspect = jnp.exp(jax.random.uniform(kr, (attempts,), minval=log_ratio[0], maxval=log_ratio[1]))
    bh = jnp.round(jnp.sqrt(target * aspect)).astype(jnp.int32)
    bw = jnp.round(jnp.sqrt(target / aspect)).astype(jnp.int32)
    ok = (bw < width) & (bh < height)
    first = jnp.argmax(ok)
    bh, bw = bh[first], bw[first]
    u = jax.random.uniform(kp, (2,))
    top = jnp.minimum((u[0] * (height - bh + 1)).astype(jnp.int32), height - bh)
    left = jnp.minimum((u[1] * (width - bw + 1)).astype(jnp.int32), width - bw)
    return {"erase": jnp.any(ok) & (jax.random.uniform(ke) < prob),
            "box": jnp.stack([top, left, bh, bw]), "noise_key": kn}


# ---------------------------------------------------------------------------
# Ops with fixed parameters, on one clip `[T, H, W, 3]`.
# ---------------------------------------------------------------------------

def to_uint8(x: Array) -> Array:
    """float in [0, 255] -> uint8, rounded half up and saturated (augment.to_uint8)."""
    return jnp.clip(jnp.floor(x + 0.5), 0, 255).astype(jnp.uint8)


def _bilinear_weights(in_size: int, out_size: int, start, length) -> Array:
    """`[out, in]` TF half-pixel bilinear (no antialias) of the crop [start, start+length)."""
    scale = length.astype(jnp.float32) / out_size
    pos = (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * scale - 0.5
    floor = jnp.floor(pos)
    lerp = pos - floor
    lower = jnp.maximum(floor.astype(jnp.int32), 0)
    upper = jnp.minimum(jnp.ceil(pos).astype(jnp.int32), length - 1)
    j = jnp.arange(in_size)[None, :] - start
    return ((1.0 - lerp)[:, None] * (j == lower[:, None])
            + lerp[:, None] * (j == upper[:, None]))


def _area_weights(in_size: int, out_size: int, start, length) -> Array:
    """`[out, in]` TF area resize (ResizeArea): box overlap / scale."""
    scale = length.astype(jnp.float32) / out_size
    lo = jnp.arange(out_size, dtype=jnp.float32)[:, None] * scale
    hi = lo + scale
    j = (jnp.arange(in_size) - start).astype(jnp.float32)[None, :]
    overlap = jnp.clip(jnp.minimum(j + 1.0, hi) - jnp.maximum(j, lo), 0.0, None)
    overlap = jnp.where((j >= 0) & (j < length.astype(jnp.float32)), overlap, 0.0)
    return overlap / scale


def crop_resize_weights(in_size: int, out_size: int, start, length, shrink) -> Array:
    """`[out_size, in_size] float32` matrix of a crop [start, start+length) resized to out_size.

    `shrink` (traced bool) picks TF's area filter, else half-pixel bilinear:
    `augment.resize(..., fast_shrink=True)`, which uses the area filter for
    both axes when either exceeds the output.
    """
    start = jnp.asarray(start, jnp.int32)
    length = jnp.asarray(length, jnp.int32)
    return jnp.where(shrink, _area_weights(in_size, out_size, start, length),
                     _bilinear_weights(in_size, out_size, start, length))


def crop_resize(x: Array, box: Array, out_size: int, flip=False) -> Array:
    """Crop `box` (y, x, h, w) of every frame, resize to out_size, maybe flip.

    Args:
        x: `[T, H, W, C]` clip, uint8 or float in [0, 255].
        box: `[4] int32`.
        out_size: output side.
        flip: `[] bool`, mirror the output horizontally (reversed columns of
            the width matrix; the tf.data path flips before or after the
            resize, the same up to float rounding).

    Returns:
        `[T, out_size, out_size, C] float32` in [0, 255].
    """
    return _crop_resize_planar(_planar(x).astype(jnp.float32), box, out_size, flip)


def _crop_resize_planar(x: Array, box: Array, out_size: int, flip=False) -> Array:
    """`crop_resize` of a planar `[T, C, H, W] float32` clip -> `[T, out, out, C] float32`.

    Rows, then columns; the second product puts the channels last for the
    model (on XLA:CPU as fast as the channel-last form, and the same bits).
    """
    shrink = (box[2] > out_size) | (box[3] > out_size)
    wy = crop_resize_weights(x.shape[2], out_size, box[0], box[2], shrink)
    wx = crop_resize_weights(x.shape[3], out_size, box[1], box[3], shrink)
    wx = jnp.where(flip, wx[::-1], wx)
    y = jnp.einsum("oh,tchw->tcow", wy, x, precision=_HIGHEST)
    return jnp.einsum("pw,tcow->topc", wx, y, precision=_HIGHEST)


def _gray(x: Array, channel_axis: int = -1) -> Array:
    return pix.rgb_to_grayscale(x, keep_dims=True, channel_axis=channel_axis)


def _blend(a: Array, b: Array, factor) -> Array:
    """factor*a + (1-factor)*b, clipped to [0, 255] (PIL ImageEnhance / torchvision)."""
    return jnp.clip(b + factor * (a - b), 0.0, 255.0)


def _adjust_hue(x: Array, delta) -> Array:
    return jnp.clip(pix.adjust_hue(x / 255.0, delta) * 255.0, 0.0, 255.0)


def color_jitter(x: Array, params: dict) -> Array:
    """torchvision ColorJitter of a `[T, H, W, 3] float32` clip in [0, 255] (augment.color_jitter).

    `params` from `sample_color_jitter`; the four ops run in `params["order"]`.
    """
    ops = [
        lambda y: _blend(y, jnp.zeros_like(y), params["brightness"]),
        lambda y: _blend(y, jnp.mean(_gray(y), axis=(1, 2, 3), keepdims=True),
                         params["contrast"]),
        lambda y: _blend(y, _gray(y), params["saturation"]),
        lambda y: _adjust_hue(y, params["hue"]),
    ]
    for k in range(4):
        x = jax.lax.switch(params["order"][k], ops, x)
    return x


# RandAugment ---------------------------------------------------------------
#
# Written batch-wise (`[B, ...]`, per-clip parameters `[B]`) rather than
# vmapped: XLA:CPU runs a vmapped scatter or gather 9-15x slower than one
# flat scatter/gather over the whole batch (equalize's histograms). Every op
# is computed for every clip and the clip's op selected, which is what `vmap`
# of a `lax.switch` would do anyway. The ops work on planar clips
# `[B, T, C, H, W]` (module docstring); the channel-last entry points move
# the channels around them.

def _planar(x: Array) -> Array:
    """`[..., H, W, C]` -> `[..., C, H, W]`."""
    return jnp.moveaxis(x, -1, -3)


def _channels_last(x: Array) -> Array:
    """`[..., C, H, W]` -> `[..., H, W, C]`."""
    return jnp.moveaxis(x, -3, -1)


def _bc(v: Array) -> Array:
    """`[B]` -> `[B, 1, 1, 1, 1]` for broadcasting over clips."""
    return jnp.asarray(v)[:, None, None, None, None]


def affine_sample(x: Array, transform: Array, fill=FILL) -> Array:
    """Bilinear output->input affine warp of every frame, colour fill outside.

    Args:
        x: `[B, T, H, W, C] float32`.
        transform: `[B, 6]` (a0 a1 a2 b0 b1 b2) per clip: output pixel (col u,
            row v) reads input (a0 u + a1 v + a2, b0 u + b1 v + b2), pixel
            centres at integers (TF ImageProjectiveTransformV3).
        fill: colour outside the image.

    Returns:
        `[B, T, H, W, C] float32`. Each of the four bilinear neighbours outside
        the image counts as 0 and the missing weight is filled with `fill`
        (TF's constant mode with the mask channel of `augment._affine`).
    """
    return _channels_last(_affine_sample_planar(_planar(x), transform, fill))


def _affine_sample_planar(x: Array, transform: Array, fill=FILL) -> Array:
    """`affine_sample` of planar clips `[B, T, C, H, W] float32`."""
    b, t, c, h, w = x.shape
    v, u = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                        indexing="ij")
    a = transform[:, :, None, None]
    sx = (a[:, 0] * u + a[:, 1] * v + a[:, 2]).reshape(b, 1, h * w)
    sy = (a[:, 3] * u + a[:, 4] * v + a[:, 5]).reshape(b, 1, h * w)
    x0, y0 = jnp.floor(sx), jnp.floor(sy)
    # Every frame and channel of a clip reads the same pixels: a gather
    # along the last axis (the clip's indices broadcast over T x C).
    planes = x.reshape(b, t * c, h * w)
    out = jnp.zeros((b, t * c, h * w), jnp.float32)
    mask = jnp.zeros((b, 1, h * w), jnp.float32)
    for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
        yy, xx = y0 + dy, x0 + dx
        wgt = (1.0 - jnp.abs(sy - yy)) * (1.0 - jnp.abs(sx - xx))
        valid = (yy >= 0) & (yy <= h - 1) & (xx >= 0) & (xx <= w - 1)
        wgt = jnp.where(valid, wgt, 0.0)
        idx = (jnp.clip(yy, 0, h - 1) * w + jnp.clip(xx, 0, w - 1)).astype(jnp.int32)
        out = out + wgt * jnp.take_along_axis(planes, jnp.broadcast_to(idx, out.shape), axis=2)
        mask = mask + wgt
    out = out.reshape(b, t, c, h * w)
    fill = jnp.asarray(fill, jnp.float32)[:, None]
    out = out + (1.0 - mask)[:, :, None] * fill
    return out.reshape(b, t, c, h, w)


def _rand_affine(op, level, sign, h: int, w: int) -> Array:
    """`[B, 6]` transforms of the geometric ops (3 rotate, 11-14 shear/translate), as augment.py.

    `op`, `level`, `sign`: `[B]`; other ops get the identity.
    """
    signed = lambda m: level / 10.0 * m * sign  # noqa: E731
    theta = signed(30.0) * math.pi / 180.0
    c, s = jnp.cos(theta), jnp.sin(theta)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    one, zero = jnp.ones_like(level), jnp.zeros_like(level)
    mats = {
        3: [c, s, cx - c * cx - s * cy, -s, c, cy + s * cx - c * cy],
        11: [one, signed(0.3), zero, zero, one, zero],
        12: [one, zero, zero, signed(0.3), one, zero],
        13: [one, zero, signed(0.45) * w, zero, one, zero],
        14: [one, zero, zero, zero, one, signed(0.45) * h],
    }
    out = jnp.stack([one, zero, zero, zero, one, zero], axis=-1)
    for k, m in mats.items():
        out = jnp.where((op == k)[:, None], jnp.stack(m, axis=-1), out)
    return out


def _auto_contrast(x):
    lo = jnp.min(x, axis=(3, 4), keepdims=True)
    hi = jnp.max(x, axis=(3, 4), keepdims=True)
    scale = jnp.where(hi > lo, 255.0 / jnp.maximum(hi - lo, 1e-6), 1.0)
    return jnp.where(hi > lo, (x - lo) * scale, x)


def _equalize(x):
    """PIL ImageOps.equalize of every frame and channel of planar `[B, T, C, H, W]`.

    Per channel: histogram of the rounded values, step = (pixels - count of
    the highest value present) // 255, lut[v] = (cumsum before v + step // 2)
    // step clipped to 255; unchanged when step is 0 (PIL's algorithm, as
    augment._equalize_channel).
    """
    b, t, c, h, w = x.shape
    xi = jnp.round(x).astype(jnp.int32)
    values = jnp.arange(256, dtype=jnp.int32)
    cpu = platform.is_cpu()
    platform.note("scatter_equalize" if cpu else "compare_equalize")
    if cpu:
        # One flat scatter-add for all B*T*C histograms (7 vs 66 ms per
        # 16x192x192 clip on XLA:CPU against a vmapped bincount per channel).
        ids = jnp.arange(b * t * c).reshape(b, t, c, 1, 1) * 256 + xi
        hist = jnp.zeros((b * t * c * 256,), jnp.int32).at[ids.reshape(-1)].add(1)
        hist = hist.reshape(b, t, c, 256)
    else:
        # Counted by comparison: one fused reduction, no index arrays.
        hist = jnp.sum((xi[..., None, :, :] == values[:, None, None]).astype(jnp.int32),
                       axis=(-2, -1))
    top = jnp.max(xi, axis=(3, 4))                                # [B, T, C]
    last = jnp.take_along_axis(hist, top[..., None], axis=3)[..., 0]
    step = (h * w - last) // 255
    lut = ((jnp.cumsum(hist, axis=3) - hist + (step // 2)[..., None])
           // jnp.maximum(step, 1)[..., None])
    lut = jnp.where((step > 0)[..., None], jnp.clip(lut, 0, 255), values)
    if cpu:
        return jnp.take(lut.reshape(-1), ids).astype(jnp.float32)
    table = lut[:, :, :, None, None, :]
    return jnp.sum(jnp.where(xi[..., None] == values, table, 0), axis=-1).astype(jnp.float32)


def _sharpness(x, factor):
    """PIL ImageEnhance.Sharpness of planar clips: blend with the 3x3 SMOOTH filter, border unfiltered."""
    h, w = x.shape[3], x.shape[4]
    acc = 4.0 * x[..., 1:-1, 1:-1]
    for dy in range(3):
        for dx in range(3):
            acc = acc + x[..., dy:h - 2 + dy, dx:w - 2 + dx]
    smooth = jnp.pad(jnp.round(acc / 13.0), ((0, 0), (0, 0), (0, 0), (1, 1), (1, 1)))
    # A mask, not `.at[].set` (a scatter, 7x slower on XLA:CPU).
    inner = jnp.zeros((h, w), bool).at[1:-1, 1:-1].set(True)
    return _blend(x, jnp.where(inner, smooth, x), factor)


# Branches with gathers, scatters or reductions: evaluated only when drawn.
_COSTLY = (0, 1, 3, 10)


def rand_augment_ops(x: Array, op, level, sign) -> Array:
    """One RandAugment op per clip, timm's increasing set, on `[B, T, H, W, 3] float32`.

    Args:
        x: clips in [0, 255].
        op: `[B] int` in 0..14 in the order of `augment._rand_ops`
            (auto_contrast, equalize, invert, rotate, posterize, solarize,
            solarize_add, color, contrast, brightness, sharpness, shear_x,
            shear_y, translate_x, translate_y); 15 or more: identity.
        level: `[B]` magnitudes in [0, 10]; sign: `[B]` +-1 (signed ops).

    Returns:
        `[B, T, H, W, 3] float32`, not clipped (the caller clips, as
        augment.rand_augment).
    """
    return _channels_last(_rand_augment_ops_planar(_planar(x), op, level, sign))


def _rand_augment_ops_planar(x: Array, op, level, sign) -> Array:
    """`rand_augment_ops` of planar clips `[B, T, 3, H, W] float32`."""
    h, w = x.shape[3], x.shape[4]
    op = jnp.asarray(op, jnp.int32)
    level = jnp.asarray(level, jnp.float32)
    sign = jnp.asarray(sign, jnp.float32)
    lv, enhance = _bc(level), _bc(1.0 + level / 10.0 * 0.9 * sign)
    gray = functools.partial(_gray, channel_axis=2)

    def posterize(x):
        shift = 8 - (4 - (lv / 10.0 * 4).astype(jnp.int32))
        xi = jnp.round(x).astype(jnp.int32)
        return ((xi >> shift) << shift).astype(jnp.float32)

    def contrast(x):
        return _blend(x, jnp.round(jnp.mean(gray(x), axis=(2, 3, 4), keepdims=True)), enhance)

    branches = {
        0: _auto_contrast,
        # A fresh function per trace: cond caches its branches by function,
        # and equalize's form depends on the platform traced for.
        1: lambda x: _equalize(x),  # pylint: disable=unnecessary-lambda
        2: lambda x: 255.0 - x,
        # One sampler for the five affine ops, with the clip's matrix.
        3: lambda x: _affine_sample_planar(x, _rand_affine(op, level, sign, h, w)),
        4: posterize,
        5: lambda x: jnp.where(x >= 256.0 - jnp.floor(lv / 10.0 * 256.0), 255.0 - x, x),
        6: lambda x: jnp.where(x < 128.0, jnp.minimum(x + jnp.floor(lv / 10.0 * 110.0), 255.0),
                               x),
        7: lambda x: _blend(x, gray(x), enhance),                # ColorIncreasing
        8: contrast,
        9: lambda x: _blend(x, jnp.zeros_like(x), enhance),      # BrightnessIncreasing
        10: lambda x: _sharpness(x, enhance),
    }
    branch = jnp.where((op >= 11) & (op < NUM_RAND_OPS), 3, op)
    out = x
    for k, fn in branches.items():
        if k in _COSTLY:
            # Skipped when no clip of the batch draws it (p 1/30 per clip and
            # layer for equalize): saves most of the cost at small batches.
            y = jax.lax.cond(jnp.any(branch == k), fn, lambda x: x, x)
        else:
            y = fn(x)
        out = jnp.where(_bc(branch == k), y, out)
    return out


def rand_augment_op(x: Array, op, level, sign) -> Array:
    """`rand_augment_ops` on one clip `[T, H, W, 3] float32` with scalar parameters."""
    one = lambda v: jnp.reshape(jnp.asarray(v), (1,))  # noqa: E731
    return rand_augment_ops(x[None], one(op), one(level), one(sign))[0]


def rand_augment_batch(x: Array, params: dict) -> Array:
    """RandAugment of `[B, T, H, W, 3] float32` clips, params `[B, L]` (vmapped `sample_rand_augment`)."""
    return _channels_last(_rand_augment_layers(_planar(x), params))


def _rand_augment_layers(x: Array, params: dict) -> Array:
    """`rand_augment_batch` of planar clips `[B, T, 3, H, W] float32`."""
    def layer(x, p):
        op = jnp.where(p["apply"], p["ops"], NUM_RAND_OPS)
        return jnp.clip(_rand_augment_ops_planar(x, op, p["levels"], p["signs"]), 0.0, 255.0), None

    # A scan over the layers: one layer is compiled, not four (compile time).
    layers = {k: jnp.swapaxes(params[k], 0, 1) for k in ("ops", "apply", "levels", "signs")}
    return jax.lax.scan(layer, x, layers)[0]


def rand_augment(x: Array, params: dict) -> Array:
    """RandAugment of one `[T, H, W, 3] float32` clip in [0, 255], params of `sample_rand_augment`."""
    return rand_augment_batch(x[None], jax.tree_util.tree_map(lambda v: v[None], params))[0]


def random_erasing(x: Array, params: dict) -> Array:
    """Erases `params["box"]` of every frame of a `[T, H, W, 3] uint8` clip with noise.

    Pixel mode: per-pixel, per-frame N(0, 1) in normalised space, i.e.
    mean*255 + std*255*z, rounded and saturated to uint8 (timm, as
    augment.random_erasing). Nothing happens unless `params["erase"]`.
    """
    t, h, w, c = x.shape
    top, left, bh, bw = params["box"]
    noise = jax.random.normal(params["noise_key"], (t, h, w, c))
    noise = to_uint8(jnp.asarray(IMAGENET_MEAN) * 255.0 + noise * jnp.asarray(IMAGENET_STD) * 255.0)
    rows = jnp.arange(h)[:, None]
    cols = jnp.arange(w)[None, :]
    inside = (rows >= top) & (rows < top + bh) & (cols >= left) & (cols < left + bw)
    return jnp.where((inside & params["erase"])[None, :, :, None], noise, x)


# ---------------------------------------------------------------------------
# Recipes.
# ---------------------------------------------------------------------------

def sample_clip_params(key: Array, recipe: str, height: int, width: int, out_size: int) -> dict:
    """Every random parameter of one clip under `recipe` (keys as in `augment_clip`)."""
    k_crop, k_flip, k_extra, k_erase = jax.random.split(key, 4)
    if recipe == "mae_dfer":
        return {"rand_augment": sample_rand_augment(k_extra),
                "box": sample_crop_box(k_crop, height, width, log_ratio=True, swap=False),
                "flip": sample_flip(k_flip),
                "erasing": sample_erasing(k_erase, out_size, out_size)}
    params = {"box": sample_crop_box(k_crop, height, width, log_ratio=False, swap=True),
              "flip": sample_flip(k_flip)}
    if recipe == "m3dfel":
        params["color_jitter"] = sample_color_jitter(k_extra)
    return params


def apply_clip_params(clip: Array, params: dict, recipe: str, out_size: int) -> Array:
    """Applies a recipe with fixed parameters: `[T, H, W, 3] uint8` -> `[T, out, out, 3] uint8`."""
    if recipe == "mae_dfer":
        x = rand_augment(clip.astype(jnp.float32), params["rand_augment"])
        x = crop_resize(x, params["box"], out_size, params["flip"])
        return random_erasing(to_uint8(x), params["erasing"])
    x = crop_resize(clip, params["box"], out_size, params["flip"])
    if recipe == "m3dfel":
        x = color_jitter(x, params["color_jitter"])
    return to_uint8(x)


def augment_clip(key: Array, clip: Array, recipe: str, *, out_size: int) -> Array:
    """One clip's random train augmentation, one draw for all its frames.

    Args:
        key: the clip's PRNG key.
        clip: `[T, H, W, 3] uint8` at the crop source size (`host_frame_size`).
        recipe: 'former_dfer' (crop, flip), 'm3dfel' (crop, flip, colour
            jitter) or 'mae_dfer' (RandAugment m7 n4, resized crop, flip,
            random erasing); see augment.py for the sources.
        out_size: model input side.

    Returns:
        `[T, out_size, out_size, 3] uint8`.

    Raises:
        ValueError: unknown recipe or a clip that is not `[T, H, W, 3] uint8`.
    """
    if recipe not in RECIPES:
        raise ValueError(f"recipe {recipe!r} not in {RECIPES}")
    if clip.ndim != 4 or clip.shape[-1] != 3 or clip.dtype != jnp.uint8:
        raise ValueError(f"clip must be [T, H, W, 3] uint8, got {clip.shape} {clip.dtype}")
    params = sample_clip_params(key, recipe, clip.shape[1], clip.shape[2], out_size)
    return apply_clip_params(clip, params, recipe, out_size)


def augment_batch(key: Array, clips: Array, recipe: str, *, out_size: int) -> Array:
    """Random train augmentation of a batch, per-clip keys `jax.random.split(key, B)`.

    Args:
        key: the step's PRNG key (e.g. `fold_in(state.rng, state.step)`).
        clips: `[B, T, H, W, 3] uint8` (may be sharded over B).
        recipe, out_size: see `augment_clip`.

    Returns:
        `[B, T, out_size, out_size, 3] uint8`.

    Raises:
        ValueError: unknown recipe or clips not `[B, T, H, W, 3] uint8`.
    """
    if clips.ndim != 5 or clips.shape[-1] != 3 or clips.dtype != jnp.uint8:
        raise ValueError(f"clips must be [B, T, H, W, 3] uint8, got {clips.shape} {clips.dtype}")
    if recipe not in RECIPES:
        raise ValueError(f"recipe {recipe!r} not in {RECIPES}")
    _, _, h, w, _ = clips.shape
    keys = jax.random.split(key, clips.shape[0])
    params = jax.vmap(lambda k: sample_clip_params(k, recipe, h, w, out_size))(keys)
    if recipe != "mae_dfer":
        return jax.vmap(lambda c, p: apply_clip_params(c, p, recipe, out_size))(clips, params)
    # As apply_clip_params, with RandAugment batch-wise and planar (module
    # docstring): channels moved while the clips are still uint8.
    x = _rand_augment_layers(_planar(clips).astype(jnp.float32), params["rand_augment"])
    x = jax.vmap(lambda x, p: to_uint8(_crop_resize_planar(x, p["box"], out_size, p["flip"])))(
            x, params)
    erase = jax.vmap(random_erasing)
    # The noise is drawn only when some clip of the batch is erased (p 0.25 each).
    return jax.lax.cond(jnp.any(params["erasing"]["erase"]),
                        lambda x: erase(x, params["erasing"]), lambda x: x, x)
