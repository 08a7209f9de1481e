"""What training and evaluation share: the data config, model, loss constants, state.

`Experiment(config, workdir, data)` resolves an experiment config once, at
start-up: the typed data config (`audfer_jax.data.config.DataConfig`, validated
there), the prepared fold's sizes and classes, the model and its input shape,
the optimizer and schedule (`optim.py`), the AU loss constants of
`config.loss` (au_dfer_method.md sections 2-4), the initial train state
(replicated by a jitted init) and the jitted evaluation step. `train.py`
drives it. The model, its input shape and the optimizer come from
`model_state.build`, which `predict`, `compile` and `bench train` share.
"""

from __future__ import annotations

import sys
from typing import Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from audfer_jax import au as au_lib
from audfer_jax import classes
from audfer_jax import config_lib
from audfer_jax import metrics as metrics_lib
from audfer_jax import model_state
from audfer_jax import parallel
from audfer_jax import steps as steps_lib

# The arrays of a batch that go to the device (`index` stays on the host).
DEVICE_KEYS = ("clips", "labels", "au_targets", "au_mask", "mask")


# ---------------------------------------------------------------------------
# Data config.
# ---------------------------------------------------------------------------

def make_data_config(config: ml_collections.ConfigDict, data):
    """The input pipeline's config, built once from `config.data` and validated.

    Args:
        config: the experiment config.
        data: the input module: `audfer_jax.data.pipeline` (its `DataConfig`),
            or a stand-in with the same functions (tests), whose own
            `default_data_config()` fields `config.data` overrides.

    Returns:
        A frozen `DataConfig` (or, for a stand-in, a FrozenConfigDict).

    Raises:
        ValueError: an unknown field or a value outside its choices, naming
            the field, the value and the valid choices.
    """
    typed = getattr(data, "DataConfig", None)
    if typed is not None:
        return typed.from_config(config.data)
    merged = dict(data.default_data_config())
    merged.update(config.data.to_dict() if hasattr(config.data, "to_dict") else config.data)
    return ml_collections.FrozenConfigDict(merged)


def prepare_data_if_needed(config: ml_collections.ConfigDict, data, data_config):
    """Writes the demo set and prepares the fold when `config.prepare_data` is set.

    Process 0 does the work (`data.ensure_prepared`, which writes the demo
    set, with `config.demo`'s clips, seed and frame size, when a demo config
    without `raw_dir` finds none); the others wait at a barrier.

    Returns:
        The data config, with `raw_dir` set to the demo set's folder when the
        config names the demo set without one (`data.with_demo_raw_dir`).
    """
    if not config.prepare_data or not hasattr(data, "ensure_prepared"):
        return data_config
    if jax.process_index() == 0:
        data.ensure_prepared(data_config, log=print, demo_clips=int(config.demo.num_clips),
                             progress_bar=sys.stderr.isatty(),
                             demo_seed=int(config.demo.seed),
                             demo_image_size=int(config.demo.image_size),
                             keep_demo_release=True)
    data_config = data.with_demo_raw_dir(data_config)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
        multihost_utils.sync_global_devices("audfer_jax.prepare_data")
    return data_config


# ---------------------------------------------------------------------------
# Loss constants.
# ---------------------------------------------------------------------------

def resolve_loss(config: ml_collections.ConfigDict, dataset: str, num_classes: int,
                 data=None, data_config=None) -> tuple[float, np.ndarray, np.ndarray | None]:
    """The AU loss constants of `config.loss`: `(lam, prior [C, 18], pos_weight)`.

    Variants (au_dfer_method.md sections 2-4):
      * `ce`: lambda = 0 (the AU term is computed for logging only);
      * `au`: the dataset's global pos_weight; `au_none`: no pos_weight;
        `au_distinct`, `au_minor`: the per-class tables;
      * `au_from_data`: pos_weight estimated from the training split's AU labels
        (`config.au.per_class` for one row per class).
    The prior is `config.au.prior`: a name of `au.PRIOR_NAMES`, `dataset` (the
    dataset's own matrix; DFEW's for the demo set) or `from_data` (estimated
    from the training AU labels, rescaled by `config.au.prior_rescale`).
    Datasets without a published matrix (MAFW) need `from_data`.

    Raises:
        ValueError: unknown variant, or a published table requested for a
            dataset that has none.
    """
    loss = config.loss
    if loss not in config_lib.LOSSES:
        raise ValueError(f"unknown loss {loss!r}; expected one of {config_lib.LOSSES}")
    au_cfg = config.au
    stats = None

    def train_stats():
        nonlocal stats
        if stats is None:
            if data is None:
                raise ValueError("prior/pos_weight 'from_data' needs the training AU labels")
            stats = data.train_au_statistics(data_config)
        return stats

    name = au_cfg.prior
    if name == "dataset":
        name = {"demo": "dfew"}.get(dataset, dataset)
    if name == "from_data":
        targets, mask, labels = train_stats()
        prior = au_lib.estimate_prior(targets, labels, num_classes, au_mask=mask,
                                      rescale=au_cfg.prior_rescale)
    else:
        prior = au_lib.prior(name)
    if prior.shape[0] != num_classes:
        raise ValueError(f"prior {name!r} has {prior.shape[0]} classes but the dataset "
                         f"{dataset!r} has {num_classes}; use au.prior='from_data'")
    lam = 0.0 if loss == "ce" else float(au_cfg.lam)
    if loss in ("ce", "au_none"):
        pos = None
    elif loss == "au_from_data":
        targets, mask, labels = train_stats()
        pos = au_lib.estimate_pos_weight(targets, labels, num_classes, au_mask=mask,
                                         per_class=bool(au_cfg.per_class))
    else:
        option = {"au": "global", "au_distinct": "distinct", "au_minor": "minor"}[loss]
        minor = tuple(au_cfg.minor_classes)
        pos = au_lib.pos_weight(dataset, option, minor_classes=minor)
    return lam, np.asarray(prior, np.float32), (None if pos is None else
                                                np.asarray(pos, np.float32))



