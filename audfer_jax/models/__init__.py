"""Model registry: backbone names -> Flax modules, imported lazily.

    model = get_model("former_dfer", num_classes=7)
    variables = model.init({"params": key}, clips, train=False)
    out = model.apply(variables, clips, train=False)   # ModelOutput

Names: `former_dfer`, `former_dfer_tiny`, `m3dfel`, `m3dfel_tiny`, `mae_dfer`,
`mae_dfer_tiny`. The `_tiny` variants run the same code at test sizes.

Any other backbone: an import path `package.module:factory` (a factory returning
a Flax module that maps clips to pooled features `[B, D]`), wrapped with the
expression and AU heads by `with_au_head` (see `audfer_jax.models.plugin`):

    model = get_model("my_pkg.my_module:make_backbone", num_classes=7)
    model = with_au_head(MyBackbone(), num_classes=7)
"""

from __future__ import annotations

import importlib
from typing import Any

from flax import linen as nn

# Public names of `audfer_jax.models.plugin`, imported on first use like the
# backbones (importing the registry loads no model code).
_PLUGIN_NAMES = ("AUHeadModel", "BackboneError", "BackboneImportError", "is_import_path",
                 "with_au_head")


def __getattr__(name: str) -> Any:
    """`with_au_head`, `AUHeadModel`, `BackboneError`, `BackboneImportError`,
    `is_import_path` from `audfer_jax.models.plugin` (PEP 562 lazy attributes)."""
    if name in _PLUGIN_NAMES:
        from audfer_jax.models import plugin
        return getattr(plugin, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _is_import_path(name: str) -> bool:
    # `plugin.is_import_path` without importing the plug-in module.
    return ":" in str(name)

# name -> (module, factory, default (T, H, W) of the input clips).
# Input sizes: backbones.md table (Former-DFER and M3DFEL 16x112x112, MAE-DFER
# 16x160x160); the tiny sizes are those of the tiny factories.
# None: read the size off the built module (its `num_frames` and `image_size`
# or `img_size` attributes).
_REGISTRY: dict[str, tuple[str, str, tuple[int, int, int] | None]] = {
    "former_dfer": ("audfer_jax.models.former_dfer", "former_dfer", (16, 112, 112)),
    "former_dfer_tiny": ("audfer_jax.models.former_dfer", "former_dfer_tiny", None),
    "m3dfel": ("audfer_jax.models.m3dfel", "m3dfel", (16, 112, 112)),
    "m3dfel_tiny": ("audfer_jax.models.m3dfel", "m3dfel_tiny", None),
    "mae_dfer": ("audfer_jax.models.mae_dfer", "mae_dfer", (16, 160, 160)),
    "mae_dfer_tiny": ("audfer_jax.models.mae_dfer", "mae_dfer_tiny", None),
}


def available_models() -> list[str]:
    """Sorted names accepted by `get_model`."""
    return sorted(_REGISTRY)


def _entry(name: str) -> tuple[str, str, tuple[int, int, int] | None]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: "
                         f"{', '.join(available_models())}, or an import path "
                         "'package.module:factory' of your own backbone")
    return _REGISTRY[name]


def get_model(name: str, num_classes: int = 7, num_aus: int = 18, **overrides: Any) -> nn.Module:
    """Builds a backbone with its AU head.

    Args:
        name: one of `available_models()`, or `package.module:factory` of a
            user backbone: the factory is called with `overrides` as keywords
            (and `num_classes`/`num_aus` when it names them) and its module is
            wrapped by `with_au_head` (`plugin.build`).
        num_classes: expression classes C of the `fc`/`head` layer.
        num_aus: AU head width (18 OpenFace presence AUs, `audfer_jax.au.AU_NAMES`).
        **overrides: module attributes to change: e.g. `dtype` (compute dtype,
            `jnp.bfloat16` or the string "bfloat16", see `compute_dtype`),
            `remat_policy` (what the blocks' backward pass recomputes:
            `layers.REMAT_POLICIES`; the old `remat=True/False` means
            `full`/`none`).

    Returns:
        An unbound `flax.linen.Module` whose `apply(variables, clips, train=...)`
        returns `audfer_jax.models.base.ModelOutput`.

    Raises:
        ValueError: unknown name (the message lists the known ones), an
            unsupported dtype or an unknown remat policy.
        BackboneImportError, BackboneError: an import path that cannot be
            imported, or whose backbone breaks the contract (one line naming
            the path and what was expected).
    """
    if _is_import_path(name):
        from audfer_jax.models import plugin
        return plugin.build(name, num_classes, num_aus, **overrides)
    module_name, attr, _ = _entry(name)
    if "dtype" in overrides:
        overrides["dtype"] = compute_dtype(overrides["dtype"])
    if "remat" in overrides or "remat_policy" in overrides:
        from audfer_jax.models import layers  # the old boolean `remat` -> a policy name
        value = overrides.pop("remat_policy", None)
        value = overrides.pop("remat") if value is None else value
        overrides["remat_policy"] = layers.remat_policy_name(value)
    factory = getattr(importlib.import_module(module_name), attr)
    fields = _module_fields(factory)
    overrides = _size_names(overrides, fields)
    unknown = sorted(set(overrides) - fields) if fields else []
    if unknown:
        from audfer_jax import hints  # pylint: disable=g-import-not-at-top
        raise ValueError(f"model {name!r} has no field(s) {unknown} (config.model_overrides)"
                         + hints.did_you_mean(unknown[0], fields)
                         + f"; its fields: {', '.join(sorted(fields))}")
    return factory(num_classes=num_classes, num_aus=num_aus, **overrides)


