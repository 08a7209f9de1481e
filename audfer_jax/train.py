"""Training and evaluation: `train_and_evaluate(config, workdir)`.

The loop follows the shape of flax `examples/imagenet` and big_vision: a
config in, metrics out, everything else written to `workdir`:

    workdir/config.json          the resolved config
    workdir/checkpoints/<step>/  latest train states (Orbax, `checkpoint.py`)
    workdir/best/<step>/         the best-criterion train state
    workdir/metrics.jsonl        every logged scalar, one JSON object a line
    workdir/events.out.*         TensorBoard (scalars, confusion-matrix images)
    workdir/metrics.json         final figures: last and best epoch, labelled

Steps: (1) `jax.distributed.initialize()` when asked; (2) a 1-D data mesh over
all devices; (3) the model, optimizer (`optim.py`) and train state, created
already replicated by a jitted init; (4) resume from the newest checkpoint
(step, optimizer, RNG and data position: epoch and batch in epoch) or
initialise from converted weights (`config.init_from`); (5) epochs of jitted,
donated train steps on globally sharded batches; (6) evaluation every
`config.eval_every_epochs` and at the end: UAR, WAR, per-class recall, per-AU
F1, confusion matrix (datasets.md section 8); the last-epoch and best-epoch
figures (criterion `config.best_metric`, default WAR+UAR at one epoch) are
both recorded and labelled.

Randomness: the key of step s is `fold_in(state.rng, s)` (then the device
index under pmap), so a resumed run draws exactly what an uninterrupted one
would; the data order depends only on (seed, epoch, batch in epoch).
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Callable, Mapping

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from audfer_jax import au as au_lib
from audfer_jax import checkpoint as ckpt_lib
from audfer_jax import losses
from audfer_jax import metrics as metrics_lib
from audfer_jax import mixup as mixup_lib
from audfer_jax import optim
from audfer_jax import parallel

PyTree = Any

LOSS_VARIANTS = ("ce", "au", "au_none", "au_distinct", "au_minor", "au_from_data")
BEST_METRICS = ("war+uar", "uar", "war", "au_f1_mean")
_DEVICE_KEYS = ("clips", "labels", "au_targets", "au_mask", "mask")


@flax.struct.dataclass
class TrainState:
    """Everything a resumed run needs besides the data position.

    Attributes:
        step: `[] int32` optimiser steps applied.
        params: the `params` collection.
        batch_stats: the `batch_stats` collection (`{}` for models without BN).
        opt_state: optax state.
        rng: `[2] uint32` base PRNG key; step s uses `fold_in(rng, s)`.
    """
    step: jax.Array
    params: PyTree
    batch_stats: PyTree
    opt_state: PyTree
    rng: jax.Array


# ---------------------------------------------------------------------------
# Model, loss constants, state.
# ---------------------------------------------------------------------------

def build_model(config: ml_collections.ConfigDict, num_classes: int):
    """`audfer_jax.models.get_model(config.model, num_classes, **config.model_overrides)`."""
    from audfer_jax import models
    overrides = dict(config.get("model_overrides", {}) or {})
    return models.get_model(config.model, num_classes=num_classes,
                            num_aus=au_lib.NUM_AUS, **overrides)


def model_input_shape(model, name: str, data_config=None) -> tuple[int, int, int]:
    """`(T, H, W)` the built model expects: its attributes, else the registry
    (for an import-path backbone without them, `data_config`'s clip size)."""
    side = getattr(model, "image_size", None) or getattr(model, "img_size", None)
    frames = getattr(model, "num_frames", None)
    if side and frames:
        return int(frames), int(side), int(side)
    from audfer_jax import models
    return tuple(models.default_input_shape(name, data_config))


def model_depth(model) -> int | None:
    """Transformer depth for MAE-DFER's layer-wise rules (None for others)."""
    return int(model.depth) if hasattr(model, "depth") and hasattr(model, "embed_dim") else None


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
    if loss not in LOSS_VARIANTS:
        raise ValueError(f"unknown loss {loss!r}; expected one of {LOSS_VARIANTS}")
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
                                      rescale=au_cfg.get("prior_rescale", "reference"))
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
                                         per_class=bool(au_cfg.get("per_class", False)))
    else:
        option = {"au": "global", "au_distinct": "distinct", "au_minor": "minor"}[loss]
        minor = tuple(au_cfg.get("minor_classes", au_lib.DEFAULT_MINOR_CLASSES))
        pos = au_lib.pos_weight(dataset, option, minor_classes=minor)
    return lam, np.asarray(prior, np.float32), (None if pos is None else
                                                np.asarray(pos, np.float32))