# ---------------------------------------------------------------------------
# The experiment.
# ---------------------------------------------------------------------------

def device_batch(local: Mapping[str, np.ndarray]) -> dict:
    """The arrays of a host batch that go to the device (`DEVICE_KEYS`)."""
    return {k: local[k] for k in DEVICE_KEYS if k in local}


class Experiment:
    """What training and evaluation share: mesh, data, model, state, steps.

    Attributes:
        config: the experiment config.
        data: the input module (`audfer_jax.data.pipeline` or a stand-in).
        data_config: the validated data config (`make_data_config`).
        mesh: the 1-D `('data',)` mesh over every device of every process.
        info: the prepared fold's sizes and classes (`data.dataset_info`).
        class_names, num_classes, dataset: from `info` and the data config.
        model, input_shape: the Flax module and its `(T, H, W)`.
        global_batch, steps_per_epoch, num_epochs, total_steps: in clips and
            optimizer steps.
        tx, schedule: the optimizer and learning-rate schedule.
        lam, prior, pos_weight: the AU loss constants (`resolve_loss`).
        state: the initial, replicated `TrainState`.
        eval_step: jitted `steps.make_eval_step`.
        device_augment: the train step's clip augmentation
            (`data.make_device_augment`), or None (done on the host).
    """

    def __init__(self, config, workdir, data, *, for_training: bool, model=None):
        del workdir     # kept for the signature the tests and tools use
        self.config = config
        self.data = data
        self.mesh = parallel.make_mesh()
        data_config = make_data_config(config, data)
        expected_classes = None
        if model is None:
            # Errors that need no data (an unknown model, an import path that
            # does not import, a bad override) come before the demo set is
            # written or a fold prepared.
            expected_classes = classes.num_classes(data_config.name)
            model = model_state.build_model(config, expected_classes)
        if for_training:
            data_config = prepare_data_if_needed(config, data, data_config)
        self.data_config = data_config
        self.device_augment = (data.make_device_augment(data_config)
                               if hasattr(data, "make_device_augment") else None)
        self.info = data.dataset_info(self.data_config)
        self.class_names = list(self.info.class_names)
        self.num_classes = len(self.class_names)
        if expected_classes not in (None, self.num_classes):
            model = model_state.build_model(config, self.num_classes)
        self.dataset = str(self.data_config.name)
        self.global_batch = int(config.batch_size)
        parallel.local_batch_size(self.global_batch, self.mesh)
        self.steps_per_epoch = int(self.info.num_train) // self.global_batch
        if for_training and self.steps_per_epoch <= 0:
            raise ValueError(f"{self.info.num_train} training clips give no full batch of "
                             f"{self.global_batch}; lower config.batch_size")
        self.num_epochs = int(config.num_epochs)
        self.total_steps = self.steps_per_epoch * self.num_epochs
        self.setup = model_state.build(
                config, self.num_classes, steps_per_epoch=max(self.steps_per_epoch, 1),
                global_batch=self.global_batch, data_config=self.data_config, model=model)
        self.model, self.input_shape = self.setup.model, self.setup.input_shape
        self.tx, self.schedule = self.setup.tx, self.setup.schedule
        self.lam, self.prior, self.pos_weight = resolve_loss(
                config, self.dataset, self.num_classes, data, self.data_config)
        self.state = self.setup.init_state(int(config.seed), self.mesh)
        self.eval_step = steps_lib.jit_eval_step(self.model, self.num_classes, self.mesh)

    def evaluate(self, state) -> dict:
        """Evaluates `state` on the test split; returns `metrics.summarize` + loss."""
        eval_bs = int(self.config.eval_batch_size or self.global_batch)
        ds, num_steps = self.data.create_eval_dataset(
                self.data_config, global_batch_size=eval_bs,
                process_index=jax.process_index(), process_count=jax.process_count())
        totals = None
        for i, local in enumerate(ds):
            if i >= num_steps:
                break
            out = self.eval_step(state, parallel.global_batch(device_batch(local), self.mesh))
            totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
        if totals is None:
            raise ValueError("the evaluation set yielded no batch")
        totals = jax.device_get(totals)
        summary = metrics_lib.summarize(totals["confusion"], self.class_names,
                                        totals["au_counts"], list(au_lib.AU_NAMES))
        summary["loss"] = float(totals["ce_num"] / max(float(totals["count"]), 1.0))
        return summary
