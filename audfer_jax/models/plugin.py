"""AU-DFER on any backbone: `with_au_head` and `config.model` import paths.

AU-DFER's AU head and loss plug into existing DFER models (arXiv 2507.07678,
"integrate quantified AU-expression knowledge into various DFER models"). This
module makes that plug-in real for a user's own Flax video backbone:

    from audfer_jax import models
    model = models.with_au_head(MyBackbone(), num_classes=7)     # in Python
    --config.model=my_pkg.my_module:make_backbone               # in a config

A backbone is a `flax.linen.Module` whose `__call__(clips, train)` maps
`[B, T, H, W, 3] float32` clips in [0, 1] to pooled features `[B, D]` (any
floating dtype). `AUHeadModel` scales the pipeline's uint8 clips to [0, 1],
calls the backbone and adds the expression head `head` (D -> C) and the AU head
`au_head` (D -> 18) on the float32 features, initialised as the registered
Former-DFER and M3DFEL heads are (PyTorch's `nn.Linear` default,
`layers.torch_dense`). A backbone that already returns a `ModelOutput` is used
as it is: its output is checked and returned, no head is added.

Problems with a backbone raise `BackboneError` (a ValueError) with one line
naming the import path (or the backbone class) and what was expected; a module
or attribute that cannot be imported raises `BackboneImportError` (also an
ImportError). The shape and dtype checks run while the model is traced, i.e.
at its first `init` or `jax.eval_shape`; `get_model` traces it at build time
when the input size is known (`check_model`).
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import linen as nn

from audfer_jax.models import layers
from audfer_jax.models.base import ModelOutput

Array = jax.Array

# The separator of `package.module:factory` (setuptools entry-point syntax).
SEPARATOR = ":"


class BackboneError(ValueError):
    """A user backbone that does not meet the `with_au_head` contract."""


class BackboneImportError(BackboneError, ImportError):
    """`config.model` names a module or attribute that cannot be imported."""


def is_import_path(name: str) -> bool:
    """Whether `name` is `package.module:attribute` rather than a registered name."""
    return SEPARATOR in str(name)


def _describe(backbone: nn.Module) -> str:
    cls = type(backbone)
    return f"{cls.__module__}{SEPARATOR}{cls.__qualname__}"


def _check_array(value: Any, what: str, source: str, expected: str, ndim: int,
                 batch: int, width: int | None = None) -> None:
    """Raises BackboneError unless `value` is a floating `[batch, width]` array."""
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    if shape is None or dtype is None:
        raise BackboneError(f"{source}: {what} must be an array {expected}, got "
                            f"{type(value).__name__}")
    shape = tuple(shape)
    if len(shape) != ndim or shape[0] != batch or (width is not None and shape[1] != width):
        raise BackboneError(f"{source}: {what} must have shape {expected} for clips of "
                            f"batch {batch}, got shape {shape}")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise BackboneError(f"{source}: {what} must have a floating dtype, got {dtype}")


class AUHeadModel(nn.Module):
    """A backbone with AU-DFER's expression and AU heads.

    Attributes:
        backbone: `__call__(clips [B, T, H, W, 3] float32 in [0, 1], train: bool)`
            -> features `[B, D]` (floating), or a `ModelOutput`.
        num_classes: expression classes C.
        num_aus: AU head width (18 OpenFace presence AUs, `audfer_jax.au.AU_NAMES`).
        source: how the backbone was named (its import path), for error messages;
            None: the backbone's class.

    `__call__(clips, train)`: clips `[B, T, H, W, 3]` uint8 (divided by 255) or
    float in [0, 1]; returns `ModelOutput(logits [B, C] float32, au_logits
    [B, num_aus] float32, features [B, D] float32)`. Parameters: the backbone's
    under `backbone/`, then `head/{kernel [D, C], bias}` and
    `au_head/{kernel [D, num_aus], bias}`. The AU head only feeds the training
    loss; evaluation and `predict` read `logits`.

    Raises:
        BackboneError: (when traced) features not `[B, D]` or not floating; or
            a backbone `ModelOutput` whose logits are not `[B, C]` / `[B, num_aus]`.
    """
    backbone: nn.Module
    num_classes: int = 7
    num_aus: int = 18
    source: str | None = None

    @property
    def num_frames(self) -> int | None:
        """The backbone's `num_frames` attribute (clip length T), if it has one."""
        return getattr(self.backbone, "num_frames", None)

    @property
    def image_size(self) -> int | None:
        """The backbone's `image_size` (or `img_size`) attribute, if it has one."""
        return getattr(self.backbone, "image_size", None) or getattr(self.backbone, "img_size",
                                                                     None)

    @nn.compact
    def __call__(self, clips: Array, train: bool = False) -> ModelOutput:
        source = self.source or _describe(self.backbone)
        batch = clips.shape[0]
        out = self.backbone(layers.to_float_clips(clips, jnp.float32), train=train)
        if isinstance(out, ModelOutput):
            _check_array(out.logits, "ModelOutput.logits", source, f"[B, {self.num_classes}]",
                         2, batch, self.num_classes)
            _check_array(out.au_logits, "ModelOutput.au_logits", source, f"[B, {self.num_aus}]",
                         2, batch, self.num_aus)
            return out
        _check_array(out, "the backbone output", source, "[B, D] (pooled clip features)", 2,
                     batch)
        feat = out.astype(jnp.float32)
        d = feat.shape[-1]
        logits = layers.torch_dense(self.num_classes, d, name="head")(feat)
        au_logits = layers.torch_dense(self.num_aus, d, name="au_head")(feat)
        return ModelOutput(logits=logits, au_logits=au_logits, features=feat)