def create_train_state(model, tx: optax.GradientTransformation, input_shape, seed: int,
                       mesh: jax.sharding.Mesh) -> TrainState:
    """Initialises the state directly in its replicated sharding (jitted init).

    Args:
        model: the Flax module.
        tx: optimizer.
        input_shape: `(T, H, W)` of the clips.
        seed: run seed; the init key and the state's base key derive from it.
        mesh: the data mesh.
    """
    init_rng, state_rng = jax.random.split(jax.random.PRNGKey(seed))
    dummy = jnp.zeros((1, *input_shape, 3), jnp.uint8)

    def init(rng):
        params_rng, dropout_rng = jax.random.split(rng)
        variables = model.init({"params": params_rng, "dropout": dropout_rng}, dummy,
                               train=False)
        params = variables["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          batch_stats=variables.get("batch_stats", {}),
                          opt_state=tx.init(params), rng=state_rng)

    return jax.jit(init, out_shardings=parallel.replicated(mesh))(init_rng)


def abstract_params(model, input_shape):
    """`ShapeDtypeStruct` pytree of the model's `params` (no memory used)."""
    dummy = jax.ShapeDtypeStruct((1, *input_shape, 3), jnp.uint8)
    rng = jax.random.PRNGKey(0)
    return jax.eval_shape(lambda: model.init({"params": rng, "dropout": rng}, jnp.zeros(
            dummy.shape, dummy.dtype), train=False))["params"]


# ---------------------------------------------------------------------------
# Steps.
# ---------------------------------------------------------------------------

def make_train_step(model, config: ml_collections.ConfigDict, *,
                    tx: optax.GradientTransformation, schedule: Callable,
                    prior, pos_weight, lam: float, num_classes: int) -> Callable:
    """The train step shared by both strategies: `step(state, batch, axis_name=None)`.

    Args:
        model: Flax module returning `ModelOutput`.
        config: reads `label_smoothing`, `au.scale` and `mixup.*`.
        tx, schedule: from `optim.make_optimizer`.
        prior: `[C, 18]` AU prior; pos_weight: None, `[18]` or `[C, 18]`.
        lam: AU loss weight (0 = CE only).
        num_classes: C.

    Returns:
        `step(state, batch, axis_name=None) -> (state, metrics)`. `batch` holds
        `clips [B, T, H, W, 3] uint8`, `labels [B] int32`, `au_targets [B, 18]`,
        `au_mask [B]`, `mask [B]` (the device's part under pmap). `metrics` are
        global scalars: `loss`, `ce`, `au_bce`, `accuracy`, `lr`, `grad_norm`,
        `count` (clips), all float32.

    Loss (au_dfer_method.md section 2): `(1 - lam) CE + lam L_AU` where both
    means are global: each device's objective is its masked numerator over the
    psum of the denominators, so that the psum of the per-device gradients is
    the gradient of the global mean whatever the per-device counts.
    """
    prior = jnp.asarray(prior, jnp.float32)
    pos_weight = None if pos_weight is None else jnp.asarray(pos_weight, jnp.float32)
    smoothing = float(config.get("label_smoothing", 0.0))
    scale = float(config.au.scale)
    mix = config.get("mixup", None)
    use_mixup = bool(mix is not None and mix.get("enabled", False))

    def step(state: TrainState, batch: Mapping[str, jax.Array], axis_name: str | None = None):
        rng = jax.random.fold_in(state.rng, state.step)
        if axis_name is not None:
            rng = jax.random.fold_in(rng, parallel.device_index(axis_name))
        mix_rng, dropout_rng = jax.random.split(rng)
        batch = dict(batch)
        mask = batch["mask"].astype(jnp.float32)
        if use_mixup:
            batch = mixup_lib.mixup_cutmix(
                    mix_rng, batch, num_classes, mixup_alpha=float(mix.mixup_alpha),
                    cutmix_alpha=float(mix.cutmix_alpha), switch_prob=float(mix.switch_prob),
                    prob=float(mix.prob), label_smoothing=float(mix.label_smoothing))
            targets = batch["label_probs"]
            mask = batch["mask"].astype(jnp.float32)
            ce_smoothing = 0.0     # the mixed targets are smoothed already (timm Mixup)
        else:
            targets = batch["labels"]
            ce_smoothing = smoothing
        au_mask = mask * batch["au_mask"].astype(jnp.float32)
        # Denominators do not depend on the parameters: global sums, computed once.
        ce_den = parallel.psum_if(jnp.sum(mask), axis_name)
        au_den = parallel.psum_if(au_lib.NUM_AUS * jnp.sum(au_mask), axis_name)
        has_bn = bool(jax.tree.leaves(state.batch_stats))

        def loss_fn(params):
            variables = {"params": params}
            if has_bn:
                variables["batch_stats"] = state.batch_stats
            out, new_vars = model.apply(variables, batch["clips"], train=True,
                                        rngs={"dropout": dropout_rng},
                                        mutable=["batch_stats"] if has_bn else [])
            ce_num, _ = losses.cross_entropy_sums(out.logits, targets, ce_smoothing, mask)
            au_num, _ = losses.au_weighted_bce_sums(out.au_logits, batch["au_targets"],
                                                    targets, prior, pos_weight, scale=scale,
                                                    mask=au_mask)
            ce = ce_num / jnp.maximum(ce_den, 1.0)
            au_term = au_num / jnp.where(au_den > 0, au_den, 1.0)
            if lam == 0:
                loss = ce + 0.0 * jax.lax.stop_gradient(au_term)
            else:
                loss = (1.0 - lam) * ce + lam * au_term
            correct = jnp.sum(mask * (jnp.argmax(out.logits, -1) == batch["labels"]))
            return loss, (new_vars, ce, au_term, correct)

        (loss, (new_vars, ce, au_term, correct)), grads = jax.value_and_grad(
                loss_fn, has_aux=True)(state.params)
        grads = parallel.psum_if(grads, axis_name)
        loss, ce, au_term, correct = parallel.psum_if((loss, ce, au_term, correct), axis_name)
        batch_stats = state.batch_stats
        if has_bn:
            batch_stats = parallel.pmean_if(new_vars["batch_stats"], axis_name)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                                  opt_state=opt_state)
        metrics = {"loss": loss, "ce": ce, "au_bce": au_term,
                   "accuracy": correct / jnp.maximum(ce_den, 1.0),
                   "lr": jnp.asarray(schedule(state.step), jnp.float32),
                   "grad_norm": optax.tree.norm(grads), "count": ce_den}
        return new_state, jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), metrics)

    return step


