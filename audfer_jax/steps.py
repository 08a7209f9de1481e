"""The train state and the jitted steps: pure functions of arrays, no I/O.

`make_train_step` builds the step shared by both data-parallel strategies
(`parallel.jit_step`: one jitted, donated step over a sharded global batch;
`parallel.pmap_step`: the same function with explicit collectives);
`make_eval_step` sums a (possibly multi-view) test batch's confusion matrix,
AU counts and CE. The loop that drives them is `train.py`.

Randomness: the key of step s is `fold_in(state.rng, s)` (then the device index
under pmap), so a resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from audfer_jax import au as au_lib
from audfer_jax import losses
from audfer_jax import metrics as metrics_lib
from audfer_jax import mixup as mixup_lib
from audfer_jax import parallel
from audfer_jax import rng as rng_lib
from audfer_jax.models import platform

PyTree = Any


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
    init, init_rng = _state_init(model, tx, input_shape, seed, mesh)
    return jax.jit(init, out_shardings=parallel.replicated(mesh),
                   compiler_options=_init_compiler_options(mesh))(init_rng)


# The init program is all threefry hashing and the samplers of the
# initialisers (its forward pass is dead code): ~100 while loops and ~700
# fusions for the tiny Former-DFER, which XLA:CPU's LLVM passes took 20.8 s
# to compile at the default optimisation level and 4.3 s at level 0, for a
# program that runs once (in 0.01-0.02 s either way). The random bits are
# identical; the float samplers may differ in the last bit (2.4e-7 seen).
# Other backends compile it at their defaults.
_CPU_INIT_OPTIONS = {"xla_backend_optimization_level": 0}


def _init_compiler_options(mesh: jax.sharding.Mesh) -> dict | None:
    """XLA options for the jitted init: level 0 on CPU devices, else the defaults."""
    return dict(_CPU_INIT_OPTIONS) if platform.platform_of(mesh) == "cpu" else None


def abstract_train_state(model, tx: optax.GradientTransformation, input_shape, seed: int,
                         mesh: jax.sharding.Mesh) -> TrainState:
    """The `TrainState` of `create_train_state` as `ShapeDtypeStruct`s, nothing computed.

    Each leaf carries the replicated sharding over `mesh`, so the tree can be
    passed to `jit(...).lower` for devices this process cannot reach
    (`audfer-jax compile`: a TPU topology from a CPU host).
    """
    init, init_rng = _state_init(model, tx, input_shape, seed, mesh)
    sharding = parallel.replicated(mesh)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
                        jax.eval_shape(init, init_rng))


def _state_init(model, tx, input_shape, seed: int, mesh):
    """`(init(rng) -> TrainState, rng)`, traced for the platform of `mesh`."""
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

    return platform.traced_for(init, mesh), init_rng


def abstract_params(model, input_shape):
    """`ShapeDtypeStruct` pytree of the model's `params` (no memory used)."""
    dummy = jax.ShapeDtypeStruct((1, *input_shape, 3), jnp.uint8)
    rng = jax.random.PRNGKey(0)
    return jax.eval_shape(lambda: model.init({"params": rng, "dropout": rng}, jnp.zeros(
            dummy.shape, dummy.dtype), train=False))["params"]



