"""A checkpoint -> a model ready for inference (`Predictor`).

Checkpoints accepted by `load_predictor`:

* a training run directory (`config.json` + `best/<step>` and/or
  `checkpoints/<step>`, written by `train.py`): its best state by default;
* one step directory `RUN/checkpoints/<step>` or `RUN/best/<step>`;
* a variables checkpoint written by `checkpoint.save_variables`, whose
  metadata names the model: `model` (registry name or import path
  `package.module:factory`, imported again here), `class_names`, and
  optionally `model_overrides` (dict), `data` (data-config fields such as
  `num_frames`, `image_size`, `sampling`, ...) or a whole run `config` dict.

The model, its input shape and (for a train state) the restore target come
from `model_state`, the assembly training uses; which step of a run to read
and where its config is come from `checkpoint`'s run-directory lookup. JAX,
Orbax and the models are imported on first use, so that importing this
module (and `audfer-jax predict --help`) stays cheap.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, NamedTuple, Optional

import numpy as np

from audfer_jax import paths
from audfer_jax.data import sampling
from audfer_jax.inference.video import PredictError


@dataclasses.dataclass
class Predictor:
    """A model ready for inference.

    Attributes:
        model: the Flax module (`models.get_model`).
        variables: `{'params': ..., 'batch_stats'?: ...}`.
        class_names: C names in label order.
        spec: the evaluation `SamplingSpec` of the run.
        temporal_views, spatial_views: evaluation views (1, 1 except MAE-DFER).
        image_size: S, the model's input side in pixels.
        source: what was loaded (path and step).
        apply: jitted `(variables, clips [V, T, S, S, 3] uint8) -> ModelOutput`.
        prior: the run's AU-expression prior `[C, 18] float32` (the matrix W
            its AU loss weighs with, before the x5 scale; `run_prior`), or
            None when the checkpoint does not determine it.
        prior_label: what `prior` is, or why there is none.
        config: the run's config (`ml_collections.ConfigDict`; partial for a
            variables checkpoint), or None (an exported model).
        step: the training step of a run checkpoint, else None.
    """
    model: Any
    variables: Any
    class_names: list
    spec: sampling.SamplingSpec
    temporal_views: int
    spatial_views: int
    image_size: int
    source: str
    apply: Callable = None
    prior: Optional[np.ndarray] = None
    prior_label: str = ""
    config: Any = None
    step: Optional[int] = None

    def __post_init__(self):
        if self.apply is None:
            self.apply = functools.partial(_eval_apply(), self.model)


@functools.lru_cache(maxsize=1)
def _eval_apply():
    """`jit(model.apply(variables, clips, train=False))` with the module static.

    Flax modules hash and compare by their attributes, so predictors of equal
    models (the CLI and the API in one process) share one compilation.
    """
    import jax  # pylint: disable=g-import-not-at-top
    return jax.jit(lambda model, v, x: model.apply(v, x, train=False), static_argnums=0)


def _data_config(config):
    """The run's validated `DataConfig` (`config.data`, as the trainer reads it)."""
    from audfer_jax.data import config as data_config_lib  # pylint: disable=g-import-not-at-top
    return data_config_lib.DataConfig.from_config(config.get("data", {}) or {}, strict=False)


def _class_names(meta: Mapping, config) -> list:
    """Class names: the checkpoint's, else the config dataset's, else by count.

    A converted checkpoint (`audfer-jax convert`) stores only `num_classes`:
    7 gets the DFEW/FERV39k names, 11 the MAFW names, others `class_<k>`.
    """
    from audfer_jax import classes  # pylint: disable=g-import-not-at-top
    if meta.get("class_names"):
        return list(meta["class_names"])
    dc = config.get("data", {}) or {}
    dataset = dc.get("dataset", dc.get("name"))
    if dataset:
        return list(classes.class_names(dataset))
    n = int(meta.get("num_classes", len(classes.DFEW_CLASSES)))
    by_count = {len(classes.DFEW_CLASSES): classes.DFEW_CLASSES,
                len(classes.MAFW_CLASSES): classes.MAFW_CLASSES}
    return list(by_count.get(n, [f"class_{k}" for k in range(n)]))