def make_eval_step(model, num_classes: int, *, prior=None, pos_weight=None,
                   scale: float = 5.0) -> Callable:
    """`eval_step(state, batch) -> sums` for one (possibly multi-view) batch.

    `batch["clips"]` is `[B, T, H, W, 3]` or `[B, V, T, H, W, 3]` (V views:
    the class probabilities are the mean of the views' softmax, the AU logits
    the mean of the views' logits, as MAE-DFER's multi-view test). Returns
    `{"confusion": [C, C] int32, "au_counts": [18, 3] int32, "ce_num", "count"
    float32}` summed over the valid (`mask` 1) clips of the batch.
    """

    def eval_step(state: TrainState, batch):
        clips = batch["clips"]
        views = clips.shape[1] if clips.ndim == 6 else 1
        if views > 1 or clips.ndim == 6:
            clips = clips.reshape((-1,) + clips.shape[2:])
        variables = {"params": state.params}
        if jax.tree.leaves(state.batch_stats):
            variables["batch_stats"] = state.batch_stats
        out = model.apply(variables, clips, train=False)
        b = batch["labels"].shape[0]
        probs = jax.nn.softmax(out.logits.astype(jnp.float32), -1).reshape(b, views, -1).mean(1)
        au_logits = out.au_logits.astype(jnp.float32).reshape(b, views, -1).mean(1)
        mask = batch["mask"].astype(jnp.float32)
        ce_num = -jnp.sum(mask * jnp.log(jnp.take_along_axis(
                probs, batch["labels"][:, None].astype(jnp.int32), 1)[:, 0] + 1e-12))
        return {
                "confusion": metrics_lib.confusion_matrix(probs, batch["labels"], num_classes,
                                                          mask),
                "au_counts": metrics_lib.au_counts(au_logits, batch["au_targets"],
                                                   mask * batch["au_mask"].astype(jnp.float32)),
                "ce_num": ce_num, "count": jnp.sum(mask)}

    return eval_step


# ---------------------------------------------------------------------------
# Helpers of the loop.
# ---------------------------------------------------------------------------

