"""Strided convolution and max pooling with backward passes fast on XLA:CPU.

`max_pool` (end of the module) replaces XLA's `select_and_scatter` gradient by
slices and pads. The rest of this docstring is about the convolution.

A strided convolution whose backward pass avoids dilated convolutions.

The gradient of a strided convolution is, as XLA writes it, a convolution with
an *input* dilation (for the input gradient) or a *kernel* dilation (for the
kernel gradient). XLA:CPU has no fast kernel for either and runs them through
a generic loop: measured on the 2-core CPU of this project (docs/performance.md,
`[16, 4, 56, 56, 64]` -> 128 channels, kernel 3x3x3, stride 2) the input
gradient takes 60 times as long as the forward convolution, and these
gradients were most of the M3DFEL train step.

`conv_general_dilated` below is a drop-in for `lax.conv_general_dilated` (pass
it to `flax.linen.Conv(conv_general_dilated=...)`): its forward pass is the
very same `lax` convolution (bit-identical outputs), and its backward pass is
the exact gradient of the *polyphase* form of the same convolution:

    y[o] = sum_j x_pad[o*s + j] w[j]
         = sum_{r < s} sum_t phase_r[o + t] w[r + t*s],  phase_r[u] = x_pad[u*s + r],

i.e. a sum over the `prod(s)` phase combinations of stride-1 VALID
convolutions with the sub-kernels `w[r::s]`. Differentiating that form needs
only stride-1 convolutions (fast Eigen/oneDNN kernels) plus reshapes, and
does the same number of multiply-adds as the original gradient. The result is
mathematically equal; only the floating-point summation order differs.

Every form here is for XLA:CPU only: a program compiled for GPU or TPU devices
(`platform.is_cpu()` false while it is traced) gets lax's own convolutions and
`lax.reduce_window` max pooling with their usual gradients, which those
compilers are tuned for. Each choice is recorded (`platform.note`).
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from audfer_jax.models import platform

Array = jax.Array

# Beyond this many phases (e.g. stride 2x16x16 = 512 phases) the polyphase
# form would unroll into too many small convolutions; those keep XLA's own
# gradient unless they are patchify convolutions (`patch_conv`).
MAX_PHASES = 16


def _pads(padding: Any, x_shape: Sequence[int], k_shape: Sequence[int],
          strides: Sequence[int]) -> list[tuple[int, int]]:
    if isinstance(padding, str):
        return [tuple(p) for p in lax.padtype_to_pads(x_shape, k_shape, strides, padding)]
    return [tuple(int(v) for v in p) for p in padding]


def polyphase_conv(x: Array, w: Array, strides: Sequence[int],
                   padding: Sequence[tuple[int, int]], precision: Any = None) -> Array:
    """A strided channels-last convolution as a sum of stride-1 convolutions.

    Equal (up to summation order) to `lax.conv_general_dilated(x, w, strides,
    padding)` with channels-last dimension numbers.

    Args:
        x: `[N, *spatial, C_in]`.
        w: `[*kernel, C_in, C_out]`.
        strides: one per spatial axis.
        padding: `(low, high)` per spatial axis.
        precision: passed to each convolution.

    Returns:
        `[N, *out_spatial, C_out]`, `out = (n + low + high - k) // s + 1` per axis.
    """
    nd = len(strides)
    spatial, kernel = x.shape[1:-1], w.shape[:nd]
    out = [(n + lo + hi - k) // s + 1
           for n, (lo, hi), k, s in zip(spatial, padding, kernel, strides)]
    # Padded length: a whole number of phases long enough for the widest sub-kernel.
    lengths = [s * (m - 1 + -(-k // s)) for m, k, s in zip(out, kernel, strides)]
    cfg = [(0, 0, 0)] + [(lo, ln - n - lo, 0) for (lo, _), ln, n in zip(padding, lengths, spatial)]
    xp = lax.pad(x, jnp.zeros((), x.dtype), cfg + [(0, 0, 0)])
    split = (x.shape[0],)
    for ln, s in zip(lengths, strides):
        split += (ln // s, s)
    xp = xp.reshape(split + (x.shape[-1],))
    dn = lax.conv_dimension_numbers(x.shape, w.shape, _channels_last_spec(nd))
    y = None
    for phase in itertools.product(*(range(s) for s in strides)):
        if any(r >= k for r, k in zip(phase, kernel)):
            continue                      # no kernel tap falls on this phase
        index = (slice(None),)
        for r in phase:
            index += (slice(None), r)
        sub_x = xp[index]
        sub_w = w[tuple(slice(r, None, s) for r, s in zip(phase, strides))]
        # Valid stride-1 convolution, cropped to the output size.
        keep = tuple(m + t - 1 for m, t in zip(out, sub_w.shape[:nd]))
        sub_x = sub_x[(slice(None),) + tuple(slice(0, v) for v in keep)]
        part = lax.conv_general_dilated(sub_x, sub_w, (1,) * nd, "VALID", dimension_numbers=dn,
                                        precision=precision)
        y = part if y is None else y + part
    return y


def _channels_last_spec(nd: int) -> tuple[str, str, str]:
    sp = "DHW"[-nd:] if nd <= 3 else "".join(chr(ord("a") + i) for i in range(nd))
    return ("N" + sp + "C", sp + "IO", "N" + sp + "C")


def _lax_conv(x, w, strides, padding, precision):
    """lax's channels-last convolution (the forward pass of every form here)."""
    dn = lax.conv_dimension_numbers(x.shape, w.shape, _channels_last_spec(len(strides)))
    return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=dn,
                                    precision=precision)


