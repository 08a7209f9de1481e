"""The `jax.export` artifact: one file, `model.jax_export`, run with `jax` alone.

    exp = jax.export.deserialize(open("model.jax_export", "rb").read())
    out = exp.call(clips)        # clips [B, T, S, S, 3] uint8, any B >= 1

The file is `jax.export.Exported.serialize()` of `forward.make_forward(model)`
with the variables closed over (constants of the StableHLO module), the batch
axis a symbolic dimension (`jax.export.symbolic_shape("b")`). It is lowered
for `PLATFORMS` at once (`platforms=` of `jax.export.export`; the caller's
platform picks its lowering at run time); a platform whose lowering fails is
left out and reported, so that one refusal does not cost the others.

A later JAX reads the artifact within the backward-compatibility window of
StableHLO and jax.export (at least 6 months: StableHLO's compatibility
guarantee, openxla/stablehlo docs/compatibility.md); an artifact this JAX
cannot read is refused by `jax.export.deserialize` and reported here as an
`ArtifactError`.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from audfer_jax import hints
from audfer_jax import paths
from audfer_jax.export import forward as forward_lib
from audfer_jax.export.manifest import ArtifactError
from audfer_jax.models import platform

FILENAME = "model.jax_export"
PLATFORMS = ("cpu", "cuda", "tpu")
BATCH_DIM = "b"


def _export_for(fn: Callable, spec: jax.ShapeDtypeStruct, platforms: Sequence[str]):
    """`jax.export.export(jax.jit(fn), platforms=...)(spec)` and the layer forms traced."""
    with platform.record_forms() as forms:
        exported = jax.export.export(jax.jit(fn), platforms=tuple(platforms))(spec)
    return exported, forms


def export(model: Any, variables: Any, input_shape: Sequence[int],
           platforms: Sequence[str] = PLATFORMS) -> tuple[Any, dict, list[str]]:
    """Lowers the forward of `model` with `variables` inside, batch axis symbolic.

    Args:
        model: the Flax module (`forward.model_for_dtype`).
        variables: its variables (NumPy leaves; `forward.variables_for_dtype`).
        input_shape: `(T, S, S)`.
        platforms: lowering platforms wanted (subset of `PLATFORMS`).

    Returns:
        `(exported, refused {platform: one-line reason}, layer forms traced)`.

    Raises:
        ExportError: no platform could be lowered, or a CPU-only layer form
            was traced.
    """
    bad = [p for p in platforms if p not in PLATFORMS]
    if bad or not platforms:
        raise forward_lib.ExportError(f"platforms {list(platforms)}: expected a non-empty "
                                      f"subset of {', '.join(PLATFORMS)}")
    batch, = jax.export.symbolic_shape(BATCH_DIM)
    spec = jax.ShapeDtypeStruct((batch, *(int(d) for d in input_shape), 3), jnp.uint8)
    fn = forward_lib.make_forward(model)
    closed = lambda clips: fn(variables, clips)  # noqa: E731  (variables as constants)
    try:
        exported, forms = _export_for(closed, spec, platforms)
        refused = {}
    except Exception:  # pylint: disable=broad-except
        # Find which platforms refuse, and keep the others.
        refused = {}
        for p in platforms:
            try:
                _export_for(closed, spec, [p])
            except Exception as e:  # pylint: disable=broad-except
                refused[p] = hints.one_line(e)[:300]
        ok = [p for p in platforms if p not in refused]
        if not ok:
            raise forward_lib.ExportError(
                    f"jax.export refused every platform: {refused}") from None
        exported, forms = _export_for(closed, spec, ok)
    names = forward_lib.check_portable(forms, "jax.export")
    return exported, refused, names


def write(path: str, exported: Any) -> str:
    """Serialises `exported` (no VJP) to `path`; returns the path."""
    paths.write_bytes(path, bytes(exported.serialize()))
    return path


def read(path: str) -> Any:
    """The `jax.export.Exported` in `path`, checked to run on this host's platform.

    Raises:
        ArtifactError: missing, not a serialised `Exported` (damaged), a newer
            serialisation version, or not lowered for this platform.
    """
    if not paths.isfile(path):
        raise ArtifactError(f"{path}: missing")
    try:
        exported = jax.export.deserialize(bytearray(paths.read_bytes(path)))
    except Exception as e:  # pylint: disable=broad-except
        # flatbuffers and the StableHLO reader raise many types on bad bytes.
        raise ArtifactError(f"{path}: not a readable jax.export artifact "
                            f"({type(e).__name__}: {hints.one_line(e)})") from None
    here = jax.default_backend()
    here = {"gpu": "cuda"}.get(here, here)
    if here not in exported.platforms:
        raise ArtifactError(f"{path}: exported for {', '.join(exported.platforms)}, not for "
                            f"this host's {here} (export again with --platforms {here})")
    return exported