def maybe_initialize_distributed(config: ml_collections.ConfigDict) -> None:
    """`jax.distributed.initialize()` for multi-host runs.

    Called when `config.multihost` is set or a launcher's environment is seen
    (`JAX_COORDINATOR_ADDRESS`, Slurm with several tasks, Open MPI with
    several ranks); explicit `config.coordinator_address`, `num_processes`,
    `process_id` are passed through (a 2-process test on 127.0.0.1 uses them).
    Must run before any device is touched; a second call is ignored.
    """
    env = os.environ
    launched = ("JAX_COORDINATOR_ADDRESS" in env
                or int(env.get("SLURM_NTASKS", "1") or 1) > 1
                or int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1)
    if not (config.get("multihost", False) or launched):
        return
    kwargs = {}
    if config.get("coordinator_address", ""):
        kwargs["coordinator_address"] = config.coordinator_address
    if config.get("num_processes", 0):
        kwargs["num_processes"] = int(config.num_processes)
    if config.get("process_id", -1) is not None and config.get("process_id", -1) >= 0:
        kwargs["process_id"] = int(config.process_id)
    try:
        jax.distributed.initialize(**kwargs)
    except RuntimeError as e:
        if "already" not in str(e).lower():
            raise
    logging.info("jax.distributed: process %d of %d, %d devices", jax.process_index(),
                 jax.process_count(), jax.device_count())


def _set_data_config(dc, overrides: Mapping[str, Any]):
    """Applies `config.data` entries onto the pipeline's default data config."""
    import dataclasses
    overrides = dict(overrides)
    if dataclasses.is_dataclass(dc):
        return dataclasses.replace(dc, **overrides)
    if hasattr(dc, "unlock"):
        with dc.unlocked() if hasattr(dc, "unlocked") else _nullcontext():
            dc.update(overrides)
        return dc
    if isinstance(dc, dict):
        dc = dict(dc)
        dc.update(overrides)
        return dc
    for k, v in overrides.items():
        setattr(dc, k, v)
    return dc


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _data_field(dc, name, default=None):
    try:
        value = dc[name]
    except (KeyError, AttributeError, TypeError):
        value = getattr(dc, name, None)
    return default if value is None else value


def prepare_data_if_needed(config: ml_collections.ConfigDict, data, data_config) -> None:
    """Writes the demo set and prepares the fold when `config.prepare_data` is set.

    Process 0 does the work (`data.ensure_prepared`); the others wait at a
    barrier. For `name == 'demo'` without `raw_dir`, the synthetic set is first
    written to `<data_dir>/demo_raw` with `config.demo.num_clips` clips of
    `config.demo.image_size` pixels (`audfer_jax.data.demo.write_demo_dataset`).
    """
    if not config.get("prepare_data", False) or not hasattr(data, "ensure_prepared"):
        return
    if jax.process_index() == 0:
        if (_data_field(data_config, "name") == "demo"
                and not _data_field(data_config, "raw_dir", "")):
            raw = os.path.join(_data_field(data_config, "data_dir"), "demo_raw")
            if not os.path.isdir(os.path.join(raw, "DFEW")):
                from audfer_jax.data import demo
                demo_cfg = config.get("demo", {}) or {}
                demo.write_demo_dataset(raw, int(demo_cfg.get("num_clips", 2000)),
                                        int(demo_cfg.get("seed", 0)),
                                        int(demo_cfg.get("image_size", 112)))
            data_config.raw_dir = raw
        data.ensure_prepared(data_config, log=logging.info)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("audfer_jax.prepare_data")


def make_data_config(config: ml_collections.ConfigDict, data):
    """The input pipeline's config: its defaults updated by `config.data`."""
    dc = data.default_data_config()
    overrides = config.data.to_dict() if hasattr(config.data, "to_dict") else dict(config.data)
    return _set_data_config(dc, overrides)


def criterion(summary: Mapping[str, Any], name: str) -> float:
    """The best-epoch criterion value of an evaluation summary (higher is better).

    'war+uar' (default; the reference's "WAR+UAR at one epoch", datasets.md
    section 8), 'uar', 'war', 'au_f1_mean'.
    """
    if name == "war+uar":
        return float(summary["war"] + summary["uar"])
    if name in ("uar", "war", "au_f1_mean"):
        return float(summary[name])
    raise ValueError(f"unknown best_metric {name!r}; expected one of {BEST_METRICS}")


def confusion_image(cm, cell: int = 24) -> np.ndarray:
    """A row-normalised confusion matrix as an image, `[1, C*cell, C*cell, 3] uint8`.

    White = 0, dark blue = 1 (recall of the row's class on the diagonal); a
    one-pixel grey grid separates the cells. No text (no plotting library).
    """
    cm = np.asarray(cm, np.float64)
    rows = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    c = cm.shape[0]
    img = np.empty((c * cell, c * cell, 3), np.float64)
    dark = np.array([8, 48, 107], np.float64)
    for i in range(c):
        for j in range(c):
            colour = 255 + rows[i, j] * (dark - 255)
            img[i * cell:(i + 1) * cell, j * cell:(j + 1) * cell] = colour
    img[::cell, :] = 160
    img[:, ::cell] = 160
    return img.astype(np.uint8)[None]