def _plain_channels_last(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers,
                         feature_group_count, batch_group_count,
                         preferred_element_type) -> bool:
    """Channels-last, undilated, ungrouped, default output type: the forms here apply."""
    nd = lhs.ndim - 2
    if not (all(d == 1 for d in (lhs_dilation or (1,) * nd))
            and all(d == 1 for d in (rhs_dilation or (1,) * nd))
            and feature_group_count == 1 and batch_group_count == 1
            and preferred_element_type is None):
        return False
    expected = lax.conv_dimension_numbers(lhs.shape, rhs.shape, _channels_last_spec(nd))
    return lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == expected


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _strided_conv(x, w, strides, padding, precision):
    return _lax_conv(x, w, strides, padding, precision)


def _strided_conv_fwd(x, w, strides, padding, precision):
    return _strided_conv(x, w, strides, padding, precision), (x, w)


def _strided_conv_bwd(strides, padding, precision, res, g):
    x, w = res
    _, vjp = jax.vjp(lambda a, b: polyphase_conv(a, b, strides, padding, precision), x, w)
    return vjp(g)


_strided_conv.defvjp(_strided_conv_fwd, _strided_conv_bwd)


def patch_conv(x: Array, w: Array, strides: Sequence[int], precision: Any = None) -> Array:
    """A VALID convolution whose kernel equals its stride, as one matrix product.

    Non-overlapping patches (ViT/VideoMAE tubelet embedding): crop `x` to whole
    patches, flatten each patch in (kernel..., C_in) order, multiply by the
    kernel reshaped to `[prod(kernel) * C_in, C_out]`.

    Args:
        x: `[N, *spatial, C_in]`.
        w: `[*strides, C_in, C_out]`.
        strides: = the kernel size, one per spatial axis.

    Returns:
        `[N, *(spatial // strides), C_out]`.
    """
    nd = len(strides)
    out = [n // s for n, s in zip(x.shape[1:-1], strides)]
    x = x[(slice(None),) + tuple(slice(0, m * s) for m, s in zip(out, strides))]
    split = (x.shape[0],)
    for m, s in zip(out, strides):
        split += (m, s)
    x = x.reshape(split + (x.shape[-1],))
    order = (0,) + tuple(1 + 2 * i for i in range(nd)) + tuple(2 + 2 * i for i in range(nd)) \
        + (2 * nd + 1,)
    patches = x.transpose(order).reshape(x.shape[0] * math.prod(out), -1)
    y = jnp.dot(patches, w.reshape(-1, w.shape[-1]), precision=precision)
    return y.reshape((x.shape[0],) + tuple(out) + (w.shape[-1],))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _patch_conv(x, w, strides, precision):
    return _lax_conv(x, w, strides, "VALID", precision)


def _patch_conv_fwd(x, w, strides, precision):
    return _patch_conv(x, w, strides, precision), (x, w)


def _patch_conv_bwd(strides, precision, res, g):
    x, w = res
    _, vjp = jax.vjp(lambda a, b: patch_conv(a, b, strides, precision), x, w)
    return vjp(g)


_patch_conv.defvjp(_patch_conv_fwd, _patch_conv_bwd)


def conv_general_dilated(lhs: Array, rhs: Array, window_strides: Sequence[int], padding: Any,
                         lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None,
                         dimension_numbers: Any = None, feature_group_count: int = 1,
                         batch_group_count: int = 1, precision: Any = None,
                         preferred_element_type: Any = None) -> Array:
    """`lax.conv_general_dilated` with a fast backward pass for strided convolutions.

    Takes the polyphase gradient (module docstring) when the convolution is
    channels-last (`NHWC`/`HWIO`, any number of spatial axes), strided with at
    most `MAX_PHASES` phases, undilated and ungrouped; a patchify convolution
    (kernel = stride, no padding: MAE-DFER's tubelet embedding, whose kernel
    gradient XLA:CPU computes as a 16x-dilated convolution) takes the gradient
    of `patch_conv`, two matrix products. Anything else is passed to
    `lax.conv_general_dilated` unchanged. Forward values are always those of
    `lax.conv_general_dilated`.
    """
    nd = lhs.ndim - 2
    strides = tuple(int(s) for s in window_strides)
    plain = 1 < math.prod(strides) and platform.is_cpu() and _plain_channels_last(
            lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
            batch_group_count, preferred_element_type)
    if plain and math.prod(strides) > MAX_PHASES:
        # Only the patchify case (kernel = stride, no padding) has a fast form.
        pads = _pads(padding, lhs.shape[1:-1], rhs.shape[:nd], strides)
        plain = tuple(rhs.shape[:nd]) == strides and all(tuple(p) == (0, 0) for p in pads)
    if not plain:
        platform.note("lax_conv")
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                        rhs_dilation, dimension_numbers, feature_group_count,
                                        batch_group_count, precision, preferred_element_type)
    pads = tuple(_pads(padding, lhs.shape[1:-1], rhs.shape[:nd], strides))
    if tuple(rhs.shape[:nd]) == strides and all(p == (0, 0) for p in pads):
        platform.note("patchify_backward")
        return _patch_conv(lhs, rhs, strides, precision)
    platform.note("polyphase_backward")
    return _strided_conv(lhs, rhs, strides, pads, precision)


