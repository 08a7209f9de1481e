"""Clip augmentations of the three recipes, in TensorFlow, one draw per clip.

Every random choice is made once per clip and applied to all its frames
(../shared/spec/backbones.md, "Input" of each model). All randomness comes
from stateless ops keyed by a `[2] int64` seed, so a clip's augmentation is a
function of (seed, epoch, clip index) and runs are exactly reproducible.

* Former-DFER (`dataloader/video_transform.py` GroupRandomSizedCrop): area
  U(0.08, 1), aspect U(3/4, 4/3) with w and h swapped with p 0.5, 10 tries;
  bilinear resize (crops larger than the output are shrunk with an area
  filter, see `resize`); horizontal flip p 0.5.
* M3DFEL: the same crop and flip, then colour jitter (brightness, contrast,
  saturation factors U[0.6, 1.4], hue U[-0.4, 0.4], random order; torchvision
  ColorJitter semantics).
* MAE-DFER (`kinetics.py`, timm `rand_augment_transform`): RandAugment
  rand-m7-n4-mstd0.5-inc1 with the same ops for all frames, then a
  torchvision-style random resized crop (scale 0.08-1, log-uniform ratio
  3/4-4/3), flip p 0.5, random erasing p 0.25 (pixel mode, one box through all
  frames).

RandAugment is a compact hand-written version of timm's "increasing" op set
(all 15 ops, timm's magnitude-to-argument formulas, p 0.5 per op, magnitude
N(7, 0.5) clipped to [0, 10]); no installable implementation works on tf.image
without pulling a pinned TensorFlow. Differences to timm: geometric ops use
bilinear instead of bicubic interpolation, and the fill of geometric ops is
the ImageNet mean as MAE-DFER passes it (124, 116, 104).

Both crop samplers fall back to the whole image (torchvision's fallback,
centre crop with the aspect clamped to [3/4, 4/3]) after 10 failed tries;
Former-DFER's fallback (resize the short side, random crop) coincides on the
square face crops of all three datasets.
"""

from __future__ import annotations

import math

import tensorflow as tf

# ImageNet mean/std (MAE-DFER normalisation; timm's fill and erasing noise).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision rgb_to_grayscale weights (ColorJitter); PIL "L" uses the same.
_GRAY = (0.2989, 0.587, 0.114)


def _uniform(seed, shape=(), minval=0.0, maxval=1.0, dtype=tf.float32):
    return tf.random.stateless_uniform(shape, seed, minval, maxval, dtype=dtype)


def crop_box(seed: tf.Tensor, height: tf.Tensor, width: tf.Tensor, *,
             scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), log_ratio: bool = False,
             swap: bool = True, attempts: int = 10) -> tf.Tensor:
    """Random-resized-crop window, `[4] int32` (y, x, h, w).

    Args:
        seed: `[2]` stateless seed.
        height, width: image size (int scalars).
        scale: range of the crop area as a fraction of the image area.
        ratio: range of the aspect w/h.
        log_ratio: draw the aspect log-uniformly (torchvision) instead of
            uniformly (Former-DFER).
        swap: swap w and h with p 0.5 (Former-DFER).
        attempts: tries before the fallback.
    """
    s = tf.random.experimental.stateless_split(seed, 5)
    h_f = tf.cast(height, tf.float32)
    w_f = tf.cast(width, tf.float32)
    area = _uniform(s[0], [attempts], scale[0], scale[1]) * h_f * w_f
    if log_ratio:
        aspect = tf.exp(_uniform(s[1], [attempts], math.log(ratio[0]), math.log(ratio[1])))
    else:
        aspect = _uniform(s[1], [attempts], ratio[0], ratio[1])
    cw = tf.cast(tf.round(tf.sqrt(area * aspect)), tf.int32)
    ch = tf.cast(tf.round(tf.sqrt(area / aspect)), tf.int32)
    if swap:
        flip = _uniform(s[2], [attempts]) < 0.5
        cw, ch = tf.where(flip, ch, cw), tf.where(flip, cw, ch)
    ok = (cw > 0) & (ch > 0) & (cw <= width) & (ch <= height)
    first = tf.argmax(tf.cast(ok, tf.int32))
    found = tf.reduce_any(ok)
    cw, ch = cw[first], ch[first]
    u = _uniform(s[3], [2])
    y = tf.cast(tf.floor(u[0] * tf.cast(height - ch + 1, tf.float32)), tf.int32)
    x = tf.cast(tf.floor(u[1] * tf.cast(width - cw + 1, tf.float32)), tf.int32)
    y = tf.minimum(y, height - ch)
    x = tf.minimum(x, width - cw)
    # Fallback: centre crop with the aspect clamped into `ratio`.
    in_ratio = w_f / h_f
    fw = tf.where(in_ratio < ratio[0], w_f,
                  tf.where(in_ratio > ratio[1], h_f * ratio[1], w_f))
    fh = tf.where(in_ratio < ratio[0], w_f / ratio[0],
                  tf.where(in_ratio > ratio[1], h_f, h_f))
    fw = tf.minimum(tf.cast(tf.round(fw), tf.int32), width)
    fh = tf.minimum(tf.cast(tf.round(fh), tf.int32), height)
    fy, fx = (height - fh) // 2, (width - fw) // 2
    return tf.where(found, tf.stack([y, x, ch, cw]), tf.stack([fy, fx, fh, fw]))