class JsonlWriter:
    """A clu `MetricWriter` appending `{"step", "kind", ...}` lines to a file."""

    def __init__(self, path: str):
        self._file = open(path, "a", encoding="utf-8")

    def _write(self, step, kind, values):
        self._file.write(json.dumps({"step": int(step), "kind": kind, **values}) + "\n")

    def write_scalars(self, step, scalars):
        self._write(step, "scalars", {k: float(np.asarray(v)) for k, v in scalars.items()})

    def write_texts(self, step, texts):
        self._write(step, "texts", {k: str(v) for k, v in texts.items()})

    def write_hparams(self, hparams):
        self._write(0, "hparams", {k: _jsonable(v) for k, v in hparams.items()})

    def write_summaries(self, step, values, metadata=None):
        del metadata
        self._write(step, "summaries", {k: np.asarray(v).tolist() for k, v in values.items()})

    def write_images(self, step, images):
        del step, images

    def write_videos(self, step, videos):
        del step, videos

    def write_audios(self, step, audios, *, sample_rate):
        del step, audios, sample_rate

    def write_histograms(self, step, arrays, num_buckets=None):
        del step, arrays, num_buckets

    def flush(self):
        self._file.flush()

    def close(self):
        self._file.close()


def _jsonable(v):
    try:
        json.dumps(v)
        return v
    except TypeError:
        return str(v)