# Kernel gradients of large convolutions run 2-3x faster on XLA:CPU when the
# batch is cut into chunks whose input is about this size, summed afterwards
# (docs/performance.md: R3D-18 layer1 as frames, 147 MB input, 839 -> 367 ms;
# Former-DFER's stem 99 -> 32 ms): a cache effect of XLA:CPU's kernels.
_CHUNK_BYTES = 1 << 20
_MAX_CHUNKS = 16


def grad_chunks(batch: int, input_bytes: int) -> int:
    """Number of batch chunks for `batch_chunked_conv`'s backward pass.

    The largest divisor of `batch` that is at most `_MAX_CHUNKS` and at most
    `ceil(input_bytes / _CHUNK_BYTES)` (1 for small inputs).
    """
    want = min(_MAX_CHUNKS, max(1, -(-input_bytes // _CHUNK_BYTES)))
    return max(c for c in range(1, want + 1) if batch % c == 0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def batch_chunked_conv(x: Array, w: Array, strides: tuple[int, ...],
                       padding: tuple[tuple[int, int], ...], precision: Any = None) -> Array:
    """A channels-last convolution whose backward pass runs in batch chunks.

    Forward: `lax.conv_general_dilated` (bit-identical values). Backward: the
    batch of `x` and of the output gradient is cut into `grad_chunks(...)`
    chunks; each chunk's input and kernel gradients come from lax's own
    gradient of the convolution, the input gradients are concatenated and the
    kernel gradients summed (the same sums in another order). On XLA:CPU the
    kernel gradient of a large convolution is 2-3x faster this way.

    Args:
        x: `[N, *spatial, C_in]`.
        w: `[*kernel, C_in, C_out]`.
        strides: one per spatial axis.
        padding: `(low, high)` per spatial axis.
        precision: passed to lax.

    Returns:
        `[N, *out_spatial, C_out]`.
    """
    return _lax_conv(x, w, strides, padding, precision)


def _batch_chunked_conv_fwd(x, w, strides, padding, precision):
    return _lax_conv(x, w, strides, padding, precision), (x, w)


def _batch_chunked_conv_bwd(strides, padding, precision, res, g):
    x, w = res
    chunks = grad_chunks(x.shape[0], x.size * x.dtype.itemsize)
    xs = x.reshape((chunks, -1) + x.shape[1:])
    gs = g.reshape((chunks, -1) + g.shape[1:])
    dxs, dw = [], None
    for i in range(chunks):
        _, vjp = jax.vjp(lambda a, b: _lax_conv(a, b, strides, padding, precision), xs[i], w)
        dx_i, dw_i = vjp(gs[i])
        dxs.append(dx_i)
        dw = dw_i if dw is None else dw + dw_i
    return jnp.concatenate(dxs, axis=0), dw


batch_chunked_conv.defvjp(_batch_chunked_conv_fwd, _batch_chunked_conv_bwd)


def cpu_conv_general_dilated(lhs: Array, rhs: Array, window_strides: Sequence[int],
                             padding: Any, lhs_dilation: Sequence[int] | None = None,
                             rhs_dilation: Sequence[int] | None = None,
                             dimension_numbers: Any = None, feature_group_count: int = 1,
                             batch_group_count: int = 1, precision: Any = None,
                             preferred_element_type: Any = None) -> Array:
    """`lax.conv_general_dilated` with the batch-chunked backward pass on XLA:CPU.

    A drop-in for `flax.linen.Conv(conv_general_dilated=...)`, used by
    Former-DFER's 2-D convolutions. In a program traced for CPU devices
    (`platform.is_cpu()`) a channels-last,
    undilated, ungrouped 2-D convolution goes through `batch_chunked_conv`
    (same forward values; gradients equal up to summation order); anything
    else, and everything on GPU and TPU, is `lax.conv_general_dilated`.
    """
    nd = lhs.ndim - 2
    if not (nd == 2 and platform.is_cpu()
            and _plain_channels_last(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers,
                                     feature_group_count, batch_group_count,
                                     preferred_element_type)):
        platform.note("lax_conv")
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                        rhs_dilation, dimension_numbers, feature_group_count,
                                        batch_group_count, precision, preferred_element_type)
    strides = tuple(int(v) for v in window_strides)
    pads = tuple(_pads(padding, lhs.shape[1:-1], rhs.shape[:nd], strides))
    platform.note("batch_chunked_conv")
    return batch_chunked_conv(lhs, rhs, strides, pads, precision)


def _live_taps(frames: int, taps: int, padding: tuple[int, int], stride: int) -> list[int]:
    """Temporal taps that read at least one real frame (the rest read padding only).

    Tap dt of output frame j reads input frame `dt - low + stride * j`.
    """
    low, high = padding
    out = (frames + low + high - taps) // stride + 1
    return [dt for dt in range(taps) if any(0 <= dt - low + stride * j < frames
                                            for j in range(out))]


def frames_conv(x: Array, w: Array, padding: Sequence[tuple[int, int]],
                strides: Sequence[int] = (1, 1, 1), precision: Any = None) -> Array:
    """A 3-D convolution as one 2-D convolution per output frame.

    With the temporal taps stacked on the channel axis,

        y[n, j] = conv2d(concat_dt x_pad[n, st * j + dt], w.reshape(kh, kw, kt * C_in, C_out)),

    which is the same sum of products as the 3-D convolution (only the
    summation order differs). Taps that read nothing but temporal padding
    for every output frame add exact zeros and are dropped: with R3D-18's
    4-frame instances, layer3's first convolution keeps 2 of its 3 taps and
    layer4's convolutions (one frame) keep 1. On XLA:CPU this form runs
    1.2-5x faster than the 3-D convolution, forward and backward
    (docs/performance.md): XLA:CPU's 2-D convolution kernels are better tuned
    than its 3-D ones, and R3D-18's 3-channel stem becomes a 9-channel 2-D
    convolution. The 2-D convolution is `batch_chunked_conv` (its kernel
    gradient in batch chunks).

    Args:
        x: `[N, T, H, W, C_in]`.
        w: `[kt, kh, kw, C_in, C_out]`.
        padding: `(low, high)` for T, H and W.
        strides: strides of T, H and W.
        precision: passed to the 2-D convolution.

    Returns:
        `[N, T', H', W', C_out]`, the output shape of `lax.conv_general_dilated`.

    Raises:
        ValueError: the padded clip is shorter than the kernel (no output frame).
    """
    n, t = x.shape[:2]
    kt = w.shape[0]
    (lo, hi), pads_hw = tuple(padding[0]), tuple((int(a), int(b)) for a, b in padding[1:])
    st = int(strides[0])
    out_t = (t + lo + hi - kt) // st + 1
    if out_t < 1:
        raise ValueError(f"frames_conv: {t} frames, padding {(lo, hi)} and {kt} temporal taps "
                         "give no output frame")
    taps = _live_taps(t, kt, (lo, hi), st)
    xp = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), (lo, hi, 0)] + [(0, 0, 0)] * 3)
    frames = jnp.concatenate([xp[:, dt:dt + st * (out_t - 1) + 1:st] for dt in taps], axis=-1)
    frames = frames.reshape((n * out_t,) + frames.shape[2:])
    kernel = jnp.concatenate([w[dt] for dt in taps], axis=-2)   # [kh, kw, taps*C_in, C_out]
    y = batch_chunked_conv(frames, kernel, tuple(int(v) for v in strides[1:]), pads_hw,
                           precision)
    return y.reshape((n, out_t) + y.shape[1:])


