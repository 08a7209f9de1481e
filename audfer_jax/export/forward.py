"""The function an export serialises: the evaluation forward with probabilities.

    fn(variables, clips [B, T, S, S, 3] uint8) -> {"probs": [B, C], "au_probs": [B, A],
                                                   "logits": [B, C], "au_logits": [B, A]}

all float32: `probs = softmax(logits)`, `au_probs = sigmoid(au_logits)`, one
row per clip (views are combined outside, as model.json says). The model runs
in eval mode (`train=False`: no dropout, BatchNorm's running statistics).

Portable forms: several layers have a form written for XLA:CPU (frame-wise and
batch-chunked convolutions, `models/conv.py`; the CPU attention,
`models/layers.py`) chosen when the traced program is for CPU devices
(`models/platform.py`). An export runs on platforms it does not know yet, so
the forward is traced inside `platform.target(PORTABLE)`: every layer takes
lax's own form (`lax.conv_general_dilated`, `lax.reduce_window`,
`jax.nn.dot_product_attention`'s XLA form), which XLA:CPU, XLA:GPU and
XLA:TPU all compile. `traced_forms` records the forms a trace used, and
`check_portable` refuses a trace that used a CPU form.

`--dtype bfloat16`: registered backbones compute in bfloat16 (their `dtype`
attribute) with their parameters stored in bfloat16 (half the file size);
BatchNorm statistics stay float32, the outputs are float32.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from audfer_jax.models import platform

# The target label of an export trace: not "cpu", so no layer picks a CPU form.
PORTABLE = "portable"
DTYPES = ("float32", "bfloat16")


class ExportError(ValueError):
    """A checkpoint, option or model that cannot be exported (one line)."""


def model_for_dtype(model: Any, dtype: str, name: str) -> Any:
    """`model` computing in `dtype` (`model.clone(dtype=...)` for bfloat16).

    Raises:
        ExportError: unknown dtype, or bfloat16 for a module without a `dtype`
            attribute (an import-path backbone wrapped by the AU head).
    """
    if dtype not in DTYPES:
        raise ExportError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    if dtype == "float32":
        return model
    if "dtype" not in getattr(type(model), "__dataclass_fields__", {}):
        raise ExportError(f"{name}: the module has no `dtype` attribute, so it cannot "
                          "compute in bfloat16; export it with --dtype float32")
    return model.clone(dtype=jnp.dtype(dtype))


def variables_for_dtype(variables: Any, dtype: str) -> Any:
    """The variables as NumPy arrays, floating `params` cast to `dtype`.

    `batch_stats` (BatchNorm's running mean and variance) stay float32: the
    layers normalise in float32 (`models/batch_norm.py`).
    """
    variables = jax.tree.map(np.asarray, jax.device_get(dict(variables)))
    if dtype == "float32":
        return variables
    out = dict(variables)
    out["params"] = jax.tree.map(
            lambda a: a.astype(jnp.bfloat16) if np.issubdtype(a.dtype, np.floating) else a,
            variables["params"])
    return out


def make_forward(model: Any) -> Callable:
    """`fn(variables, clips) -> {probs, au_probs, logits, au_logits}` (module docstring)."""

    def forward(variables, clips):
        with platform.target(PORTABLE):
            out = model.apply(variables, clips, train=False)
        logits = out.logits.astype(jnp.float32)
        au_logits = out.au_logits.astype(jnp.float32)
        return {"probs": jax.nn.softmax(logits, axis=-1),
                "au_probs": jax.nn.sigmoid(au_logits),
                "logits": logits, "au_logits": au_logits}

    return forward


def check_portable(forms: Iterable[tuple[str, str]], what: str) -> list[str]:
    """The sorted forms a trace recorded (`platform.record_forms`); none may be a CPU form.

    Raises:
        ExportError: a CPU-only form was traced (names it and `what`).
    """
    names = sorted({f for f, _ in forms})
    cpu = [f for f in names if f in platform.CPU_FORMS]
    if cpu:
        raise ExportError(f"{what}: the traced program uses the XLA:CPU form(s) {cpu}; an "
                          "export must use lax's portable forms")
    return names
