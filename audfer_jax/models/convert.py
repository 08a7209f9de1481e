"""PyTorch checkpoints of the three backbones -> Flax linen variables.

The only module of the package that imports torch, and only inside
`load_torch_checkpoint` (so the layer conversions, the whole-model mappings and
their tests of key handling run without it). Three layers:

1. Layer conversions (pure NumPy): one function per PyTorch layer kind, with the
   layout rules of backbones.md section 4 (Conv `[O, I, *k] -> [*k, I, O]`,
   Linear `[O, I] -> [I, O]`, BatchNorm weight/bias/running stats -> `params`
   scale/bias and `batch_stats` mean/var, packed `to_qkv` split head-major,
   MAE-DFER `q`/`kv` with `q_bias`/`v_bias` and no k bias, LSTM gate rows
   i, f, g, o with `bias_ih + bias_hh` on the `h*` Dense, DMIN reshapes).
2. Whole-model mappings: `convert_state_dict(model_name, state_dict,
   target_variables)` maps the keys of the five checkpoint kinds of
   backbones.md sections 1-3 (Former-DFER fine-tuned, torchvision R3D-18
   Kinetics-400, M3DFEL fine-tuned, MAE-DFER VoxCeleb2 pre-training, MAE-DFER
   fine-tuned, each with an optional AU-DFER AU head) onto the Flax variable
   tree of `audfer_jax.models.get_model(model_name)`. Every checkpoint key is
   mapped, dropped by a named rule, or an error; every Flax leaf is loaded or
   reported fresh (`ConversionReport`).
3. `load_torch_checkpoint(path)`: a restricted unpickler (torch's
   `weights_only` loader, unknown classes such as `__main__.RecorderMeter` and
   `argparse.Namespace` replaced by inert stubs), and the CLI
   `audfer-jax convert` (`main(argv)`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np

# ---------------------------------------------------------------------------
# 1. Layer conversions (backbones.md section 4). Inputs are NumPy arrays in
#    PyTorch layout; outputs are dicts shaped like the Flax module's variables.
# ---------------------------------------------------------------------------


def conv_kernel(weight: np.ndarray) -> np.ndarray:
    """PyTorch ConvNd weight -> Flax `nn.Conv` kernel.

    Args:
        weight: Conv1d `[O, I, k]`, Conv2d `[O, I, kh, kw]` or Conv3d
            `[O, I, kt, kh, kw]` (any float dtype).

    Returns:
        `[k, I, O]`, `[kh, kw, I, O]` or `[kt, kh, kw, I, O]`: the spatial axes
        first, then in, then out (backbones.md section 4, transposes (2,1,0),
        (2,3,1,0), (2,3,4,1,0)). Flax convolves channels-last inputs with the
        same cross-correlation as PyTorch, so no kernel flip is needed.

    Raises:
        ValueError: `weight` is not 3-, 4- or 5-dimensional.
    """
    weight = np.asarray(weight)
    if weight.ndim not in (3, 4, 5):
        raise ValueError(f"conv weight must be [O, I, *kernel] with 1-3 kernel axes, "
                         f"got shape {weight.shape}")
    return np.transpose(weight, tuple(range(2, weight.ndim)) + (1, 0))


def dense_kernel(weight: np.ndarray) -> np.ndarray:
    """PyTorch Linear weight `[O, I]` -> Flax `nn.Dense` kernel `[I, O]`.

    Raises:
        ValueError: `weight` is not 2-dimensional.
    """
    weight = np.asarray(weight)
    if weight.ndim != 2:
        raise ValueError(f"linear weight must be [out, in], got shape {weight.shape}")
    return weight.T


def conv(weight: np.ndarray, bias: Optional[np.ndarray] = None) -> dict[str, np.ndarray]:
    """Conv1d/2d/3d -> `nn.Conv` params `{'kernel'[, 'bias' [O]]}` (see `conv_kernel`)."""
    out = {"kernel": conv_kernel(weight)}
    if bias is not None:
        out["bias"] = np.asarray(bias)
    return out


def dense(weight: np.ndarray, bias: Optional[np.ndarray] = None) -> dict[str, np.ndarray]:
    """Linear `[O, I]` (+ bias `[O]`) -> `nn.Dense` params `{'kernel' [I, O][, 'bias']}`."""
    out = {"kernel": dense_kernel(weight)}
    if bias is not None:
        out["bias"] = np.asarray(bias)
    return out


def batch_norm(weight: np.ndarray, bias: np.ndarray, running_mean: np.ndarray,
               running_var: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """BatchNorm1d/2d/3d -> (`params` {scale, bias}, `batch_stats` {mean, var}).

    All four inputs are `[C]`; they carry over unchanged (backbones.md
    section 4). `num_batches_tracked` has no Flax counterpart and is dropped by
    the caller. For PyTorch's eval-mode numbers the Flax module must be
    `nn.BatchNorm(momentum=0.9, epsilon=1e-5, use_fast_variance=False)` with
    `use_running_average=True` (PyTorch momentum 0.1 is Flax momentum 0.9).
    """
    params = {"scale": np.asarray(weight), "bias": np.asarray(bias)}
    stats = {"mean": np.asarray(running_mean), "var": np.asarray(running_var)}
    return params, stats


def layer_norm(weight: np.ndarray, bias: np.ndarray) -> dict[str, np.ndarray]:
    """LayerNorm weight/bias `[D]` -> `nn.LayerNorm` params {scale, bias}.

    The epsilon is a module attribute, not a weight: 1e-5 for Former-DFER
    (PyTorch default), 1e-6 for MAE-DFER (backbones.md sections 1, 3).
    """
    return {"scale": np.asarray(weight), "bias": np.asarray(bias)}


def split_packed_qkv(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Packed `to_qkv` Linear weight `[3·h·d, D]` (no bias) -> q, k, v kernels.

    Former-DFER (`models/S_Former.py`, `T_Former.py`) and M3DFEL
    (`models/M3DFEL.py`) split the output of `to_qkv` into three equal blocks
    with `chunk(3, dim=-1)`: rows `[0:hd]` are q, `[hd:2hd]` k, `[2hd:3hd]` v,
    each head-major (`(h d)`), backbones.md section 4.

    Returns:
        Three `nn.Dense` kernels `[D, h·d]`; reshape the output axis to
        `[h, d]` (C order) for per-head attention.

    Raises:
        ValueError: not 2-D, or rows not divisible by 3.
    """
    weight = np.asarray(weight)
    if weight.ndim != 2 or weight.shape[0] % 3:
        raise ValueError(f"to_qkv weight must be [3*h*d, D], got shape {weight.shape}")
    q, k, v = np.split(weight, 3, axis=0)
    return q.T, k.T, v.T


