"""One config -> model, abstract variables, optimizer: the assembly every job shares.

`build(config, num_classes, steps_per_epoch=...)` is the single place where a
config's backbone is built (`models.get_model` with the config's accelerator
fields), its input shape resolved, its variables traced (shapes only, no
memory) and its optimizer and schedule made (`optim.make_optimizer`). Training
(`experiment.Experiment`), evaluation, `predict`, `compile` and `bench train`
all call it, so a recipe change reaches every job at once.

Steps per epoch is a parameter: the schedule's length depends on it, the
structure of the optimizer state does not, so jobs that only need that
structure (restoring a checkpoint, compiling a program) may pass any value
>= 1 and say so.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import optax

from audfer_jax import au as au_lib
from audfer_jax import optim
from audfer_jax import steps as steps_lib

PyTree = Any


@dataclasses.dataclass(frozen=True)
class ModelState:
    """A config's model and optimizer, with abstract variables.

    Attributes:
        model: the Flax module (`model.apply(variables, clips [B, T, H, W, 3]
            uint8, train=...)` -> `ModelOutput`).
        input_shape: `(T, H, W)` of the clips the model takes.
        variables: the `model.init` collections as `jax.ShapeDtypeStruct`s
            (`params`, and `batch_stats` for models with BatchNorm).
        tx: the optimizer (`optim.make_optimizer` of `config.optim`).
        schedule: learning rate per optimizer step (`optax.Schedule`).
        steps_per_epoch: the value the schedule was built with.
    """
    model: Any
    input_shape: tuple[int, int, int]
    variables: PyTree
    tx: optax.GradientTransformation
    schedule: Callable
    steps_per_epoch: int

    @property
    def params(self) -> PyTree:
        """The abstract `params` collection."""
        return self.variables["params"]

    def init_state(self, seed: int, mesh: jax.sharding.Mesh) -> steps_lib.TrainState:
        """A freshly initialised `TrainState`, replicated over `mesh` (jitted init)."""
        return steps_lib.create_train_state(self.model, self.tx, self.input_shape, seed, mesh)

    def abstract_state(self, seed: int = 0,
                       mesh: Optional[jax.sharding.Mesh] = None) -> steps_lib.TrainState:
        """The `TrainState` as `ShapeDtypeStruct`s, nothing computed.

        With `mesh`, each leaf carries the replicated sharding over it (for
        `jit(...).lower` on devices this process cannot reach); without, the
        leaves carry no sharding (a restore target for the current devices).
        """
        if mesh is not None:
            return steps_lib.abstract_train_state(self.model, self.tx, self.input_shape,
                                                  seed, mesh)
        params = self.params
        key = jax.eval_shape(lambda: jax.random.PRNGKey(seed))
        return steps_lib.TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params,
                                    batch_stats=self.variables.get("batch_stats", {}),
                                    opt_state=jax.eval_shape(self.tx.init, params), rng=key)


def build(config: ml_collections.ConfigDict, num_classes: int, *, steps_per_epoch: int,
          global_batch: Optional[int] = None, data_config=None, model=None) -> ModelState:
    """Assembles the model, its abstract variables and its optimizer.

    Args:
        config: an experiment config (`configs/*.py`), or the partial config a
            variables checkpoint carries (`model`, `model_overrides`, `data`;
            the optimizer then comes from `optim`'s defaults).
        num_classes: expression classes C.
        steps_per_epoch: optimizer steps per epoch (>= 1) for the schedule.
        global_batch: clips per optimizer step (the lr scaling rules of
            `optim`); default `config.batch_size`.
        data_config: the run's data config, for an import-path backbone whose
            module does not state its clip size.
        model: an already built module to use instead of `config.model`.

    Returns:
        A `ModelState`.

    Raises:
        ValueError: a bad model name or override, or `steps_per_epoch` < 1.
    """
    if int(steps_per_epoch) < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    if model is None:
        model = build_model(config, num_classes)
    input_shape = tuple(model_input_shape(model, config.model, data_config))
    variables = _variables_shape(model, input_shape)
    batch = int(global_batch if global_batch is not None else config.get("batch_size", 1))
    optim_config = config.get("optim") or ml_collections.ConfigDict()
    tx, schedule = optim.make_optimizer(
            optim_config, variables["params"], steps_per_epoch=int(steps_per_epoch),
            num_epochs=int(config.get("num_epochs", 1)), global_batch_size=batch,
            num_layers=model_depth(model))
    return ModelState(model=model, input_shape=input_shape, variables=variables, tx=tx,
                      schedule=schedule, steps_per_epoch=int(steps_per_epoch))


def _variables_shape(model, input_shape) -> PyTree:
    """`model.init`'s collections as `ShapeDtypeStruct`s (no memory used)."""
    rng = jax.random.PRNGKey(0)
    return jax.eval_shape(lambda: model.init({"params": rng, "dropout": rng}, jnp.zeros(
            (1, *input_shape, 3), jnp.uint8), train=False))


def build_model(config: ml_collections.ConfigDict, num_classes: int):
    """`audfer_jax.models.get_model(config.model, num_classes, **config.model_overrides)`.

    The accelerator fields of the config reach the registered backbones:
    `dtype`, `remat_policy` (`remat_policy_of`) and, for a model with the
    attribute (MAE-DFER), `scan_blocks=False` (its stacked blocks as
    straight-line code instead of a loop). An import-path backbone gets only
    its own `model_overrides`.

    Raises:
        ValueError: a bad model name, override or remat policy.
    """
    from audfer_jax import models  # pylint: disable=g-import-not-at-top
    overrides = dict(config.model_overrides or {})
    # `get` because `predict` rebuilds models from the partial configs of
    # converted weights.
    if not models.is_import_path(config.model):
        if config.get("dtype", "float32") != "float32":
            overrides.setdefault("dtype", config.dtype)
        policy = remat_policy_of(config)
        if policy != "none":
            overrides.setdefault("remat_policy", policy)
        overrides = _data_clip_size(config, overrides)
    model = models.get_model(config.model, num_classes=num_classes,
                             num_aus=au_lib.NUM_AUS, **overrides)
    if not config.get("scan_blocks", True) and "scan_blocks" not in overrides:
        model = models.with_scan_blocks(model, config.model, False)
    if hasattr(model, "check_config"):
        model.check_config()        # sizes that cannot work, before any data is read
    _check_layer_rules(config, model)
    return model


def _check_layer_rules(config: ml_collections.ConfigDict, model) -> None:
    """Refuses MAE-DFER's layer-wise optimizer rules for a model without numbered blocks.

    Raises:
        ValueError: `optim.decay_rule='mae_dfer'` or `optim.layer_decay` set
            (configs/mae_dfer.py's recipe) for a backbone that has no
            transformer depth to number its layers by.
    """
    optim_config = config.get("optim") or {}
    rule = optim_config.get("decay_rule", "all")
    layer_decay = float(optim_config.get("layer_decay", 0.0) or 0.0)
    if model_depth(model) is None and (rule == "mae_dfer" or layer_decay):
        raise ValueError(
                f"{config.model} has no numbered transformer blocks for the MAE-DFER "
                f"recipe's layer-wise optimizer (optim.decay_rule={rule!r}, "
                f"optim.layer_decay={layer_decay}); train it with "
                "--config.optim.decay_rule=all --config.optim.layer_decay=0, or from its own "
                "recipe's config")


def _data_clip_size(config, overrides: dict) -> dict:
    """`overrides` plus the data's clip size (`num_frames`, `image_size`) where unset.

    A registered backbone then takes the clips its config's data gives (a
    `_tiny` variant on a recipe config, a full one on the demo's 48-pixel
    clips), and a size it cannot take is its own one-line error. The paper
    configs' data sizes are their backbones' defaults, so their models are
    unchanged.
    """
    data = config.get("data") or {}
    out = dict(overrides)
    if data.get("num_frames") and "num_frames" not in out:
        out["num_frames"] = int(data["num_frames"])
    if data.get("image_size") and not ({"image_size", "img_size"} & set(out)):
        out["image_size"] = int(data["image_size"])
    return out


def remat_policy_of(config: ml_collections.ConfigDict) -> str:
    """The config's rematerialisation policy (`models.layers.REMAT_POLICIES`).

    `config.remat_policy`; a run config written before it existed has the
    boolean `remat` instead, read as `full` (True) or `none` (False).

    Raises:
        ValueError: an unknown policy name.
    """
    from audfer_jax.models import layers  # pylint: disable=g-import-not-at-top
    if "remat_policy" in config:
        return layers.remat_policy_name(config.remat_policy)
    return layers.remat_policy_name(bool(config.get("remat", False)))


def model_input_shape(model, name: str, data_config=None) -> tuple[int, int, int]:
    """`(T, H, W)` the built model expects: its attributes, else the registry
    (for an import-path backbone without them, `data_config`'s clip size)."""
    side = getattr(model, "image_size", None) or getattr(model, "img_size", None)
    frames = getattr(model, "num_frames", None)
    if side and frames:
        return int(frames), int(side), int(side)
    from audfer_jax import models  # pylint: disable=g-import-not-at-top
    return tuple(models.default_input_shape(name, data_config))


def model_depth(model) -> int | None:
    """Transformer depth for MAE-DFER's layer-wise rules (None for others)."""
    return int(model.depth) if hasattr(model, "depth") and hasattr(model, "embed_dim") else None