def frames_conv_general_dilated(lhs: Array, rhs: Array, window_strides: Sequence[int],
                                padding: Any, lhs_dilation: Sequence[int] | None = None,
                                rhs_dilation: Sequence[int] | None = None,
                                dimension_numbers: Any = None, feature_group_count: int = 1,
                                batch_group_count: int = 1, precision: Any = None,
                                preferred_element_type: Any = None) -> Array:
    """`conv_general_dilated` that runs 3-D convolutions frame by frame on XLA:CPU.

    A drop-in for `lax.conv_general_dilated` (pass it to
    `flax.linen.Conv(conv_general_dilated=...)`), used by M3DFEL's R3D-18.
    In a program traced for CPU devices (`platform.is_cpu()`), a
    channels-last, undilated, ungrouped 3-D convolution
    with more than one temporal tap goes through `frames_conv` (values equal
    up to float32 summation order, about 1e-7 relative) when its temporal
    stride is 1 or when some taps read only padding; the measured cases
    (docs/performance.md) where the 3-D kernel stays faster are a temporal
    stride of 2 with every tap live and 1x1x1 kernels. Every other
    convolution, and every convolution on GPU and TPU (where cuDNN's and
    XLA:TPU's 3-D kernels are the fast path), goes to `conv_general_dilated`
    above (lax's forward; the polyphase backward for strided ones).
    """
    args = (lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
            feature_group_count, batch_group_count, precision, preferred_element_type)
    strides = tuple(int(s) for s in window_strides)
    frame_form = (lhs.ndim == 5 and rhs.shape[0] > 1 and platform.is_cpu()
                  and _plain_channels_last(lhs, rhs, lhs_dilation, rhs_dilation,
                                           dimension_numbers, feature_group_count,
                                           batch_group_count, preferred_element_type))
    if frame_form:
        pads = _pads(padding, lhs.shape[1:-1], rhs.shape[:3], strides)
        live = _live_taps(lhs.shape[1], rhs.shape[0], pads[0], strides[0])
        frame_form = strides[0] == 1 or len(live) < rhs.shape[0]
    if not frame_form:
        return conv_general_dilated(*args)
    platform.note("frames_conv")
    return frames_conv(lhs, rhs, pads, strides, precision)