def with_au_head(backbone: nn.Module, num_classes: int, num_aus: int = 18, *,
                 source: str | None = None) -> AUHeadModel:
    """Adds AU-DFER's expression head and AU head to a Flax video backbone.

        model = with_au_head(MyBackbone(), num_classes=7)
        variables = model.init(rng, clips, train=False)     # clips [B, T, H, W, 3] uint8
        out = model.apply(variables, clips, train=False)    # ModelOutput

    Args:
        backbone: an unbound `flax.linen.Module`; `backbone(clips, train=...)`
            with clips `[B, T, H, W, 3] float32` in [0, 1] returns pooled
            features `[B, D]` (any floating dtype; cast to float32 for the heads)
            or a complete `ModelOutput` (then used as it is).
        num_classes: expression classes C.
        num_aus: AU head width (18, `audfer_jax.au.AU_NAMES`).
        source: name used in error messages (the import path); default the
            backbone's class.

    Returns:
        An `AUHeadModel`: `apply(variables, clips, train=...)` gives
        `ModelOutput(logits [B, C], au_logits [B, num_aus], features [B, D])`.

    Raises:
        BackboneError: `backbone` is not a `flax.linen.Module` (shape and dtype
            problems surface when the model is first traced; see `check_model`).
    """
    if not isinstance(backbone, nn.Module):
        raise BackboneError(f"{source or 'with_au_head'}: expected a flax.linen.Module backbone, "
                            f"got {type(backbone).__module__}.{type(backbone).__qualname__}")
    return AUHeadModel(backbone=backbone, num_classes=int(num_classes), num_aus=int(num_aus),
                       source=source)