def run_prior(config, num_classes: int) -> tuple[Optional[np.ndarray], str]:
    """The AU-expression prior a run trained with, as `experiment.resolve_loss` picks it.

    `config.au.prior` names a matrix of `au.PRIOR_NAMES`, or `dataset` (the
    dataset's own; DFEW's for the demo set), or `from_data` (estimated from
    the training AU labels; not stored in a checkpoint).

    Args:
        config: the run's config (may be empty for a variables checkpoint).
        num_classes: C, the model's classes.

    Returns:
        `(W [C, 18] float32 or None, label)`: the label names the matrix, or
        says why there is none.
    """
    from audfer_jax import au  # pylint: disable=g-import-not-at-top
    au_cfg = config.get("au") or {}
    if not au_cfg:
        return None, "no AU prior: the checkpoint holds no run config"
    if config.get("loss") == "ce":
        return None, "no AU prior: the run trained with cross-entropy only (loss=ce)"
    dc = config.get("data", {}) or {}
    dataset = dc.get("dataset", dc.get("name"))
    name = au_cfg.get("prior", "dataset")
    if name == "dataset":
        name = {"demo": "dfew"}.get(dataset, dataset)
    if name == "from_data":
        return None, ("no AU prior shown: the run estimated it from its training AU "
                      "labels (au.prior=from_data), which the checkpoint does not store")
    try:
        w = au.prior(name)
    except ValueError:
        return None, f"no AU prior: the run's prior {name!r} is not a published matrix"
    if w.shape[0] != num_classes:
        return None, f"no AU prior: {name!r} has {w.shape[0]} rows for {num_classes} classes"
    return w, f"AU-expression prior '{name}' (au_prior.json; the run's au.prior)"


def _build_model(config, num_classes: int, where: str):
    """`model_state.build_model`; a user backbone (`config.model` an import path) that
    cannot be imported or built again here is a PredictError naming `where`."""
    from audfer_jax import model_state, models  # pylint: disable=g-import-not-at-top
    try:
        return model_state.build_model(config, num_classes)
    except models.BackboneError as e:
        raise PredictError(f"{where}: cannot rebuild the run's model ({e})") from None


def _fit_spec(spec: sampling.SamplingSpec, num_frames: int) -> sampling.SamplingSpec:
    """`spec` with T = `num_frames` when they differ.

    Only a variables checkpoint without data settings gets here (a run's
    config always agrees with its model): `segments` keeps D frames per
    segment when T is a multiple of D, else uses T segments of 1 frame.
    """
    if spec.num_frames == num_frames:
        return spec
    d = spec.frames_per_segment if num_frames % spec.frames_per_segment == 0 else 1
    return dataclasses.replace(spec, num_frames=num_frames, num_segments=num_frames // d,
                               frames_per_segment=d)


class _Restored(NamedTuple):
    """What a checkpoint gave `load_predictor`.

    Attributes:
        config: the run's config (partial for a variables checkpoint).
        class_names: C names in label order.
        model: the Flax module.
        input_shape: `(T, H, W)` the model takes.
        variables: `{'params': ..., 'batch_stats'?: ...}` as arrays.
        source: what was loaded (path, and step for a train state).
        step: the train state's step, None for a variables checkpoint.
    """
    config: Any
    class_names: list
    model: Any
    input_shape: tuple
    variables: Any
    source: str
    step: Optional[int] = None


def _variables_config(path: str, meta: Mapping):
    """The config of a variables checkpoint: its whole run `config`, else one made
    of its `model`, `model_overrides` and `data` metadata.

    Raises:
        PredictError: the metadata names no model.
    """
    import ml_collections  # pylint: disable=g-import-not-at-top
    config = ml_collections.ConfigDict(meta.get("config") or {})
    if config.get("model"):
        return config
    if not meta.get("model"):
        raise PredictError(f"{path}: variables checkpoint metadata names no model "
                           f"(keys: {sorted(meta)}); expected 'model' and "
                           "'class_names'")
    return ml_collections.ConfigDict({
            "model": meta["model"],
            "model_overrides": dict(meta.get("model_overrides") or {}),
            "data": dict(meta.get("data") or {})})


def _restore_variables_checkpoint(path: str) -> _Restored:
    """A `checkpoint.save_variables` directory: its variables and the model its metadata names.

    Only the module is rebuilt (`model_state.build_model`): the variables are
    restored as saved, so no optimizer or restore target is needed.

    Raises:
        PredictError: unreadable checkpoint, no model named, model not rebuilt.
    """
    from audfer_jax import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
    from audfer_jax import model_state  # pylint: disable=g-import-not-at-top
    try:
        variables, meta = ckpt_lib.restore_variables(path)
    except (ValueError, KeyError, FileNotFoundError) as e:
        raise PredictError(f"{path}: unreadable variables checkpoint ({e})") from e
    config = _variables_config(path, meta)
    class_names = _class_names(meta, config)
    model = _build_model(config, len(class_names), path)
    input_shape = model_state.model_input_shape(model, config.model, _data_config(config))
    return _Restored(config, class_names, model, tuple(input_shape), variables, path)