def _window_offsets(window: Sequence[int]):
    return list(itertools.product(*(range(k) for k in window)))


def _shifted(xp: Array, offset: Sequence[int], strides: Sequence[int],
             out: Sequence[int]) -> Array:
    """`xp[:, o0 + s0*i0, o1 + s1*i1, ..., :]` for `i < out`: one window tap."""
    start = (0,) + tuple(offset) + (0,)
    limit = (xp.shape[0],) + tuple(o + s * (m - 1) + 1 for o, s, m in zip(offset, strides, out)) \
        + (xp.shape[-1],)
    return lax.slice(xp, start, limit, (1,) + tuple(strides) + (1,))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, window, strides, padding):
    init = jnp.array(-jnp.inf, x.dtype)
    return lax.reduce_window(x, init, lax.max, (1,) + window + (1,), (1,) + strides + (1,),
                             ((0, 0),) + padding + ((0, 0),))


def _max_pool_fwd(x, window, strides, padding):
    return _max_pool(x, window, strides, padding), x


def _max_pool_bwd(window, strides, padding, x, g):
    cfg = [(0, 0, 0)] + [(lo, hi, 0) for lo, hi in padding] + [(0, 0, 0)]
    xp = lax.pad(x, jnp.array(-jnp.inf, x.dtype), cfg)
    out = g.shape[1:-1]
    offsets = _window_offsets(window)
    # Each output's argmax tap, found again from `x` alone: the first tap
    # (row-major window order) holding the maximum, as XLA's select_and_scatter
    # (`ge` select) and PyTorch's max_pool2d (`val > maxval`) pick it; a strict
    # `>` keeps the first of tied taps. Not by equality with the forward output:
    # XLA:CPU may fuse the elementwise producer of `x` (Former-DFER's BatchNorm
    # + ReLU) into the forward reduction and, compiled differently, into this
    # pass, so the two can differ in the last bit and most outputs would find
    # no equal tap and drop their gradient (issue 21: s_former/bn1 gradients
    # 80-160 % off). Here every output routes its gradient to exactly one input.
    best = _shifted(xp, offsets[0], strides, out)
    arg = jnp.zeros(best.shape, jnp.int32)
    for k, offset in enumerate(offsets[1:], start=1):
        tap = _shifted(xp, offset, strides, out)
        better = tap > best
        best = jnp.where(better, tap, best)
        arg = jnp.where(better, jnp.int32(k), arg)
    dxp = jnp.zeros(xp.shape, g.dtype)
    for k, offset in enumerate(offsets):
        # Place g at rows offset + stride * i of the padded input: interior
        # padding spreads it to the stride, edge padding shifts it.
        place = [(0, 0, 0)]
        for o, s, m, n in zip(offset, strides, out, xp.shape[1:-1]):
            place.append((o, n - o - s * (m - 1) - 1, s - 1))
        dxp = dxp + lax.pad(jnp.where(arg == k, g, jnp.zeros((), g.dtype)),
                            jnp.zeros((), g.dtype), place + [(0, 0, 0)])
    crop = tuple(slice(lo, lo + n) for (lo, _), n in zip(padding, x.shape[1:-1]))
    return (dxp[(slice(None),) + crop],)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool(x: Array, window: Sequence[int], strides: Sequence[int],
             padding: Sequence[tuple[int, int]]) -> Array:
    """Channels-last max pooling with a backward pass made of slices and pads.

    Forward values are those of `flax.linen.max_pool` / `lax.reduce_window`
    (padding with -inf). The gradient goes, per output, to the first input of
    its window (row-major order) that equals the maximum, as in XLA's own
    `select_and_scatter` gradient, which XLA:CPU runs about 6x slower than the
    forward pass (docs/performance.md). A program traced for GPU or TPU
    devices gets `lax.reduce_window` and its own gradient instead.

    Args:
        x: `[N, *spatial, C]` float.
        window, strides: per spatial axis.
        padding: `(low, high)` per spatial axis.

    Returns:
        `[N, *out_spatial, C]`.
    """
    window = tuple(int(v) for v in window)
    strides = tuple(int(v) for v in strides)
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    if not platform.is_cpu():
        # GPU/TPU: lax's pooling and its select_and_scatter gradient.
        platform.note("lax_max_pool")
        # A Python -inf init: lax then recognises the max monoid (differentiable).
        return lax.reduce_window(x, -jnp.inf, lax.max, (1,) + window + (1,),
                                 (1,) + strides + (1,), ((0, 0),) + padding + ((0, 0),))
    platform.note("slices_max_pool_backward")
    return _max_pool(x, window, strides, padding)