def mae_attention(q_weight: np.ndarray, kv_weight: np.ndarray, q_bias: np.ndarray,
                  v_bias: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """MAE-DFER `GeneralAttention` q/kv weights -> three `nn.Dense` param dicts.

    Source: sunlicai/MAE-DFER `modeling_finetune.py::GeneralAttention`:
    `q = x Wq^T + q_bias`, `[k | v] = ctx Wkv^T + [0 | v_bias]` (no k bias);
    `kv.weight` rows `[0:D']` are k and `[D':2D']` v (backbones.md section 3).

    Args:
        q_weight: `[h·d, D]`.
        kv_weight: `[2·h·d, D_ctx]`.
        q_bias: `[h·d]`.
        v_bias: `[h·d]`.

    Returns:
        `{'q': {'kernel' [D, hd], 'bias'}, 'k': {'kernel' [D_ctx, hd]},
        'v': {'kernel' [D_ctx, hd], 'bias'}}`.

    Raises:
        ValueError: shapes that do not fit together.
    """
    q_weight, kv_weight = np.asarray(q_weight), np.asarray(kv_weight)
    if kv_weight.ndim != 2 or kv_weight.shape[0] % 2:
        raise ValueError(f"kv weight must be [2*h*d, D], got shape {kv_weight.shape}")
    k_weight, v_weight = np.split(kv_weight, 2, axis=0)
    if q_weight.ndim != 2 or q_weight.shape[0] != k_weight.shape[0]:
        raise ValueError(f"q weight {q_weight.shape} does not fit kv weight {kv_weight.shape}")
    for name, b in (("q_bias", q_bias), ("v_bias", v_bias)):
        if np.shape(b) != (q_weight.shape[0],):
            raise ValueError(f"{name} must be [{q_weight.shape[0]}], got {np.shape(b)}")
    return {"q": {"kernel": q_weight.T, "bias": np.asarray(q_bias)},
            "k": {"kernel": k_weight.T},
            "v": {"kernel": v_weight.T, "bias": np.asarray(v_bias)}}


def mae_kv_packed(kv_weight: np.ndarray, v_bias: np.ndarray) -> dict[str, np.ndarray]:
    """MAE-DFER `kv.weight` `[2·h·d, D]` + `v_bias` -> one `nn.Dense` with a bias.

    For a Flax model that keeps k and v in one biased Dense: the k half of the
    bias is zero (PyTorch has no k bias; the model must keep it frozen at 0),
    backbones.md section 4.
    """
    v_bias = np.asarray(v_bias)
    return {"kernel": dense_kernel(kv_weight),
            "bias": np.concatenate([np.zeros_like(v_bias), v_bias])}


# PyTorch stacks the LSTM gates as rows [i | f | g | o] (torch.nn.LSTM docs);
# Flax `nn.LSTMCell` names its Dense layers after the same gates.
LSTM_GATES = ("i", "f", "g", "o")


def lstm_cell(weight_ih: np.ndarray, weight_hh: np.ndarray, bias_ih: np.ndarray,
              bias_hh: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """One direction of one `torch.nn.LSTM` layer -> `flax.linen.LSTMCell` params.

    Args:
        weight_ih: `weight_ih_l{k}[_reverse]` `[4H, I]`.
        weight_hh: `weight_hh_l{k}[_reverse]` `[4H, H]`.
        bias_ih, bias_hh: `[4H]`.

    Returns:
        `{'ii','if','ig','io': {'kernel' [I, H]}, 'hi','hf','hg','ho':
        {'kernel' [H, H], 'bias' [H]}}`: rows split in PyTorch gate order
        i, f, g, o and transposed; the two biases summed onto the `h*` Dense
        (Flax's `i*` Dense has no bias), backbones.md section 4. Flax's cell
        equations equal PyTorch's (c' = f c + i g, h' = o tanh c').

    Raises:
        ValueError: inconsistent shapes.
    """
    weight_ih, weight_hh = np.asarray(weight_ih), np.asarray(weight_hh)
    bias = np.asarray(bias_ih) + np.asarray(bias_hh)
    hidden = weight_hh.shape[-1]
    if (weight_hh.shape != (4 * hidden, hidden) or weight_ih.ndim != 2
            or weight_ih.shape[0] != 4 * hidden or bias.shape != (4 * hidden,)):
        raise ValueError(f"LSTM shapes do not fit: weight_ih {weight_ih.shape}, weight_hh "
                         f"{weight_hh.shape}, bias {np.shape(bias_ih)}/{np.shape(bias_hh)}")
    out = {}
    for g, w_i, w_h, b in zip(LSTM_GATES, np.split(weight_ih, 4), np.split(weight_hh, 4),
                              np.split(bias, 4)):
        out["i" + g] = {"kernel": w_i.T}
        out["h" + g] = {"kernel": w_h.T, "bias": b}
    return out


def dmin(weight: np.ndarray, bias: np.ndarray, mean_weight: np.ndarray,
         var_weight: np.ndarray) -> dict[str, np.ndarray]:
    """M3DFEL DMIN (`utils.py`) -> params: weight/bias `[1, F, 1]` -> `[F]`, the
    two `[2]` mixing logits unchanged (backbones.md section 4)."""
    return {"weight": np.asarray(weight).reshape(-1), "bias": np.asarray(bias).reshape(-1),
            "mean_weight": np.asarray(mean_weight), "var_weight": np.asarray(var_weight)}


def activations_to_flax(x: np.ndarray, layout: str) -> np.ndarray:
    """A PyTorch-layout activation or clip -> the channels-last Flax layout.

    Args:
        x: the array.
        layout: one of `'NCL'` (Conv1d) -> `[N, L, C]`, `'NCHW'` -> `[N, H, W, C]`,
            `'NCTHW'` -> `[N, T, H, W, C]` (Conv3d; MAE-DFER input
            `[B, 3, 16, 160, 160]`), `'NTCHW'` -> `[N, T, H, W, C]` (Former-DFER and
            M3DFEL input `[B, 16, 3, 112, 112]`).

    Raises:
        ValueError: unknown layout or rank mismatch.

    Flattening a channels-last `[N, H, W, C]` to `[N, H·W, C]` gives tokens in
    PyTorch's `flatten(2).transpose(1, 2)` order (h·W + w), and likewise
    t·H·W + h·W + w for `[N, T, H, W, C]` (backbones.md section 4, "Layouts").
    """
    perms = {"NCL": (0, 2, 1), "NCHW": (0, 2, 3, 1), "NCTHW": (0, 2, 3, 4, 1),
             "NTCHW": (0, 1, 3, 4, 2)}
    if layout not in perms:
        raise ValueError(f"layout must be one of {sorted(perms)}, got {layout!r}")
    x = np.asarray(x)
    if x.ndim != len(perms[layout]):
        raise ValueError(f"layout {layout} needs a {len(perms[layout])}-D array, got {x.shape}")
    return np.transpose(x, perms[layout])