def _run_step(path: str, which: str) -> tuple[str, str]:
    """`(step directory, run directory)` of a run or step directory (`checkpoint`'s lookup).

    Raises:
        PredictError: a run directory without a complete step to read.
    """
    from audfer_jax import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
    if ckpt_lib.is_state_step(path):
        return path, ckpt_lib.run_dir_of_step(path)
    step_dir = ckpt_lib.newest_step_dir(path, which)
    if step_dir is None:
        order = ckpt_lib.STEP_SEARCH[which]
        raise PredictError(f"{path}: no checkpoint found (looked for "
                           f"{' and '.join(o + '/<step>' for o in order)}, or a "
                           "variables checkpoint)")
    return step_dir, path


def _restore_run_checkpoint(path: str, which: str) -> _Restored:
    """A run's train state: its parameters (and batch statistics), with the run's config.

    The restore target is `model_state.build(...).abstract_state()`, the
    train state structure training saved; the optimizer state's structure
    does not depend on the schedule's length, so steps_per_epoch = 1 does.

    Raises:
        PredictError: no step, no `config.json`, model not rebuilt, a state
            that does not restore, or classes that differ from the config's.
    """
    import jax  # pylint: disable=g-import-not-at-top
    from audfer_jax import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
    from audfer_jax import model_state  # pylint: disable=g-import-not-at-top
    step_dir, run_dir = _run_step(path, which)
    config_path = ckpt_lib.run_config_path(run_dir)
    if not paths.isfile(config_path):
        raise PredictError(f"{config_path}: the run's config is missing; it is needed "
                           f"to rebuild the model of {step_dir}")
    config = ckpt_lib.load_run_config(run_dir)
    # Class names live in the checkpoint's meta; the model needs their count
    # first, so take the dataset's names and check them after restoring.
    class_names = _class_names({}, config)
    model = _build_model(config, len(class_names), run_dir)
    built = model_state.build(config, len(class_names), steps_per_epoch=1,
                              data_config=_data_config(config), model=model)
    try:
        state, meta = ckpt_lib.restore_state_from_directory(step_dir, built.abstract_state())
    except (ValueError, KeyError, TypeError, FileNotFoundError) as e:
        raise PredictError(f"{step_dir}: cannot restore a {config.model} train state "
                           f"with the run's config ({type(e).__name__}: {e})") from e
    probe_names = meta.get("class_names")
    if probe_names and list(probe_names) != class_names:
        raise PredictError(f"{step_dir}: checkpoint classes {probe_names} differ from "
                           f"the config's dataset classes {class_names}")
    variables = {"params": state.params}
    if jax.tree.leaves(state.batch_stats):
        variables["batch_stats"] = state.batch_stats
    step = meta.get("step", paths.basename(step_dir))
    source = f"{step_dir} (step {step})"
    return _Restored(config, class_names, model, built.input_shape, variables, source,
                     int(step) if str(step).isdigit() else None)


def load_predictor(checkpoint: str, which: str = "best") -> Predictor:
    """Builds the model and restores its variables from a checkpoint.

    Args:
        checkpoint: a run directory, a step directory or a variables checkpoint
            (see the module docstring).
        which: for a run directory, `best` (default; falls back to the newest
            latest checkpoint when the run has no best one yet) or `last`.

    Returns:
        A `Predictor`.

    Raises:
        PredictError: the path does not exist or holds no usable checkpoint, or
            its metadata does not name the model (names the path and what is
            missing).
    """
    from audfer_jax import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
    path = paths.resolve(checkpoint)
    if not paths.exists(path):
        raise PredictError(f"{path}: checkpoint not found (expected a training run "
                           "directory, a step directory or a variables checkpoint)")
    if which not in ckpt_lib.STEP_SEARCH:
        raise PredictError(f"which={which!r}: expected 'best' or 'last'")
    if ckpt_lib.is_variables_checkpoint(path):
        restored = _restore_variables_checkpoint(path)
    else:
        restored = _restore_run_checkpoint(path, which)
    dc = _data_config(restored.config)
    spec = _fit_spec(sampling.spec_from_config(dc), restored.input_shape[0])
    prior, prior_label = run_prior(restored.config, len(restored.class_names))
    return Predictor(model=restored.model, variables=restored.variables,
                     class_names=list(restored.class_names), spec=spec,
                     temporal_views=dc.eval_temporal_views,
                     spatial_views=dc.eval_spatial_views,
                     image_size=int(restored.input_shape[1]), source=restored.source,
                     prior=prior, prior_label=prior_label, config=restored.config,
                     step=restored.step)