def make_train_step(model, config: ml_collections.ConfigDict, *,
                    tx: optax.GradientTransformation, schedule: Callable,
                    prior, pos_weight, lam: float, num_classes: int,
                    augment: Callable | None = None) -> Callable:
    """The train step shared by both strategies: `step(state, batch, axis_name=None)`.

    Args:
        model: Flax module returning `ModelOutput`.
        config: reads `label_smoothing`, `au.scale` and `mixup.*`.
        tx, schedule: from `optim.make_optimizer`.
        prior: `[C, 18]` AU prior; pos_weight: None, `[18]` or `[C, 18]`.
        lam: AU loss weight (0 = CE only).
        num_classes: C.
        augment: the device-side clip augmentation
            (`data.augment_device.make_device_augment`), `fn(key, clips
            [B, T, S, S, 3] uint8) -> [B, T, H, W, 3] uint8`, or None.

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
    objective = _make_objective(model, config, prior, pos_weight, lam)
    rng_impl = str(config.get("rng_impl", "threefry"))

    def step(state: TrainState, batch: Mapping[str, jax.Array], axis_name: str | None = None):
        rng = jax.random.fold_in(state.rng, state.step)
        if axis_name is not None:
            rng = jax.random.fold_in(rng, parallel.device_index(axis_name))
        mix_rng, dropout_rng = jax.random.split(rng)
        dropout_rng = rng_lib.dropout_key(dropout_rng, rng_impl)
        batch = dict(batch)
        if augment is not None:
            # Its own stream: split(rng) takes counters 0 and 1 (fold_in(rng, 1)
            # equals split(rng)[1]), so the augmentation folds in 2.
            batch["clips"] = augment(jax.random.fold_in(rng, 2), batch["clips"])
        batch, targets, ce_smoothing = _mix(mix_rng, batch, config, num_classes)
        mask = batch["mask"].astype(jnp.float32)
        au_mask = mask * batch["au_mask"].astype(jnp.float32)
        # Denominators do not depend on the parameters: global sums, computed once.
        dens = (parallel.psum_if(jnp.sum(mask), axis_name),
                parallel.psum_if(au_lib.NUM_AUS * jnp.sum(au_mask), axis_name))
        (loss, (new_vars, ce, au_term, correct)), grads = jax.value_and_grad(
                objective, has_aux=True)(state.params, state.batch_stats, batch, targets,
                                         ce_smoothing, mask, au_mask, dens, dropout_rng)
        grads = parallel.psum_if(grads, axis_name)
        loss, ce, au_term, correct = parallel.psum_if((loss, ce, au_term, correct), axis_name)
        batch_stats = state.batch_stats
        if jax.tree.leaves(state.batch_stats):
            batch_stats = parallel.pmean_if(new_vars["batch_stats"], axis_name)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                                  opt_state=opt_state)
        metrics = {"loss": loss, "ce": ce, "au_bce": au_term,
                   "accuracy": correct / jnp.maximum(dens[0], 1.0),
                   "lr": jnp.asarray(schedule(state.step), jnp.float32),
                   "grad_norm": optax.tree.norm(grads), "count": dens[0]}
        return new_state, jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), metrics)

    return step


def _mix(rng, batch: dict, config, num_classes: int):
    """`(batch, targets, ce_smoothing)`: mixup/cutmix when `config.mixup.enabled`.

    Targets are `labels [B] int32`, or `label_probs [B, C]` after mixing (then
    already smoothed, as timm's Mixup does, so the CE adds none).
    """
    mix = config.mixup
    if not mix.enabled:
        return batch, batch["labels"], float(config.label_smoothing)
    batch = mixup_lib.mixup_cutmix(
            rng, batch, num_classes, mixup_alpha=float(mix.mixup_alpha),
            cutmix_alpha=float(mix.cutmix_alpha), switch_prob=float(mix.switch_prob),
            prob=float(mix.prob), label_smoothing=float(mix.label_smoothing))
    return batch, batch["label_probs"], 0.0


def _make_objective(model, config, prior, pos_weight, lam: float) -> Callable:
    """The differentiated function: params -> (loss, (new BN vars, ce, au, correct))."""
    prior = jnp.asarray(prior, jnp.float32)
    pos_weight = None if pos_weight is None else jnp.asarray(pos_weight, jnp.float32)
    scale = float(config.au.scale)

    def objective(params, batch_stats, batch, targets, ce_smoothing, mask, au_mask, dens,
                  dropout_rng):
        has_bn = bool(jax.tree.leaves(batch_stats))
        variables = {"params": params}
        if has_bn:
            variables["batch_stats"] = batch_stats
        out, new_vars = model.apply(variables, batch["clips"], train=True,
                                    rngs={"dropout": dropout_rng},
                                    mutable=["batch_stats"] if has_bn else [])
        ce_num, _ = losses.cross_entropy_sums(out.logits, targets, ce_smoothing, mask)
        au_num, _ = losses.au_weighted_bce_sums(out.au_logits, batch["au_targets"], targets,
                                                prior, pos_weight, scale=scale, mask=au_mask)
        ce_den, au_den = dens
        ce = ce_num / jnp.maximum(ce_den, 1.0)
        au_term = au_num / jnp.where(au_den > 0, au_den, 1.0)
        if lam == 0:
            loss = ce + 0.0 * jax.lax.stop_gradient(au_term)
        else:
            loss = (1.0 - lam) * ce + lam * au_term
        correct = jnp.sum(mask * (jnp.argmax(out.logits, -1) == batch["labels"]))
        return loss, (new_vars, ce, au_term, correct)

    return objective


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


def jit_eval_step(model, num_classes: int, mesh: jax.sharding.Mesh) -> Callable:
    """`make_eval_step` jitted as training evaluates: state replicated, batch
    sharded over `mesh`, sums replicated; traced for the mesh's platform."""
    return jax.jit(platform.traced_for(make_eval_step(model, num_classes), mesh),
                   in_shardings=(parallel.replicated(mesh), parallel.batch_sharded(mesh)),
                   out_shardings=parallel.replicated(mesh))