def resize(frames: tf.Tensor, size: int, *, fast_shrink: bool = False) -> tf.Tensor:
    """Resize of `[T, H, W, 3]` to `[T, size, size, 3] float32` in [0, 255].

    Enlarging: plain bilinear (half-pixel centres). Shrinking: antialiased
    bilinear, i.e. a triangle filter widened by the scale factor, as PIL's
    bilinear resize the references use; with `fast_shrink`, an area (box)
    filter instead, which is also antialiased but 3x cheaper (7.5 vs 2.5 ms
    for 16 frames 180 -> 112 here) and is used for training crops, where the
    filter difference is far below the augmentation's own variation. Frames
    already at the size pass through.
    """
    x = tf.cast(frames, tf.float32)
    h, w = tf.shape(x)[1], tf.shape(x)[2]

    def shrink():
        if fast_shrink:
            return tf.image.resize(x, [size, size], method="area")
        return tf.image.resize(x, [size, size], method="bilinear", antialias=True)

    def enlarge():
        return tf.image.resize(x, [size, size], method="bilinear")

    def keep():
        return tf.ensure_shape(x, [None, size, size, None])

    return tf.cond((h == size) & (w == size), keep,
                   lambda: tf.cond((h > size) | (w > size), shrink, enlarge))


def to_uint8(x: tf.Tensor) -> tf.Tensor:
    """float in [0, 255] -> uint8, rounded (half up) and saturated."""
    return tf.saturate_cast(x + 0.5, tf.uint8)