# One name for the input side across backbones: `image_size` (the data config's
# name). MAE-DFER's original calls it `img_size`, as run configs and converted
# checkpoints written before the rename do: either is accepted.
_SIZE_NAMES = ("image_size", "img_size")


def _module_fields(factory) -> set[str]:
    """The attributes of the Flax module a registry factory returns (its return type)."""
    import typing  # pylint: disable=g-import-not-at-top
    cls = typing.get_type_hints(factory).get("return")
    names = getattr(cls, "__dataclass_fields__", None) or {}
    return set(names) - {"parent", "name", "num_classes", "num_aus"}


def _size_names(overrides: dict[str, Any], fields: set[str]) -> dict[str, Any]:
    """`overrides` with `image_size` / `img_size` renamed to the one the module has.

    Raises:
        ValueError: both names given with different values.
    """
    given = [n for n in _SIZE_NAMES if n in overrides]
    own = next((n for n in _SIZE_NAMES if n in fields), None)
    if not given or own is None:
        return overrides
    values = {overrides[n] for n in given}
    if len(values) > 1:
        raise ValueError(f"model overrides image_size and img_size differ ({sorted(values)}); "
                         "give image_size only")
    out = {k: v for k, v in overrides.items() if k not in _SIZE_NAMES}
    out[own] = values.pop()
    return out


# Compute dtypes the backbones support (parameters stay float32 regardless).
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")


def compute_dtype(value: Any) -> Any:
    """A model `dtype` override as a NumPy dtype (`"bfloat16"` -> `jnp.bfloat16`).

    Config files and command lines give the dtype as a string
    (`--config.dtype=bfloat16`); the modules want a dtype.

    Raises:
        ValueError: not one of `COMPUTE_DTYPES`.
    """
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    try:
        dtype = jnp.dtype(value)
    except TypeError as e:
        raise ValueError(f"model dtype must be one of {COMPUTE_DTYPES}, got {value!r}") from e
    if dtype.name not in COMPUTE_DTYPES:
        raise ValueError(f"model dtype must be one of {COMPUTE_DTYPES}, got {value!r}")
    return dtype


def with_scan_blocks(model: nn.Module, name: str, scan: bool = True) -> nn.Module:
    """`model` with its stacked blocks run as a loop (`scan=True`, MAE-DFER's
    default) or as straight-line code (`scan=False`); other models as they are.

    Only MAE-DFER has stacked blocks (`mae_dfer.MAEDFER.scan_blocks`); the
    other backbones compile their few blocks unrolled either way.

    Args:
        model: a built backbone.
        name: its registry name or import path (for the error).
        scan: the `scan_blocks` value.

    Returns:
        `model.clone(scan_blocks=scan)`, or `model` without that attribute
        when `scan` is False (nothing to unroll).

    Raises:
        ValueError: `scan` is True for a model without a `scan_blocks`
            attribute (asked explicitly, e.g. `bench model --scan-blocks`).
    """
    if "scan_blocks" not in getattr(type(model), "__dataclass_fields__", {}):
        if not scan:
            return model
        raise ValueError(f"only mae_dfer scans its blocks; {name} has no scan_blocks")
    return model.clone(scan_blocks=scan)


def default_input_shape(name: str, data_config: Any = None) -> tuple[int, int, int]:
    """`(T, H, W)` of the clips the named model expects by default.

    Args:
        name: a registered name or an import path.
        data_config: for an import path whose backbone has no `num_frames` and
            `image_size` attributes: the data config (attributes `num_frames`,
            `image_size`) whose clip size the model takes. Unused for
            registered names.

    Raises:
        ValueError: unknown name, or an import path whose size neither the
            backbone nor `data_config` gives.
    """
    if _is_import_path(name):
        from audfer_jax.models import plugin
        return plugin.input_shape(name, data_config)
    _, _, shape = _entry(name)
    if shape is not None:
        return shape
    # A tiny variant whose size its own module defines: read it off the module.
    model = get_model(name)
    side = getattr(model, "image_size", None) or getattr(model, "img_size")
    return (int(model.num_frames), int(side), int(side))