def _make_writer(workdir: str):
    from clu import metric_writers
    if jax.process_index() != 0:
        return metric_writers.create_default_writer(workdir, just_logging=True)
    default = metric_writers.create_default_writer(workdir, asynchronous=False)
    jsonl = JsonlWriter(os.path.join(workdir, "metrics.jsonl"))
    return metric_writers.MultiWriter([default, jsonl])


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Writes the resolved config as `workdir/config.json` (process 0)."""
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
            f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def _device_batch(local: Mapping[str, np.ndarray]) -> dict:
    return {k: local[k] for k in _DEVICE_KEYS if k in local}


class _Setup:
    """What training and evaluation share: mesh, data, model, state, steps."""

    def __init__(self, config, workdir, data, *, for_training: bool, model=None):
        self.config = config
        self.data = data
        self.mesh = parallel.make_mesh()
        self.data_config = make_data_config(config, data)
        if for_training:
            prepare_data_if_needed(config, data, self.data_config)
        self.info = data.dataset_info(self.data_config)
        self.class_names = list(self.info.class_names)
        self.num_classes = len(self.class_names)
        self.dataset = str(_data_field(self.data_config, "name", "dfew"))
        self.model = build_model(config, self.num_classes) if model is None else model
        self.input_shape = model_input_shape(self.model, config.model, self.data_config)
        self.global_batch = int(config.batch_size)
        parallel.local_batch_size(self.global_batch, self.mesh)
        self.steps_per_epoch = int(self.info.num_train) // self.global_batch
        if for_training and self.steps_per_epoch <= 0:
            raise ValueError(f"{self.info.num_train} training clips give no full batch of "
                             f"{self.global_batch}; lower config.batch_size")
        self.num_epochs = int(config.num_epochs)
        self.total_steps = self.steps_per_epoch * self.num_epochs
        params_shape = abstract_params(self.model, self.input_shape)
        self.tx, self.schedule = optim.make_optimizer(
                config.optim, params_shape, steps_per_epoch=max(self.steps_per_epoch, 1),
                num_epochs=self.num_epochs, global_batch_size=self.global_batch,
                num_layers=model_depth(self.model))
        self.lam, self.prior, self.pos_weight = resolve_loss(
                config, self.dataset, self.num_classes, data, self.data_config)
        self.state = create_train_state(self.model, self.tx, self.input_shape,
                                        int(config.seed), self.mesh)
        self.eval_step = jax.jit(make_eval_step(self.model, self.num_classes),
                                 in_shardings=(parallel.replicated(self.mesh),
                                               parallel.batch_sharded(self.mesh)),
                                 out_shardings=parallel.replicated(self.mesh))

    def evaluate(self, state) -> dict:
        """Evaluates `state` on the test split; returns `metrics.summarize` + loss."""
        eval_bs = int(self.config.get("eval_batch_size", 0) or self.global_batch)
        ds, num_steps = self.data.create_eval_dataset(
                self.data_config, global_batch_size=eval_bs,
                process_index=jax.process_index(), process_count=jax.process_count())
        totals = None
        for i, local in enumerate(ds):
            if i >= num_steps:
                break
            out = self.eval_step(state, parallel.global_batch(_device_batch(local), self.mesh))
            totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
        if totals is None:
            raise ValueError("the evaluation set yielded no batch")
        totals = jax.device_get(totals)
        summary = metrics_lib.summarize(totals["confusion"], self.class_names,
                                        totals["au_counts"], list(au_lib.AU_NAMES))
        summary["loss"] = float(totals["ce_num"] / max(float(totals["count"]), 1.0))
        return summary


def _replicate(tree, mesh):
    return jax.device_put(tree, parallel.replicated(mesh))


def _write_eval(writer, step: int, summary: dict, prefix: str) -> None:
    scalars = {f"{prefix}/uar": summary["uar"], f"{prefix}/war": summary["war"],
               f"{prefix}/loss": summary["loss"]}
    for name, value in summary["per_class_recall"].items():
        scalars[f"{prefix}/recall/{name}"] = value
    if "au_f1_mean" in summary:
        scalars[f"{prefix}/au_f1_mean"] = summary["au_f1_mean"]
        for name, value in summary["au_f1"].items():
            scalars[f"{prefix}/au_f1/{name}"] = value
    writer.write_scalars(step, scalars)
    writer.write_images(step, {f"{prefix}/confusion_matrix":
                               confusion_image(summary["confusion_matrix"])})
    writer.write_texts(step, {f"{prefix}/confusion_matrix": json.dumps(
            {"class_names": summary["class_names"], "rows_true_cols_pred":
             summary["confusion_matrix"]})})


# ---------------------------------------------------------------------------
# Entry points.
# ---------------------------------------------------------------------------

def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       data=None, model=None) -> dict:
    """Trains `config` in `workdir`, resuming from its newest checkpoint.

    Args:
        config: experiment config (`configs/*.py`).
        workdir: run directory (created).
        data: the input-pipeline module (default `audfer_jax.data.pipeline`);
            tests pass an in-memory stand-in with the same functions.
        model: a Flax module to train instead of `config.model` (tests,
            benchmarks); it must take `num_classes` from the dataset.

    Returns:
        `{"class_names", "steps", "best_metric", "last": {epoch, step, uar,
        war, per_class_recall, confusion_matrix, au_f1, ...}, "best": {...,
        "criterion", "value"}, "history": [{epoch, step, uar, war}...]}`;
        also written to `workdir/metrics.json`. `last` is the final
        evaluation, `best` the evaluated epoch with the highest criterion
        (`config.best_metric`).

    Raises:
        FloatingPointError: the loss became NaN or infinite; names the step,
            the epoch and batch, and the clip indices of that batch.
        ValueError: a bad config (unknown loss, batch not divisible by the
            devices, no full training batch...).
    """
    maybe_initialize_distributed(config)
    if data is None:
        from audfer_jax.data import pipeline as data
    workdir = os.path.abspath(workdir)
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
    with jax.set_mesh(parallel.make_mesh()):
        return _train(config, workdir, data, model)


def _train(config, workdir, data, model) -> dict:
    setup = _Setup(config, workdir, data, for_training=True, model=model)
    mesh, spe = setup.mesh, setup.steps_per_epoch
    process0 = jax.process_index() == 0
    save_config(config, workdir)
    writer = _make_writer(workdir)
    best_metric = str(config.get("best_metric", "war+uar"))
    criterion({"war": 0.0, "uar": 0.0, "au_f1_mean": 0.0}, best_metric)   # validates the name

    extra = [spe * (e + 1) for e in range(setup.num_epochs)]
    ckpt = ckpt_lib.TrainCheckpointer(
            workdir, save_every_steps=int(config.get("checkpoint_every_steps", 0) or 0),
            extra_steps=extra, keep=int(config.get("keep_checkpoints", 2)),
            async_save=bool(config.get("async_checkpoints", True)))
    state = setup.state
    meta: dict = {"history": [], "best": None, "last": None}
    start_step = 0
    if ckpt.latest_step() is not None:
        state, meta = ckpt.restore(state)
        start_step = int(jax.device_get(state.step))
        if meta.get("class_names") and list(meta["class_names"]) != setup.class_names:
            raise ValueError(f"{workdir}: checkpoint classes {meta['class_names']} differ "
                             f"from the dataset's {setup.class_names}")
        logging.info("resumed from step %d (epoch %d, batch %d)", start_step,
                     meta.get("epoch", 0), meta.get("batch_in_epoch", 0))
    elif config.get("init_from", ""):
        loaded, _ = ckpt_lib.restore_variables(config.init_from)
        host = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
        merged, fresh = ckpt_lib.merge_variables(host, loaded)
        logging.info("initialised from %s; fresh: %s", config.init_from, fresh)
        state = state.replace(params=_replicate(merged["params"], mesh),
                              batch_stats=_replicate(merged.get("batch_stats", {}), mesh))

    step_fn = make_train_step(setup.model, config, tx=setup.tx, schedule=setup.schedule,
                              prior=setup.prior, pos_weight=setup.pos_weight, lam=setup.lam,
                              num_classes=setup.num_classes)
    strategy = str(config.get("strategy", "jit"))
    if strategy == "jit":
        train_step = parallel.jit_step(step_fn, mesh)
    elif strategy == "pmap":
        train_step = parallel.pmap_step(step_fn)
        state = parallel.to_pmap_state(state)
    else:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {parallel.STRATEGIES}")

    def host_state(s):
        """The state as replicated global arrays (unstacks pmap copies)."""
        if strategy == "pmap":
            return _replicate(parallel.from_pmap_state(s), mesh)
        return s

    def make_meta(step, extra_meta=None):
        out = dict(meta)
        out.update({"step": int(step), "epoch": int(step // spe),
                    "batch_in_epoch": int(step % spe), "class_names": setup.class_names,
                    "best_metric": best_metric})
        out.update(extra_meta or {})
        return out

    if process0 and start_step == 0:
        writer.write_hparams({k: _jsonable(v) for k, v in
                              _flatten_config(config.to_dict()).items()})
    log_every = max(1, int(config.get("log_every_steps", 50)))
    stop_after = int(config.get("stop_after_steps", 0) or 0)
    step = start_step
    pending = None            # (step, metrics, clip indices, epoch, batch) of the last step
    window: list = []
    t_window = time.time()

    def check(p):
        s, m, idx, e, b = p
        m = jax.device_get(m)
        if not np.isfinite(m["loss"]):
            raise FloatingPointError(
                    f"non-finite loss {float(m['loss'])} at step {s + 1} (epoch {e + 1}, "
                    f"batch {b + 1} of {spe}); clip indices (`index`) of that batch: {idx}")
        return m

    try:
        from tqdm.auto import tqdm
        for epoch in range(step // spe, setup.num_epochs):
            first_batch = step - epoch * spe
            ds = data.create_train_dataset(
                    setup.data_config, global_batch_size=setup.global_batch,
                    seed=int(config.seed), epoch=epoch, start_batch=first_batch,
                    process_index=jax.process_index(), process_count=jax.process_count())
            bar = tqdm(total=spe, initial=first_batch, desc=f"epoch {epoch + 1}/{setup.num_epochs}",
                       unit="step", disable=not (process0 and config.get("progress_bar", True)),
                       dynamic_ncols=True, leave=False)
            t_epoch, clips_epoch = time.time(), 0
            it = iter(ds)
            for batch_idx in range(first_batch, spe):
                try:
                    local = next(it)
                except StopIteration:
                    raise ValueError(f"the training data ran out at epoch {epoch + 1}, batch "
                                     f"{batch_idx} of {spe}") from None
                device_batch = _device_batch(local)
                if strategy == "pmap":
                    state, m = train_step(state, parallel.to_pmap_batch(device_batch))
                    m = jax.tree.map(lambda x: x[0], m)
                else:
                    state, m = train_step(state, parallel.global_batch(device_batch, mesh))
                idx = np.asarray(local.get("index", [])).tolist()
                if pending is not None:
                    window.append(check(pending))
                pending = (step, m, idx, epoch, batch_idx)
                step += 1
                clips_epoch += setup.global_batch
                bar.update(1)
                if step % log_every == 0 or step == setup.total_steps:
                    window.append(check(pending))
                    pending = None
                    elapsed = time.time() - t_window
                    avg = {f"train/{k}": float(np.mean([w[k] for w in window]))
                           for k in window[0] if k != "count"}
                    avg["train/clips_per_sec"] = len(window) * setup.global_batch / max(elapsed, 1e-9)
                    avg["train/epoch"] = step / spe
                    writer.write_scalars(step, avg)
                    bar.set_postfix(loss=f"{avg['train/loss']:.4f}",
                                    clips_s=f"{clips_epoch / max(time.time() - t_epoch, 1e-9):.1f}")
                    window, t_window = [], time.time()
                if step % spe:        # epoch ends are saved after their evaluation
                    ckpt.maybe_save(step, host_state(state), lambda: make_meta(step))
                if stop_after and step == stop_after:
                    break
            bar.close()
            if pending is not None:
                window.append(check(pending))
                pending = None
            if stop_after and step == stop_after and step % spe:
                # Test hook that simulates a kill right after step `stop_after`.
                ckpt.maybe_save(step, host_state(state), lambda: make_meta(step), force=True)
                break
            last_epoch = epoch + 1 == setup.num_epochs
            every = max(1, int(config.get("eval_every_epochs", 1)))
            if (epoch + 1) % every == 0 or last_epoch:
                hs = host_state(state)
                summary = setup.evaluate(hs)
                record = {"epoch": epoch + 1, "step": step, **summary}
                meta["last"] = record
                meta["history"].append({"epoch": epoch + 1, "step": step,
                                        "uar": summary["uar"], "war": summary["war"]})
                _write_eval(writer, step, summary, "test")
                value = criterion(summary, best_metric)
                best = meta.get("best")
                if best is None or value > best["value"]:
                    meta["best"] = {**record, "criterion": best_metric, "value": value}
                    ckpt.save_best(step, hs, make_meta(step))
                logging.info("epoch %d: UAR %.2f WAR %.2f (best %s %.2f at epoch %d)",
                             epoch + 1, summary["uar"], summary["war"], best_metric,
                             meta["best"]["value"], meta["best"]["epoch"])
                if process0:
                    print(f"epoch {epoch + 1}/{setup.num_epochs}: UAR {summary['uar']:.2f} "
                          f"WAR {summary['war']:.2f} test loss {summary['loss']:.4f}",
                          flush=True)
            ckpt.maybe_save(step, host_state(state), lambda: make_meta(step))
            if stop_after and step == stop_after:
                break
    finally:
        ckpt.wait_until_finished()
        writer.flush()

    if stop_after and step < setup.total_steps:
        ckpt.close()
        writer.close()
        return {"stopped_at_step": step, "class_names": setup.class_names}
    result = {"class_names": setup.class_names, "steps": step, "best_metric": best_metric,
              "last": _label(meta.get("last"), "last"), "best": _label(meta.get("best"), "best"),
              "history": meta.get("history", [])}
    if process0:
        with open(os.path.join(workdir, "metrics.json"), "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    ckpt.close()
    writer.close()
    return result


def _label(record, label):
    if record is None:
        return None
    return {"label": label, **record}


def _flatten_config(d: Mapping, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten_config(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir_or_checkpoint: str, *,
                        best: bool = False, data=None, model=None) -> dict:
    """Evaluates a saved train state on the config's test split.

    Args:
        config: the run's config (`workdir/config.json` loaded back, or the
            same `configs/*.py` variant).
        workdir_or_checkpoint: a run directory (its newest latest checkpoint,
            or its best one when `best`) or one step directory
            `.../checkpoints/<step>` written by `TrainCheckpointer`.
        best: pick the best checkpoint of a workdir.
        data: the input-pipeline module (default `audfer_jax.data.pipeline`).
        model: a Flax module instead of `config.model` (tests).

    Returns:
        `metrics.summarize` figures plus `loss`, `step` and `checkpoint`.

    Raises:
        FileNotFoundError: nothing to restore there.
    """
    maybe_initialize_distributed(config)
    if data is None:
        from audfer_jax.data import pipeline as data
    path = os.path.abspath(workdir_or_checkpoint)
    with jax.set_mesh(parallel.make_mesh()):
        setup = _Setup(config, path, data, for_training=False, model=model)
        if os.path.isdir(os.path.join(path, "checkpoints")) or os.path.isdir(
                os.path.join(path, "best")):
            ckpt = ckpt_lib.TrainCheckpointer(path)
            try:
                state, meta = ckpt.restore(setup.state, best=best)
            finally:
                ckpt.close()
        else:
            state, meta = ckpt_lib.restore_state_from_directory(path, setup.state)
        summary = setup.evaluate(state)
    summary["step"] = int(jax.device_get(state.step))
    summary["checkpoint"] = path
    if meta.get("class_names") and list(meta["class_names"]) != setup.class_names:
        raise ValueError(f"{path}: checkpoint classes {meta['class_names']} differ from the "
                         f"dataset's {setup.class_names}")
    return summary