def maybe_flip(x: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Horizontal flip of a whole `[T, H, W, C]` clip with p 0.5."""
    return tf.cond(_uniform(seed) < 0.5, lambda: tf.reverse(x, axis=[2]), lambda: x)


def _gray(x: tf.Tensor) -> tf.Tensor:
    return tf.reduce_sum(x * tf.constant(_GRAY, x.dtype), axis=-1, keepdims=True)


def _blend(a: tf.Tensor, b: tf.Tensor, factor) -> tf.Tensor:
    """factor*a + (1-factor)*b, clipped to [0, 255] (PIL ImageEnhance / torchvision)."""
    return tf.clip_by_value(b + factor * (a - b), 0.0, 255.0)


def color_jitter(x: tf.Tensor, seed: tf.Tensor, *, brightness=0.4, contrast=0.4,
                 saturation=0.4, hue=0.4) -> tf.Tensor:
    """torchvision ColorJitter on a `[T, H, W, 3] float32` clip in [0, 255].

    One draw per clip: factors U[1-b, 1+b] etc., hue shift U[-hue, hue] (in
    turns of the hue circle), the four ops in a random order (M3DFEL values
    b = c = s = h = 0.4, backbones.md section 2).
    """
    s = tf.random.experimental.stateless_split(seed, 5)
    fb = _uniform(s[0], (), 1 - brightness, 1 + brightness)
    fc = _uniform(s[1], (), 1 - contrast, 1 + contrast)
    fs = _uniform(s[2], (), 1 - saturation, 1 + saturation)
    fh = _uniform(s[3], (), -hue, hue)
    order = tf.argsort(_uniform(s[4], [4]))
    ops = [
        lambda y: _blend(y, tf.zeros_like(y), fb),
        lambda y: _blend(y, tf.reduce_mean(_gray(y), axis=[1, 2, 3], keepdims=True), fc),
        lambda y: _blend(y, _gray(y), fs),
        lambda y: tf.clip_by_value(tf.image.adjust_hue(y / 255.0, fh) * 255.0, 0.0, 255.0),
    ]
    for k in range(4):
        x = tf.switch_case(order[k], [lambda f=f: f(x) for f in ops])
    return x


# --------------------------------------------------------------------------
# RandAugment (timm "rand-m7-n4-mstd0.5-inc1"), same ops for all frames.
# --------------------------------------------------------------------------

_FILL = tuple(round(255 * m) for m in IMAGENET_MEAN)


def _affine(x: tf.Tensor, transform: tf.Tensor) -> tf.Tensor:
    """Output->input affine map `[6]` (a0 a1 a2 b0 b1 b2) with a colour fill."""
    shape = tf.shape(x)
    ones = tf.ones(tf.concat([shape[:3], [1]], 0), x.dtype)
    t = tf.concat([tf.cast(transform, tf.float32), tf.zeros([2])], 0)[None]
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.concat([x, ones], -1), transforms=t, output_shape=shape[1:3],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")
    rgb, mask = out[..., :3], out[..., 3:]
    return rgb + (1.0 - mask) * tf.constant(_FILL, tf.float32)


def _signed(level, maximum, sign):
    return level / 10.0 * maximum * sign


def _auto_contrast(x):
    lo = tf.reduce_min(x, axis=[1, 2], keepdims=True)
    hi = tf.reduce_max(x, axis=[1, 2], keepdims=True)
    scale = tf.where(hi > lo, 255.0 / tf.maximum(hi - lo, 1e-6), 1.0)
    return tf.where(hi > lo, (x - lo) * scale, x)


def _equalize_channel(c):
    """PIL ImageOps.equalize of one `[H, W]` channel (values 0..255)."""
    c = tf.cast(c, tf.int32)
    hist = tf.math.bincount(tf.reshape(c, [-1]), minlength=256, maxlength=256)
    nonzero = tf.boolean_mask(hist, hist > 0)
    step = (tf.reduce_sum(nonzero) - nonzero[-1]) // 255

    def apply():
        lut = (tf.cumsum(hist) - hist + step // 2) // tf.maximum(step, 1)
        lut = tf.clip_by_value(lut, 0, 255)
        return tf.cast(tf.gather(lut, c), tf.float32)

    return tf.cond(step > 0, apply, lambda: tf.cast(c, tf.float32))


def _equalize(x):
    xi = tf.round(x)
    flat = tf.reshape(tf.transpose(xi, [0, 3, 1, 2]), [-1, tf.shape(x)[1], tf.shape(x)[2]])
    eq = tf.map_fn(_equalize_channel, flat, fn_output_signature=tf.float32)
    eq = tf.reshape(eq, [tf.shape(x)[0], 3, tf.shape(x)[1], tf.shape(x)[2]])
    return tf.transpose(eq, [0, 2, 3, 1])


def _sharpness(x, factor):
    kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    smooth = tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], "VALID")
    # PIL leaves the one-pixel border unfiltered.
    smooth = tf.pad(smooth, [[0, 0], [1, 1], [1, 1], [0, 0]])
    h, w = tf.shape(x)[1], tf.shape(x)[2]
    inner = tf.pad(tf.ones([h - 2, w - 2], tf.bool), [[1, 1], [1, 1]])[None, :, :, None]
    degenerate = tf.where(inner, tf.round(smooth), x)
    return _blend(x, degenerate, factor)


def _rand_ops(x, level, sign):
    """The 15 ops of timm's _RAND_INCREASING_TRANSFORMS, as switch branches."""
    h = tf.cast(tf.shape(x)[1], tf.float32)
    w = tf.cast(tf.shape(x)[2], tf.float32)
    enhance = 1.0 + _signed(level, 0.9, sign)

    def rotate():
        theta = _signed(level, 30.0, sign) * math.pi / 180.0
        c, s = tf.cos(theta), tf.sin(theta)
        cx, cy = (w - 1) / 2, (h - 1) / 2
        return _affine(x, tf.stack([c, s, cx - c * cx - s * cy,
                                    -s, c, cy + s * cx - c * cy]))

    def posterize():
        bits = 4 - tf.cast(level / 10.0 * 4, tf.int32)
        shift = 8 - bits
        xi = tf.cast(tf.round(x), tf.int32)
        return tf.cast(tf.bitwise.left_shift(tf.bitwise.right_shift(xi, shift), shift),
                       tf.float32)

    def solarize():
        thresh = 256.0 - tf.floor(level / 10.0 * 256.0)
        return tf.where(x >= thresh, 255.0 - x, x)

    def solarize_add():
        add = tf.floor(level / 10.0 * 110.0)
        return tf.where(x < 128.0, tf.minimum(x + add, 255.0), x)

    def shear_x():
        return _affine(x, tf.stack([1.0, _signed(level, 0.3, sign), 0.0, 0.0, 1.0, 0.0]))

    def shear_y():
        return _affine(x, tf.stack([1.0, 0.0, 0.0, _signed(level, 0.3, sign), 1.0, 0.0]))

    def translate_x():
        return _affine(x, tf.stack([1.0, 0.0, _signed(level, 0.45, sign) * w, 0.0, 1.0, 0.0]))

    def translate_y():
        return _affine(x, tf.stack([1.0, 0.0, 0.0, 0.0, 1.0, _signed(level, 0.45, sign) * h]))

    def contrast():
        mean = tf.round(tf.reduce_mean(_gray(x), axis=[1, 2, 3], keepdims=True))
        return _blend(x, mean, enhance)

    return [
        lambda: _auto_contrast(x),
        lambda: _equalize(x),
        lambda: 255.0 - x,
        rotate, posterize, solarize, solarize_add,
        lambda: _blend(x, _gray(x), enhance),            # ColorIncreasing
        contrast,                                        # ContrastIncreasing
        lambda: _blend(x, tf.zeros_like(x), enhance),    # BrightnessIncreasing
        lambda: _sharpness(x, enhance),                  # SharpnessIncreasing
        shear_x, shear_y, translate_x, translate_y,
        lambda: x,                                       # op skipped (p 0.5)
    ]


def rand_augment(x: tf.Tensor, seed: tf.Tensor, *, num_layers: int = 4,
                 magnitude: float = 7.0, magnitude_std: float = 0.5,
                 prob: float = 0.5) -> tf.Tensor:
    """RandAugment on a `[T, H, W, 3] float32` clip in [0, 255], same for all frames.

    timm `rand_augment_transform("rand-m7-n4-mstd0.5-inc1")`: `num_layers` ops
    drawn uniformly with replacement, each applied with p `prob` at magnitude
    N(magnitude, magnitude_std) clipped to [0, 10], with a random sign for
    signed ops.
    """
    s = tf.random.experimental.stateless_split(seed, 4)
    ops = tf.random.stateless_uniform([num_layers], s[0], 0, 15, dtype=tf.int32)
    apply = _uniform(s[1], [num_layers]) < prob
    levels = tf.clip_by_value(
        magnitude + magnitude_std * tf.random.stateless_normal([num_layers], s[2]),
        0.0, 10.0)
    signs = tf.where(_uniform(s[3], [num_layers]) < 0.5, -1.0, 1.0)
    for k in range(num_layers):
        index = tf.where(apply[k], ops[k], 15)
        x = tf.switch_case(index, _rand_ops(x, levels[k], signs[k]))
        x = tf.clip_by_value(x, 0.0, 255.0)
    return x


def random_erasing(x: tf.Tensor, seed: tf.Tensor, *, prob: float = 0.25,
                   area=(0.02, 1 / 3), log_ratio=(math.log(0.3), math.log(1 / 0.3)),
                   attempts: int = 10) -> tf.Tensor:
    """timm RandomErasing (mode "pixel", count 1), one box through all frames.

    `x` is a `[T, H, W, 3] uint8` clip; the box is filled with per-pixel noise
    N(0, 1) in normalised space, i.e. mean*255 + std*255*z, saturated to uint8.
    """
    s = tf.random.experimental.stateless_split(seed, 5)
    t, h, w = tf.shape(x)[0], tf.shape(x)[1], tf.shape(x)[2]
    hf, wf = tf.cast(h, tf.float32), tf.cast(w, tf.float32)
    target = _uniform(s[0], [attempts], area[0], area[1]) * hf * wf
    aspect = tf.exp(_uniform(s[1], [attempts], log_ratio[0], log_ratio[1]))
    bh = tf.cast(tf.round(tf.sqrt(target * aspect)), tf.int32)
    bw = tf.cast(tf.round(tf.sqrt(target / aspect)), tf.int32)
    ok = (bw < w) & (bh < h)
    first = tf.argmax(tf.cast(ok, tf.int32))
    bh, bw = bh[first], bw[first]
    u = _uniform(s[2], [2])
    top = tf.minimum(tf.cast(u[0] * tf.cast(h - bh + 1, tf.float32), tf.int32), h - bh)
    left = tf.minimum(tf.cast(u[1] * tf.cast(w - bw + 1, tf.float32), tf.int32), w - bw)
    erase = tf.reduce_any(ok) & (_uniform(s[4]) < prob)

    def apply():
        noise = tf.random.stateless_normal([t, h, w, 3], s[3])
        noise = to_uint8(tf.constant(IMAGENET_MEAN) * 255.0
                         + noise * tf.constant(IMAGENET_STD) * 255.0)
        rows = tf.range(h)[:, None]
        cols = tf.range(w)[None, :]
        inside = ((rows >= top) & (rows < top + bh) & (cols >= left)
                  & (cols < left + bw))
        return tf.where(inside[None, :, :, None], noise, x)

    return tf.cond(erase, apply, lambda: x)