def _import_module(path: str, module_name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        # Console scripts (`audfer-jax ...`) do not put the working directory on
        # sys.path as `python -m` does; a module next to the user's config
        # should still be found. Appended, so it never shadows an installed one.
        cwd = os.getcwd()
        if e.name == module_name.split(".")[0] and cwd not in sys.path and "" not in sys.path:
            sys.path.append(cwd)
            try:
                return importlib.import_module(module_name)
            except ModuleNotFoundError:
                pass
        raise BackboneImportError(f"config.model {path!r}: cannot import module {module_name!r} "
                                  f"({e}); expected an importable module (on sys.path or "
                                  "PYTHONPATH)") from None


def load_backbone(path: str, num_classes: int | None = None, num_aus: int | None = None,
                  **overrides: Any) -> nn.Module:
    """Imports `package.module:factory` and calls it to build the backbone.

    Args:
        path: `package.module:attr` (`attr` may be dotted, `Class.factory`).
            `attr` is a factory (a function or a Module class) or a Module
            instance (then `overrides` are applied with `clone`).
        num_classes, num_aus: passed to the factory only when its signature
            names them (a factory of a backbone that returns a `ModelOutput`).
        **overrides: keyword arguments of the factory (`config.model_overrides`).

    Returns:
        The unbound backbone module.

    Raises:
        BackboneImportError: malformed path, module or attribute missing.
        BackboneError: the factory rejects the arguments, or does not return a
            `flax.linen.Module`.
    """
    module_name, _, attr = str(path).partition(SEPARATOR)
    if not module_name or not attr or SEPARATOR in attr:
        raise BackboneImportError(f"config.model {path!r}: expected 'package.module:factory' "
                                  "(one ':') or a registered model name")
    obj = _import_module(path, module_name)
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise BackboneImportError(f"config.model {path!r}: module {module_name!r} has no "
                                      f"attribute {attr!r}; expected a function returning a "
                                      "flax.linen.Module")
        obj = getattr(obj, part)
    if isinstance(obj, nn.Module):
        backbone = obj.clone(**overrides) if overrides else obj
    elif callable(obj):
        kwargs = dict(overrides)
        try:
            signature = inspect.signature(obj)
        except (TypeError, ValueError):
            signature = None          # no signature (a builtin): just call it
        if signature is not None:
            for key, value in (("num_classes", num_classes), ("num_aus", num_aus)):
                if value is not None and key in signature.parameters and key not in kwargs:
                    kwargs[key] = value
            try:
                signature.bind(**kwargs)
            except TypeError as e:
                raise BackboneError(f"config.model {path!r}: the factory does not accept "
                                    f"{sorted(kwargs)} ({e}); expected a callable with no "
                                    "required arguments taking config.model_overrides as "
                                    "keywords") from None
        backbone = obj(**kwargs)
    else:
        raise BackboneError(f"config.model {path!r}: {attr!r} is a {type(obj).__name__}, "
                            "expected a function returning a flax.linen.Module")
    if not isinstance(backbone, nn.Module):
        raise BackboneError(f"config.model {path!r}: the factory returned a "
                            f"{type(backbone).__module__}.{type(backbone).__qualname__}, "
                            "expected a flax.linen.Module")
    return backbone


def check_model(model: nn.Module, input_shape: tuple[int, int, int], batch: int = 2) -> None:
    """Traces `model.init` on `[batch, T, H, W, 3] uint8` zeros (`jax.eval_shape`,
    no computation or memory) so that a bad backbone fails at build time.

    Raises:
        BackboneError: see `AUHeadModel` (raised while tracing).
    """
    rng = jax.random.PRNGKey(0)
    clips = jax.ShapeDtypeStruct((batch, *input_shape, 3), jnp.uint8)
    jax.eval_shape(lambda x: model.init({"params": rng, "dropout": rng}, x, train=False), clips)


def build(path: str, num_classes: int, num_aus: int = 18, **overrides: Any) -> AUHeadModel:
    """`with_au_head(load_backbone(path, ...))`, checked when its input size is known.

    The check (`check_model`) runs here when the backbone has `num_frames` and
    `image_size` attributes; otherwise at the model's first trace (the trainer
    traces it while building its state), on the data config's clip size.

    Raises:
        BackboneImportError, BackboneError: see `load_backbone`, `AUHeadModel`.
    """
    backbone = load_backbone(path, num_classes, num_aus, **overrides)
    model = with_au_head(backbone, num_classes, num_aus, source=f"config.model {path!r}")
    if model.num_frames and model.image_size:
        check_model(model, (int(model.num_frames), int(model.image_size), int(model.image_size)))
    return model


def _field(data_config: Any, name: str) -> Any:
    if isinstance(data_config, Mapping):
        return data_config.get(name)
    return getattr(data_config, name, None)


def input_shape(path: str, data_config: Any = None, **overrides: Any) -> tuple[int, int, int]:
    """`(T, H, W)` for the backbone at `path`.

    The backbone's `num_frames` and `image_size` (or `img_size`) attributes when
    it has both; otherwise the data config's `num_frames` and `image_size` (the
    clips the input pipeline makes).

    Args:
        path: `package.module:factory`.
        data_config: the data config (attributes, or a mapping for the test
            stand-ins); None: the backbone must give the size.
        **overrides: factory keywords (`config.model_overrides`).

    Raises:
        BackboneError: neither gives the size.
    """
    backbone = load_backbone(path, **overrides)
    frames = getattr(backbone, "num_frames", None)
    side = getattr(backbone, "image_size", None) or getattr(backbone, "img_size", None)
    if not (frames and side) and data_config is not None:
        frames, side = _field(data_config, "num_frames"), _field(data_config, "image_size")
    if not (frames and side):
        raise BackboneError(f"config.model {path!r}: the input size is unknown; give the backbone "
                            "num_frames and image_size attributes, or the clip size "
                            "(config.data.num_frames and config.data.image_size; "
                            "bench model: --num-frames and --image-size)")
    return int(frames), int(side), int(side)
