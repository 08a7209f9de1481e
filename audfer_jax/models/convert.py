"""PyTorch checkpoints of the three backbones -> Flax linen variables.

The only module of the package that imports torch, and only inside
`load_torch_checkpoint` (so the layer conversions, the whole-model mappings and
their tests of key handling run without it). Three layers:

1. Layer conversions (pure NumPy): one function per PyTorch layer kind, with the
   layout rules of backbones.md section 4 (Conv `[O, I, *k] -> [*k, I, O]`,
   Linear `[O, I] -> [I, O]`, BatchNorm weight/bias/running stats -> `params`
   scale/bias and `batch_stats` mean/var, packed `to_qkv` split head-major,
   MAE-DFER `q`/`kv` with `q_bias`/`v_bias` and no k bias, LSTM gate rows
   i, f, g, o with `bias_ih + bias_hh` on the `h*` Dense of `nn.LSTMCell` or
   both biases kept by `layers.TorchLSTMCell`, DMIN reshapes), and
   `activations_to_flax` for the activation layouts.
2. Whole-model mappings: `convert_state_dict(model_name, state_dict,
   target_variables)` maps the keys of the five checkpoint kinds of
   backbones.md sections 1-3 (Former-DFER fine-tuned, torchvision R3D-18
   Kinetics-400, M3DFEL fine-tuned, MAE-DFER VoxCeleb2 pre-training, MAE-DFER
   fine-tuned, each with an optional AU-DFER AU head) onto the Flax variable
   tree of `audfer_jax.models.get_model(model_name)`. Every checkpoint key is
   mapped, dropped by a named rule, or an error; every Flax leaf is loaded or
   reported fresh (`ConversionReport`).
3. `load_torch_checkpoint(path)`: torch's restricted `weights_only` unpickler
   with every unknown global (`__main__.RecorderMeter`, NumPy reconstructors,
   any function) allow-listed as an inert stub and `argparse.Namespace` as
   itself, so no training script is imported or run; `model_template` and
   `fill_fresh` for the model's side. The command `audfer-jax convert`
   (`audfer_jax.cli.convert`) writes the converted variables with
   `audfer_jax.checkpoint.save_variables`.

The model's Flax paths come from the module docstrings of former_dfer.py,
m3dfel.py and mae_dfer.py (PyTorch key -> Flax path tables); the rules below
follow them, and `convert_state_dict` refuses any leaf that no rule covers.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from audfer_jax.models import default_input_shape
from audfer_jax.models import mae_dfer

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


def lstm_cell_torch_biases(weight_ih: np.ndarray, weight_hh: np.ndarray, bias_ih: np.ndarray,
                           bias_hh: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """Like `lstm_cell`, for a cell that keeps both PyTorch biases
    (`audfer_jax.models.layers.TorchLSTMCell`): `i*` Dense bias <- `bias_ih`
    block, `h*` Dense bias <- `bias_hh` block (gate order i, f, g, o)."""
    out = lstm_cell(weight_ih, weight_hh, bias_ih, np.zeros_like(np.asarray(bias_hh)))
    for g, b_i, b_h in zip(LSTM_GATES, np.split(np.asarray(bias_ih), 4),
                           np.split(np.asarray(bias_hh), 4)):
        out["i" + g]["bias"] = b_i
        out["h" + g]["bias"] = b_h
    return out


# ---------------------------------------------------------------------------
# 2. Whole-model mappings.
# ---------------------------------------------------------------------------

# A module of the checkpoint: which PyTorch members it has and how they become
# Flax leaves. `convert(arrays, template)` gets `{member: array}` and the Flax
# module's template leaves `{(collection, *relative path): leaf}` and returns
# `{(collection, *relative path): array}`.
_KIND_MEMBERS: dict[str, tuple[str, ...]] = {
    "conv": ("weight", "bias"),
    "linear": ("weight", "bias"),
    "bn": ("weight", "bias", "running_mean", "running_var"),
    "ln": ("weight", "bias"),
    "dmin": ("weight", "bias", "mean_weight", "var_weight"),
    "mae_attn": ("q.weight", "kv.weight", "q_bias", "v_bias"),
    "lstm": ("weight_ih", "weight_hh", "bias_ih", "bias_hh"),
    "param": ("",),
}

_Leaves = dict[tuple[str, ...], Any]


def _required_members(kind: str, template: _Leaves) -> tuple[str, ...]:
    """The members a checkpoint must hold for a Flax module with these leaves."""
    members = _KIND_MEMBERS[kind]
    if kind in ("conv", "linear") and ("params", "bias") not in template:
        return ("weight",)
    return members


def _convert_group(kind: str, arrays: Mapping[str, np.ndarray], template: _Leaves) -> _Leaves:
    """PyTorch members of one module -> its Flax leaves (relative paths)."""
    def params(d: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> _Leaves:
        out: _Leaves = {}
        for k, v in d.items():
            if isinstance(v, Mapping):
                out.update(params(v, prefix + (k,)))
            else:
                out[("params",) + prefix + (k,)] = v
        return out

    a = arrays
    if kind == "conv":
        return params(conv(a["weight"], a.get("bias")))
    if kind == "linear":
        return params(dense(a["weight"], a.get("bias")))
    if kind == "bn":
        p, s = batch_norm(a["weight"], a["bias"], a["running_mean"], a["running_var"])
        out = params(p)
        out.update({("batch_stats", k): v for k, v in s.items()})
        return out
    if kind == "ln":
        return params(layer_norm(a["weight"], a["bias"]))
    if kind == "dmin":
        return params(dmin(a["weight"], a["bias"], a["mean_weight"], a["var_weight"]))
    if kind == "mae_attn":
        if ("params", "kv", "kernel") in template:     # one biased kv Dense (spec section 4)
            out = params({"q": dense(a["q.weight"], a["q_bias"])})
            out.update(params({"kv": mae_kv_packed(a["kv.weight"], a["v_bias"])}))
            return out
        return params(mae_attention(a["q.weight"], a["kv.weight"], a["q_bias"], a["v_bias"]))
    if kind == "lstm":
        if ("params", "ii", "bias") in template:        # layers.TorchLSTMCell
            return params(lstm_cell_torch_biases(a["weight_ih"], a["weight_hh"], a["bias_ih"],
                                                 a["bias_hh"]))
        return params(lstm_cell(a["weight_ih"], a["weight_hh"], a["bias_ih"], a["bias_hh"]))
    if kind == "param":
        value = np.asarray(a[""])
        (leaf_path, leaf), = template.items()
        # Position embeddings, CLS tokens: as is, allowing size-1 axes to differ.
        if tuple(leaf.shape) != value.shape and (
                tuple(d for d in leaf.shape if d != 1) == tuple(d for d in value.shape if d != 1)):
            value = value.reshape(leaf.shape)
        return {leaf_path: value}
    raise ValueError(f"unknown layer kind {kind!r}")


_PLACEHOLDER = re.compile(r"\{(\w+)(?::([^}]*))?\}")


def _pattern_regex(pattern: str) -> str:
    """`'layer{k}.{j}.conv{c}'` -> a regex with named groups (`{x}` = digits,
    `{x:a|b}` = one of the alternatives)."""
    out, pos = [], 0
    for m in _PLACEHOLDER.finditer(pattern):
        out.append(re.escape(pattern[pos:m.start()]))
        alternatives = m.group(2)
        body = "|".join(re.escape(x) for x in alternatives.split("|")) if alternatives else r"\d+"
        out.append(f"(?P<{m.group(1)}>{body})")
        pos = m.end()
    out.append(re.escape(pattern[pos:]))
    return "".join(out)


def _pattern_format(pattern: str, values: Mapping[str, str]) -> str:
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], pattern)


@dataclasses.dataclass(frozen=True)
class Rule:
    """One PyTorch module <-> one Flax module.

    Attributes:
        torch: PyTorch module prefix pattern, e.g. `'s_former.layer{k}.{j}.conv{c}'`
            (for kind `param`: the whole key).
        flax: Flax module path pattern with the same placeholders, e.g.
            `'s_former/layer{k}_{j}/conv{c}'` (for kind `param`: the leaf path).
        kind: one of `conv, linear, bn, ln, dmin, mae_attn, lstm, param`.
        role: `'head'` (class count may differ), `'au_head'` (optional in every
            checkpoint), `'fc_norm'` or `''`.
        suffix: appended to each member name (LSTM `'_l{k}'`, `'_l{k}_reverse'`).
    """
    torch: str
    flax: str
    kind: str
    role: str = ""
    suffix: str = ""

    @property
    def torch_regex(self) -> re.Pattern:
        if self.kind == "param":
            return re.compile("^" + _pattern_regex(self.torch) + "$")
        members = "|".join(re.escape(m) for m in _KIND_MEMBERS[self.kind])
        return re.compile("^" + _pattern_regex(self.torch) + rf"\.(?P<_member>{members})"
                          + _pattern_regex(self.suffix) + "$")

    @property
    def flax_regex(self) -> re.Pattern:
        return re.compile("^" + _pattern_regex(self.flax) + "$")

    def torch_key(self, member: str, values: Mapping[str, str]) -> str:
        if self.kind == "param":
            return _pattern_format(self.torch, values)
        return (_pattern_format(self.torch, values) + "." + member
                + _pattern_format(self.suffix, values))


def _former_dfer_rules() -> list[Rule]:
    """Former-DFER keys (backbones.md section 1, `former_dfer.json`) -> the paths
    of `audfer_jax.models.former_dfer` (its module docstring)."""
    rules = [
        Rule("s_former.pos_embedding", "s_former/pos_embedding", "param"),
        Rule("s_former.conv1", "s_former/conv1", "conv"),
        Rule("s_former.bn1", "s_former/bn1", "bn"),
        Rule("s_former.layer{k}.{j}.conv{c}", "s_former/layer{k}_{j}/conv{c}", "conv"),
        Rule("s_former.layer{k}.{j}.bn{c}", "s_former/layer{k}_{j}/bn{c}", "bn"),
        Rule("s_former.layer{k}.{j}.downsample.0", "s_former/layer{k}_{j}/downsample_conv",
             "conv"),
        Rule("s_former.layer{k}.{j}.downsample.1", "s_former/layer{k}_{j}/downsample_bn", "bn"),
        Rule("t_former.cls_token", "t_former/cls_token", "param"),
        Rule("t_former.pos_embedding", "t_former/pos_embedding", "param"),
        Rule("fc", "fc", "linear", role="head"),
        Rule("AU_fc", "AU_fc", "linear", role="au_head"),
    ]
    for f in ("s_former", "t_former"):
        # The T-Former's stack is also named `spatial_transformer` (spec quirk).
        t, x = f"{f}.spatial_transformer.layers.{{i}}", f"{f}/spatial_transformer/layers_{{i}}"
        rules += [
            Rule(f"{t}.0.fn.norm", f"{x}/attn_norm", "ln"),
            Rule(f"{t}.0.fn.fn.to_qkv", f"{x}/attn/to_qkv", "linear"),
            Rule(f"{t}.0.fn.fn.to_out.0", f"{x}/attn/to_out", "linear"),
            Rule(f"{t}.1.fn.norm", f"{x}/ff_norm", "ln"),
            Rule(f"{t}.1.fn.fn.net.{{n:0|3}}", f"{x}/ff/net_{{n}}", "linear"),
        ]
    return rules


def _m3dfel_rules() -> list[Rule]:
    """M3DFEL keys (backbones.md section 2, `m3dfel.json`) -> the paths of
    `audfer_jax.models.m3dfel` (its module docstring)."""
    b, x = "features.{k}.{j}", "features/layer{k}_{j}"
    return [
        Rule("features.0.0", "features/stem_conv", "conv"),
        Rule("features.0.1", "features/stem_bn", "bn"),
        Rule(f"{b}.conv{{c}}.0", f"{x}/conv{{c}}", "conv"),
        Rule(f"{b}.conv{{c}}.1", f"{x}/bn{{c}}", "bn"),
        Rule(f"{b}.downsample.0", f"{x}/downsample_conv", "conv"),
        Rule(f"{b}.downsample.1", f"{x}/downsample_bn", "bn"),
        Rule("lstm", "lstm/l{k}/forward_rnn/cell", "lstm", suffix="_l{k}"),
        Rule("lstm", "lstm/l{k}/backward_rnn/cell", "lstm", suffix="_l{k}_reverse"),
        Rule("to_qkv", "to_qkv", "linear"),
        Rule("norm", "norm", "dmin"),
        Rule("pwconv", "pwconv", "conv"),
        Rule("fc", "fc", "linear", role="head"),
        Rule("fc_au", "fc_au", "linear", role="au_head"),
    ]


def _mae_dfer_rules() -> list[Rule]:
    """MAE-DFER fine-tune keys (backbones.md section 3, `mae_dfer.json`) -> the
    paths of `audfer_jax.models.mae_dfer` (its module docstring)."""
    attn = "{a:first|second|third}_attn"
    norms = "{n:first_attn_norm0|second_attn_norm0|third_attn_norm0|third_attn_norm1|norm2}"
    return [
        Rule("patch_embed.proj", "patch_embed/proj", "conv"),
        Rule("lg_region_tokens", "lg_region_tokens", "param"),
        Rule(f"blocks.{{k}}.{attn}", f"blocks_{{k}}/{attn}", "mae_attn"),
        Rule(f"blocks.{{k}}.{attn}.proj", f"blocks_{{k}}/{attn}/proj", "linear"),
        Rule(f"blocks.{{k}}.{norms}", f"blocks_{{k}}/{norms}", "ln"),
        Rule("blocks.{k}.mlp.fc{c}", "blocks_{k}/mlp/fc{c}", "linear"),
        Rule("fc_norm", "fc_norm", "ln", role="fc_norm"),
        Rule("head", "head", "linear", role="head"),
        # AU-DFER's MAE-DFER model code is unpublished (spec section 3); accept
        # the names its other two backbones use, renamed to `au_head` first.
        Rule("au_head", "au_head", "linear", role="au_head"),
    ]


@dataclasses.dataclass(frozen=True)
class _Source:
    """How one checkpoint kind is read.

    Attributes:
        name: the source kind.
        family: the model family it loads into.
        description: for the report.
        rules: the model's rules.
        renames: `(regex, replacement)` applied to every key, in order.
        drops: `(regex, reason)`: keys deliberately not loaded.
        fresh: predicate on a rule: its Flax leaves are not in this checkpoint
            kind (reported fresh; no missing-key error).
    """
    name: str
    family: str
    description: str
    rules: Callable[[], list[Rule]]
    renames: tuple[tuple[str, str], ...] = ()
    drops: tuple[tuple[str, str], ...] = ()
    fresh: Callable[[Rule], Optional[str]] = lambda rule: None


_BN_COUNTER = (r"(^|\.)num_batches_tracked$", "BatchNorm counter, no Flax counterpart")

SOURCES: dict[str, _Source] = {
    "former_dfer": _Source(
        "former_dfer", "former_dfer", "Former-DFER checkpoint (main_DFEW.py save_checkpoint)",
        _former_dfer_rules, drops=(_BN_COUNTER,)),
    "r3d18_kinetics": _Source(
        "r3d18_kinetics", "m3dfel", "torchvision R3D-18 Kinetics-400 (r3d_18-b3b3357e.pth) -> "
        "M3DFEL features", _m3dfel_rules,
        renames=((r"^stem\.", "features.0."), (r"^layer(\d)\.", r"features.\1.")),
        drops=(_BN_COUNTER, (r"^fc\.(weight|bias)$", "R3D-18 Kinetics-400 classifier "
                             "(400 classes), not part of M3DFEL")),
        fresh=lambda rule: None if rule.torch.startswith("features.")
        else "not in the R3D-18 backbone checkpoint"),
    "m3dfel": _Source(
        "m3dfel", "m3dfel", "M3DFEL checkpoint (solver.py Solver.save)", _m3dfel_rules,
        drops=(_BN_COUNTER,)),
    "mae_dfer_pretrain": _Source(
        "mae_dfer_pretrain", "mae_dfer", "MAE-DFER VoxCeleb2 pre-training (checkpoint-49.pth)",
        _mae_dfer_rules,
        drops=((r"^encoder\.norm\.(weight|bias)$", "encoder's final LayerNorm, unused by "
                "fine-tuning (it has fc_norm)"),
               (r"^decoder\.", "pre-training decoder"),
               (r"^encoder_to_decoder\.weight$", "pre-training encoder-to-decoder projection"),
               (r"^mask_token$", "pre-training mask token")),
        renames=((r"^(encoder|backbone)\.", ""),),
        fresh=lambda rule: ("not in the pre-training checkpoint"
                            if rule.role in ("head", "au_head", "fc_norm") else None)),
    "mae_dfer": _Source(
        "mae_dfer", "mae_dfer", "MAE-DFER fine-tuned checkpoint (utils.save_model)",
        _mae_dfer_rules,
        renames=((r"^(AU_fc|fc_au)\.", "au_head."),)),
}


def _family(model_name: str) -> str:
    family = model_name[:-len("_tiny")] if model_name.endswith("_tiny") else model_name
    if family not in ("former_dfer", "m3dfel", "mae_dfer"):
        raise ValueError(f"no checkpoint mapping for model {model_name!r}; expected "
                         "former_dfer, m3dfel, mae_dfer or their _tiny variants")
    return family


def detect_source(model_name: str, keys: Iterable[str]) -> str:
    """The checkpoint kind (a `SOURCES` name) for a model and its (unprefixed) keys.

    M3DFEL: torchvision R3D-18 keys start with `stem.`; MAE-DFER: pre-training
    keys start with `encoder.` or `decoder.` (backbones.md section 4 table;
    `backbone.` too, which MAE-DFER's fine-tuning also strips).

    Raises:
        ValueError: unknown model name.
    """
    family, keys = _family(model_name), list(keys)
    if family == "m3dfel" and any(k.startswith(("stem.", "layer1.")) for k in keys):
        return "r3d18_kinetics"
    if family == "mae_dfer" and any(k.startswith(("encoder.", "decoder.", "backbone."))
                                    for k in keys):
        return "mae_dfer_pretrain"
    return family


@dataclasses.dataclass
class ConversionReport:
    """What happened to every checkpoint key and every Flax leaf.

    Attributes:
        model_name: the Flax model (`get_model` name).
        source: the checkpoint kind (`SOURCES` key).
        loaded: `(flax path, torch keys)` per loaded Flax leaf; flax path is
            `'collection/module/.../leaf'`.
        dropped: `(torch key, reason)` per deliberately unused checkpoint key.
        fresh: `(flax path, reason)` per Flax leaf left at its template value.
        errors: unknown, missing and mis-shaped keys, by name.
        notes: prefix stripping and other remarks.
    """
    model_name: str
    source: str
    loaded: list[tuple[str, tuple[str, ...]]] = dataclasses.field(default_factory=list)
    dropped: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    fresh: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when there is no error."""
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (for checkpoint metadata)."""
        return {"model_name": self.model_name, "source": self.source,
                "loaded": [[p, list(k)] for p, k in self.loaded],
                "dropped": [list(x) for x in self.dropped],
                "fresh": [list(x) for x in self.fresh],
                "errors": list(self.errors), "notes": list(self.notes)}

    def summary(self, verbose: bool = False) -> str:
        """Human-readable report: counts, every dropped key, fresh leaf and error
        by name (every loaded leaf too when `verbose`)."""
        n_keys = len({k for _, keys in self.loaded for k in keys})
        lines = [f"conversion {self.source} -> {self.model_name}: {len(self.loaded)} Flax leaves "
                 f"loaded from {n_keys} checkpoint keys, {len(self.dropped)} keys dropped, "
                 f"{len(self.fresh)} leaves fresh, {len(self.errors)} errors"]
        lines += [f"  note: {n}" for n in self.notes]
        if verbose:
            lines += [f"  loaded {p} <- {', '.join(k)}" for p, k in self.loaded]
        lines += [f"  dropped {k}: {r}" for k, r in self.dropped]
        if verbose:
            lines += [f"  fresh {p}: {r}" for p, r in self.fresh]
        else:
            # Group by top-level module: an R3D-18 import leaves ~75 fresh leaves.
            counts: dict[tuple[str, str], int] = {}
            for p, r in self.fresh:
                key = ("/".join(p.split("/")[:2]), r)
                counts[key] = counts.get(key, 0) + 1
            lines += [f"  fresh {m} ({n} leaves): {r}" for (m, r), n in counts.items()]
        lines += [f"  ERROR {e}" for e in self.errors]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


class ConversionError(ValueError):
    """The checkpoint does not fit the model; `.report` lists every problem."""

    def __init__(self, report: ConversionReport):
        super().__init__(f"{len(report.errors)} conversion errors:\n" +
                         "\n".join(f"  {e}" for e in report.errors))
        self.report = report


def _flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> _Leaves:
    out: _Leaves = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, prefix + (str(k),)))
        else:
            out[prefix + (str(k),)] = v
    return out


def _unflatten(flat: _Leaves) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, v in flat.items():
        node = tree
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = v
    return tree


def strip_prefixes(state_dict: Mapping[str, Any], report: Optional[ConversionReport] = None,
                   prefixes: Sequence[str] = ("module.",)) -> dict[str, Any]:
    """Removes a DataParallel/DDP `module.` prefix where present (spec section 4)."""
    out = {}
    stripped = 0
    for key, value in state_dict.items():
        for p in prefixes:
            if key.startswith(p):
                key, stripped = key[len(p):], stripped + 1
                break
        if key in out:
            raise ValueError(f"checkpoint key {key!r} occurs with and without a prefix")
        out[key] = value
    if stripped and report is not None:
        report.notes.append(f"stripped the prefix {'/'.join(prefixes)} from {stripped} of "
                            f"{len(out)} keys")
    return out


def _leaf_name(module: tuple[str, ...], rel: tuple[str, ...]) -> str:
    """`('s_former', 'conv1')`, `('params', 'kernel')` -> `'params/s_former/conv1/kernel'`."""
    return "/".join((rel[0],) + module + rel[1:])


def _load_group(rule: Rule, module: tuple[str, ...], leaves: _Leaves, values: dict[str, str],
                members: Mapping[str, tuple[str, np.ndarray]], src: _Source, strict: bool,
                report: ConversionReport, out: _Leaves) -> None:
    """Converts one PyTorch module into one Flax module's leaves (written to `out`),
    or records why not in `report`."""
    mstr = "/".join(module)
    torch_keys = {mem: rule.torch_key(mem, values)
                  for mem in _required_members(rule.kind, leaves)}
    fresh_reason = src.fresh(rule)
    if not members:
        if fresh_reason is None and rule.role == "au_head":
            fresh_reason = "no AU head in the checkpoint"
        if fresh_reason is not None:
            report.fresh += [(_leaf_name(module, rel), fresh_reason) for rel in sorted(leaves)]
        else:
            report.errors += [f"missing key {k!r}: needed for Flax {mstr}"
                              for k in torch_keys.values()]
        return
    missing = [k for mem, k in torch_keys.items() if mem not in members]
    extra = [members[mem][0] for mem in members if mem not in torch_keys]
    report.errors += [f"missing key {k!r}: needed for Flax {mstr}" for k in missing]
    report.errors += [f"unknown key {k!r}: Flax {mstr} has no leaf for it" for k in extra]
    if missing or extra:
        return
    arrays = {mem: arr for mem, (_, arr) in members.items()}
    keys = {mem: members[mem][0] for mem in torch_keys}
    src_desc = ", ".join(f"{k} {tuple(arrays[m].shape)}" for m, k in keys.items())
    try:
        converted = _convert_group(rule.kind, arrays, leaves)
    except ValueError as e:
        report.errors.append(f"mis-shaped keys {src_desc}: {e}")
        return
    bad = []
    for rel, arr in converted.items():
        if rel not in leaves:
            bad.append(f"{_leaf_name(module, rel)} does not exist in the Flax model")
        elif tuple(arr.shape) != tuple(leaves[rel].shape):
            bad.append(f"converts to {tuple(arr.shape)} for Flax {_leaf_name(module, rel)} "
                       f"of shape {tuple(leaves[rel].shape)}")
    bad += [f"leaves nothing for Flax {_leaf_name(module, rel)}"
            for rel in sorted(set(leaves) - set(converted))]
    if bad:
        if rule.role in ("head", "au_head") and not strict:
            report.dropped += [(k, f"shape {tuple(arrays[m].shape)} does not fit the model's "
                                f"{mstr} ({'; '.join(bad)}): head re-initialised")
                               for m, k in keys.items()]
            report.fresh += [(_leaf_name(module, rel), f"the checkpoint's {rule.role} has "
                              "another shape") for rel in sorted(leaves)]
        else:
            report.errors.append(f"mis-shaped keys {src_desc}: " + "; ".join(bad))
        return
    for rel, arr in sorted(converted.items()):
        out[(rel[0],) + module + rel[1:]] = np.asarray(arr, dtype=leaves[rel].dtype)
        report.loaded.append((_leaf_name(module, rel), tuple(keys.values())))


def convert_state_dict(model_name: str, state_dict: Mapping[str, Any],
                       target_variables: Mapping[str, Any], *, source: str = "auto",
                       strict: bool = False) -> tuple[dict[str, Any], ConversionReport]:
    """Maps a PyTorch state_dict onto the Flax variables of a backbone.

    Args:
        model_name: `audfer_jax.models.get_model` name (`former_dfer`, `m3dfel`,
            `mae_dfer` or a `_tiny` variant, which has the same key structure).
        state_dict: `{key: array}` in PyTorch layouts (NumPy arrays, or anything
            `np.asarray` takes), as `load_torch_checkpoint` returns it; a
            `module.` prefix is stripped.
        target_variables: the model's variables, `{'params': ..., 'batch_stats':
            ...}`: concrete arrays (fresh leaves keep them) or
            `jax.ShapeDtypeStruct`s from `jax.eval_shape(model.init, ...)`
            (fresh leaves stay abstract; fill them from a real init).
        source: a `SOURCES` name, or `'auto'` (`detect_source`).
        strict: a head (`fc`/`head` or the AU head) whose shape differs from the
            model's is an error instead of dropped and reported fresh.

    Returns:
        `(variables, report)`: `variables` has the structure of
        `target_variables`, loaded leaves as NumPy arrays cast to the template
        leaf's dtype, fresh leaves as given; `report` accounts for every key and
        leaf. An AU head absent from the checkpoint is always fresh (the
        original releases have none). MAE-DFER's `blocks.k.*` keys fill row k
        of the stacked `blocks` leaves (the last block: `last_block`); the
        report names the per-block paths (`blocks_k/...`,
        `mae_dfer.per_block_layout`).

    Raises:
        ConversionError: any unknown, missing or mis-shaped key (all of them
            named in the message and in `.report.errors`).
        ValueError: unknown model or source name.
    """
    family = _family(model_name)
    report = ConversionReport(model_name, "")
    sd = strip_prefixes(state_dict, report)
    if source == "auto":
        source = detect_source(model_name, sd)
    if source not in SOURCES:
        raise ValueError(f"unknown checkpoint source {source!r}; known: {sorted(SOURCES)}")
    src = SOURCES[source]
    if src.family != family:
        raise ValueError(f"checkpoint source {source!r} does not fit model {model_name!r}")
    report.source = source
    rules = src.rules()
    groups = _group_torch_keys(sd, src, rules, model_name, report)
    # MAE-DFER's stacked blocks: the rules map `blocks.k.*` onto the
    # per-block view (`blocks_k/...`), restacked at the end.
    stacked = family == "mae_dfer" and not mae_dfer.has_per_block_layout(target_variables)
    if stacked:
        target_variables = mae_dfer.per_block_layout(target_variables)
    template = _flatten(target_variables)
    owned, covered = _own_flax_leaves(template, rules)
    out = dict(template)
    expected: set[_GroupId] = set()
    for (module, i), (values, leaves) in owned.items():
        gid = (i, tuple(sorted(values.items())))
        expected.add(gid)
        _load_group(rules[i], module, leaves, values, groups.get(gid, {}), src, strict,
                    report, out)

    for gid, members in groups.items():
        if gid not in expected:
            rule = rules[gid[0]]
            target = _pattern_format(rule.flax, dict(gid[1]))
            report.errors += [f"unknown key {k!r} {tuple(a.shape)}: the Flax model has no "
                              f"{target}" for k, a in members.values()]
    for path in sorted(set(template) - covered):
        report.errors.append(f"Flax leaf {'/'.join(path)} has no mapping from {source} keys")
    if report.errors:
        raise ConversionError(report)
    variables = _unflatten(out)
    return (mae_dfer.stacked_layout(variables) if stacked else variables), report


# A group of checkpoint keys that feed one Flax module: (rule index, the rule's
# placeholder values as sorted (name, value) pairs).
_GroupId = tuple[int, tuple[tuple[str, str], ...]]


def _group_torch_keys(sd: Mapping[str, Any], src: _Source, rules: list[Rule],
                      model_name: str, report: ConversionReport
                      ) -> dict[_GroupId, dict[str, tuple[str, np.ndarray]]]:
    """Sorts the checkpoint keys into rule groups: renames, drops, then rule matching.

    Returns:
        `{group id: {member: (checkpoint key, array)}}`; dropped keys go to
        `report.dropped`, keys that no rule matches to `report.errors`.
    """
    groups: dict[_GroupId, dict[str, tuple[str, np.ndarray]]] = {}
    torch_regexes = [r.torch_regex for r in rules]
    for key, value in sd.items():
        reason = next((why for pat, why in src.drops if re.search(pat, key)), None)
        if reason is not None:
            report.dropped.append((key, reason))
            continue
        name = key
        for pat, repl in src.renames:
            name = re.sub(pat, repl, name)
        for i, rx in enumerate(torch_regexes):
            m = rx.match(name)
            if m:
                values = {k: v for k, v in m.groupdict().items() if k != "_member"}
                member = m.groupdict().get("_member", "")
                groups.setdefault((i, tuple(sorted(values.items()))), {})[member] = (
                    key, np.asarray(value))
                break
        else:
            report.errors.append(f"unknown key {key!r} {tuple(np.shape(value))}: no Flax "
                                 f"counterpart in {model_name}")
    return groups


def _own_flax_leaves(template: _Leaves, rules: list[Rule]
                     ) -> tuple[dict[tuple[tuple[str, ...], int], tuple[dict[str, str], _Leaves]],
                                set[tuple[str, ...]]]:
    """Assigns each Flax leaf to the deepest module path a rule names.

    An attention's `proj` Dense is its own rule, not part of the attention.

    Returns:
        `({(module path, rule index): (placeholder values, {relative path:
        leaf})}, the leaf paths some rule covers)`.
    """
    flax_regexes = [r.flax_regex for r in rules]
    owned: dict[tuple[tuple[str, ...], int], tuple[dict[str, str], _Leaves]] = {}
    covered: set[tuple[str, ...]] = set()
    for (collection, *path), leaf in template.items():
        for n in range(len(path), 0, -1):
            mstr = "/".join(path[:n])
            is_leaf = n == len(path)   # `param` rules name leaves, the others modules
            hit = next(((i, m) for i, rx in enumerate(flax_regexes)
                        if (m := rx.match(mstr)) and (rules[i].kind == "param") == is_leaf),
                       None)
            if hit is not None:
                # The same module path and rule always match with the same values.
                owner = (tuple(path[:n]), hit[0])
                _, leaves = owned.setdefault(owner, (hit[1].groupdict(), {}))
                leaves[(collection, *path[n:])] = leaf
                covered.add((collection, *path))
                break
    return owned, covered


# ---------------------------------------------------------------------------
# 3. Reading PyTorch checkpoint files; the model's variable template.
# ---------------------------------------------------------------------------


class PickleStub:
    """Inert stand-in for a class or function named in a checkpoint pickle.

    Training scripts pickle their own objects beside the weights (Former-DFER's
    `__main__.RecorderMeter`, the `args` Namespace of M3DFEL and MAE-DFER,
    backbones.md sections 1-3). Loading must neither import nor run those
    scripts, so each such global becomes a subclass of this stub: calling or
    building it only records its arguments and state.
    """
    pickled_name = "?"

    def __new__(cls, *args, **kwargs):
        obj = super().__new__(cls)
        obj.__dict__["stub_args"] = args
        return obj

    def __init__(self, *args, **kwargs):
        del args, kwargs

    def __setstate__(self, state):
        self.__dict__["stub_state"] = state

    def __repr__(self) -> str:
        return f"<stub of {self.pickled_name}>"


def _stub(full_name: str) -> type:
    module, _, name = full_name.rpartition(".")
    return type(name or full_name, (PickleStub,),
                {"__module__": module, "pickled_name": full_name})


def _real_global(name: str) -> Any:
    """The real class for a harmless pickled container, else None.

    `argparse.Namespace` holds the `args` of M3DFEL and MAE-DFER: attributes
    only, no code runs when it is rebuilt. argparse is imported here only to
    rebuild that object (this module parses no flags).
    """
    if name == "argparse.Namespace":
        import argparse  # pylint: disable=import-outside-toplevel
        return argparse.Namespace
    return None


_UNSUPPORTED_GLOBAL = re.compile(r"GLOBAL (\S+) was not an allowed global")


def _torch_load_restricted(path: str, torch) -> Any:
    """`torch.load(weights_only=True)` with every non-tensor global stubbed."""
    allowed: dict[str, Any] = {}
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - legacy (non-zip) files: found by trial below
        names = []
    for name in names:
        allowed[name] = _real_global(name) or _stub(name)
    for _ in range(100):
        entries = [(obj, name) for name, obj in allowed.items()]
        try:
            with torch.serialization.safe_globals(entries):
                return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch raises UnpicklingError variants
            m = _UNSUPPORTED_GLOBAL.search(str(e))
            if not m or m.group(1) in allowed:
                raise ValueError(f"{path}: refused by the restricted unpickler "
                                 f"(weights_only): {e}") from e
            allowed[m.group(1)] = _real_global(m.group(1)) or _stub(m.group(1))
    raise ValueError(f"{path}: too many unknown globals in the pickle")


def load_torch_checkpoint(path: str, info: Optional[dict[str, Any]] = None
                          ) -> dict[str, np.ndarray]:
    """Reads a PyTorch checkpoint into `{key: np.ndarray}` without running its code.

    Loads with `torch.load(map_location='cpu', weights_only=True)`, allow-listing
    every other global as an inert `PickleStub` (e.g. `__main__.RecorderMeter`
    of Former-DFER, whose `best_acc` is a CUDA tensor, hence the CPU map) and
    `argparse.Namespace` as itself; modules torch blocks (`os`, `sys`, ...) are
    refused. Then unwraps the weights from a top-level `state_dict`, `model` or
    `module` entry (in that order, repeatedly), else takes the dict itself
    (torchvision's plain R3D-18 state_dict), backbones.md section 4. Key
    prefixes such as `module.` are left to `convert_state_dict`.

    Args:
        path: a `.pth`/`.pt` file.
        info: if given, filled with `top_level_keys`, `unwrapped` (the path of
            containers taken) and JSON-friendly scalars among the top-level
            entries (`epoch`, `best_acc`, ...).

    Returns:
        `{key: array}` in PyTorch layouts and dtypes (bfloat16 becomes float32,
        which NumPy lacks).

    Raises:
        ImportError: torch is not installed (`pip install audfer_jax[convert]`).
        ValueError: the file is refused by the restricted unpickler, holds no
            dict of tensors, or a weight entry is not a tensor (named).
        FileNotFoundError: `path` does not exist.
    """
    try:
        import torch  # pylint: disable=import-outside-toplevel
    except ImportError as e:
        raise ImportError("reading PyTorch checkpoints needs torch: pip install "
                          "'audfer_jax[convert]' (CPU wheel, see README)") from e
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    obj = _torch_load_restricted(path, torch)
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a dict at the top level, got {type(obj).__name__}")
    unwrapped: list[str] = []
    if info is not None:
        info["top_level_keys"] = [str(k) for k in obj]
        for k, v in obj.items():
            if isinstance(v, (int, float, str, bool)):
                info[str(k)] = v
            elif isinstance(v, torch.Tensor) and v.numel() == 1:
                info[str(k)] = v.item()
    while True:
        inner = next((k for k in ("state_dict", "model", "module")
                      if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        unwrapped.append(inner)
        obj = obj[inner]
    if info is not None:
        info["unwrapped"] = unwrapped
    out: dict[str, np.ndarray] = {}
    for key, value in obj.items():
        where = "/".join(unwrapped + [str(key)])
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{path}: entry {where!r} is a {type(value).__name__}, not a "
                             "tensor; is this a model checkpoint?")
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:
            value = value.float()
        out[str(key)] = value.numpy()
    if not out:
        raise ValueError(f"{path}: no tensors found in the checkpoint dict "
                         f"({'/'.join(unwrapped) or 'top level'} is empty)")
    return out


def model_template(model: Any, model_name: str) -> tuple[Any, Callable[[], Any]]:
    """The target of a conversion: the model's variables, abstract, and their initialiser.

    Args:
        model: the Flax module (`audfer_jax.models.get_model(model_name, ...)`).
        model_name: its `get_model` name (for `default_input_shape`).

    Returns:
        `(template, init)`: the variables as `jax.ShapeDtypeStruct`s
        (`jax.eval_shape` of `model.init` on one `[1, T, H, W, 3] uint8` clip
        of the default size), and `() -> variables` that initialises them for
        real (`Module.lazy_init`: no forward computation; see `fill_fresh`).
    """
    t, h, w = default_input_shape(model_name)
    clips = jax.ShapeDtypeStruct((1, t, h, w, 3), jnp.uint8)
    key = jax.random.key(0)

    def init(key, x):
        return model.init({"params": key, "dropout": key}, x, train=False)

    def real_init():
        return model.lazy_init({"params": key, "dropout": key}, clips, train=False)

    return jax.eval_shape(init, key, clips), real_init


def fill_fresh(variables: Mapping[str, Any], init: Callable[[], Any]) -> dict[str, Any]:
    """Replaces the leaves a conversion left abstract by real initial values.

    Args:
        variables: `convert_state_dict` output on a `jax.eval_shape` template:
            NumPy leaves (loaded) and `jax.ShapeDtypeStruct` leaves (fresh).
        init: `() -> variables` of the same structure (the model's own
            initialisers); called only when some leaf is abstract (it compiles
            the initialisation, which takes a while on a CPU).

    Returns:
        The same structure with NumPy leaves only.

    Raises:
        ValueError: `init` lacks a leaf that is abstract in `variables`.
    """

    flat = _flatten(variables)
    abstract = [p for p, v in flat.items() if isinstance(v, jax.ShapeDtypeStruct)]
    if not abstract:
        return _unflatten({p: np.asarray(v) for p, v in flat.items()})
    real = _flatten(jax.device_get(init()))
    missing = [p for p in abstract if p not in real]
    if missing:
        raise ValueError(f"the initialiser gives no value for {', '.join(map('/'.join, missing))}")
    return _unflatten({p: np.asarray(real[p]) if p in abstract else np.asarray(v)
                       for p, v in flat.items()})
