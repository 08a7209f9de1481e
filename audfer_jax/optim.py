"""The three backbones' training recipes as optax chains.

Recipes (backbones.md, "Recipe" paragraphs of sections 1-3):

* **Former-DFER** (`main_DFEW.py`): SGD lr 0.01, momentum 0.9, coupled L2
  weight decay 1e-4 on every parameter (added to the gradient before the
  momentum, as `torch.optim.SGD(weight_decay=...)`), `StepLR(step_size=40,
  gamma=0.1)` stepped per epoch.
* **M3DFEL** (`solver.py`, `utils.py`): AdamW lr 5e-4, betas (0.9, 0.999), eps
  1e-8, weight decay 0.05 on every parameter; timm `CosineLRScheduler` stepped
  per iteration *after* each optimiser step (`step_update(epoch * n + i)`):
  t_initial = 300 epochs, warmup 20 epochs linear from 0, lr_min 5e-6,
  `warmup_prefix=False`. Optimiser step k therefore runs at `f(max(k - 1, 0))`:
  the first two steps run at lr 0.
* **MAE-DFER** (`run_class_finetuning.py`, `utils.cosine_scheduler`,
  `optim_factory.py`): AdamW betas (0.9, 0.999), eps 1e-8, weight decay 0.05
  except 1-D tensors, biases and `lg_region_tokens`; lr = 1e-3 * batch / 256,
  min lr 1e-6 * batch / 256; per iteration `linspace(0, lr, W)` over the W = 5
  warmup epochs, then `min + (lr - min) / 2 * (1 + cos(pi * i / N))`, i = 0..N-1;
  layer-wise lr decay 0.75: scale `0.75 ** (L + 1 - id)` with id 0 =
  `patch_embed`, block k = k + 1, the rest L + 1; the blocks are stacked
  (`mae_dfer` "Layout"), so a stacked leaf's scale is one value per row of
  its leading block axis, `[L - 1, 1, ...]`. PyTorch's AdamW multiplies
  the decoupled decay by the group lr, so the layer scale multiplies both the
  Adam step and the decay here too. The last block's propagation step
  (`mae_dfer.frozen_by_design`) gets an exactly zero gradient, so a zero Adam
  step, but torch's AdamW still decays its 2-D weights: PyTorch hands it a
  zero `.grad`, not None (checked on the original model; the training-parity
  test, issue 21, compares this), so the decay applies here too. The output
  does not depend on those weights either way.

All schedules are functions of the optimiser step count (the number of updates
already applied), as optax calls them. `make_optimizer` builds any of them from
an `ml_collections.ConfigDict` (see `audfer_jax/config_lib.py` for the fields).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

Schedule = Callable[[Any], Any]


# ---------------------------------------------------------------------------
# Schedules.
# ---------------------------------------------------------------------------

def step_lr_schedule(base_lr: float, steps_per_epoch: int, step_epochs: int = 40,
                     gamma: float = 0.1) -> Schedule:
    """PyTorch `StepLR` stepped once per epoch (Former-DFER `main_DFEW.py`).

    lr(k) = base_lr * gamma ** floor(epoch / step_epochs), epoch = k // steps_per_epoch.
    Former-DFER: 0.01 for epochs 0-39, 1e-3 for 40-79, 1e-4 for 80-99.
    """
    _check_positive(steps_per_epoch=steps_per_epoch, step_epochs=step_epochs)

    def schedule(count):
        epoch = jnp.asarray(count) // steps_per_epoch
        return base_lr * jnp.power(gamma, (epoch // step_epochs).astype(jnp.float32))

    return schedule


def timm_cosine_schedule(base_lr: float, steps_per_epoch: int, num_epochs: int,
                         warmup_epochs: float, lr_min: float,
                         warmup_lr_init: float = 0.0, step_delay: int = 1) -> Schedule:
    """timm 0.4.12 `CosineLRScheduler(t_in_epochs=False, warmup_prefix=False)`.

    With T = num_epochs * steps_per_epoch and W = warmup_epochs * steps_per_epoch
    iterations, timm's lr at iteration t is
    `warmup_lr_init + t * (base_lr - warmup_lr_init) / W` for t < W, else
    `lr_min + (base_lr - lr_min) / 2 * (1 + cos(pi * t / T))` (the cosine counts
    from t = 0 because `warmup_prefix` is False), and `lr_min` from t = T on
    (`cycle_limit=1`). M3DFEL calls `step_update(t)` after optimiser step t,
    and the scheduler starts the optimiser at `warmup_lr_init`, so optimiser
    step k uses `lr(max(k - step_delay, 0))` with `step_delay = 1`.

    The values are computed in float64 on the host, as timm does in Python
    floats, and looked up by step (`_tabulated`): computed in float32 inside
    the step, `cos` near the end of the run is off by up to 2e-6 relative.

    M3DFEL: base 5e-4, 300 epochs, 20 warmup epochs, lr_min 5e-6, init 0.
    """
    _check_positive(steps_per_epoch=steps_per_epoch, num_epochs=num_epochs)
    total = num_epochs * steps_per_epoch
    warmup = int(round(warmup_epochs * steps_per_epoch))
    t = np.maximum(np.arange(total + step_delay + 1, dtype=np.float64) - step_delay, 0.0)
    values = lr_min + 0.5 * (base_lr - lr_min) * (1.0 + np.cos(math.pi * t / total))
    values = np.where(t >= total, lr_min, values)
    if warmup > 0:
        values = np.where(t < warmup,
                          warmup_lr_init + t * ((base_lr - warmup_lr_init) / warmup), values)
    return _tabulated(values)


def warmup_cosine_schedule(base_lr: float, steps_per_epoch: int, num_epochs: int,
                           warmup_epochs: float, min_lr: float,
                           warmup_start: float = 0.0) -> Schedule:
    """MAE-DFER / VideoMAE `utils.cosine_scheduler`, one value per iteration.

    W = warmup_epochs * steps_per_epoch iterations of
    `linspace(warmup_start, base_lr, W)` (both ends included), then, over the
    N = num_epochs * steps_per_epoch - W remaining iterations,
    `min_lr + (base_lr - min_lr) / 2 * (1 + cos(pi * i / N))`, i = 0..N-1.
    Steps past the end keep the last value. Computed in float64 on the host,
    as the original's NumPy array, and looked up by step (`_tabulated`).
    """
    _check_positive(steps_per_epoch=steps_per_epoch, num_epochs=num_epochs)
    total = num_epochs * steps_per_epoch
    warmup = int(round(warmup_epochs * steps_per_epoch))
    n = total - warmup
    if n <= 0:
        raise ValueError(f"warmup ({warmup} iterations) must be shorter than the run "
                         f"({total} iterations)")
    i = np.arange(n, dtype=np.float64)
    cosine = min_lr + 0.5 * (base_lr - min_lr) * (1.0 + np.cos(math.pi * i / n))
    warm = np.linspace(warmup_start, base_lr, warmup) if warmup > 0 else np.zeros((0,))
    return _tabulated(np.concatenate([warm, cosine]))


def _tabulated(values: np.ndarray) -> Schedule:
    """A schedule that reads `values[count]` (the last value past the end).

    The table is a float32 constant of the traced program (4 bytes per
    iteration of the run), so each step's lr is the float64 value correctly
    rounded to float32, whatever the step count.
    """
    table = np.asarray(values, np.float32)
    last = table.shape[0] - 1

    def schedule(count):
        return jnp.asarray(table)[jnp.clip(jnp.asarray(count, jnp.int32), 0, last)]

    return schedule


def constant_schedule(base_lr: float) -> Schedule:
    """A constant learning rate (tests, ablations)."""
    return lambda count: jnp.full((), base_lr, jnp.float32)


def _check_positive(**values):
    for name, v in values.items():
        if int(v) <= 0:
            raise ValueError(f"{name} must be a positive integer, got {v}")


# ---------------------------------------------------------------------------
# Per-parameter rules.
# ---------------------------------------------------------------------------

def _path_keys(path) -> tuple[str, ...]:
    out = []
    for p in path:
        for attr in ("key", "name", "idx"):
            if hasattr(p, attr):
                out.append(str(getattr(p, attr)))
                break
        else:
            out.append(str(p))
    return tuple(out)


def decay_mask(params, rule: str, num_layers: int | None = None):
    """Pytree of bools like `params`: True where weight decay applies.

    Args:
        params: parameter pytree (arrays or `ShapeDtypeStruct`s).
        rule: 'all' (Former-DFER, M3DFEL: every parameter) or 'mae_dfer'
            (no decay for 1-D leaves, biases and `lg_region_tokens`;
            MAE-DFER `optim_factory.py`; a stacked block leaf counts as its
            rows, so a stacked bias `[L - 1, C]` is 1-D here).
        num_layers: model depth, needed by 'mae_dfer'.

    Raises:
        ValueError: unknown rule, or 'mae_dfer' without `num_layers`.
    """
    if rule == "all":
        return jax.tree.map(lambda _: True, params)
    if rule == "mae_dfer":
        if num_layers is None:
            raise ValueError("decay rule 'mae_dfer' needs num_layers (model depth)")
        from audfer_jax.models import mae_dfer
        return jax.tree_util.tree_map_with_path(
                lambda path, x: not mae_dfer.no_weight_decay(_path_keys(path), x.shape), params)
    raise ValueError(f"unknown weight-decay rule {rule!r}; expected 'all' or 'mae_dfer'")


def layer_scales(params, layer_decay: float, num_layers: int, frozen: bool = False):
    """Pytree of lr multipliers for MAE-DFER's layer-wise lr decay.

    scale = layer_decay ** (num_layers + 1 - id) with
    `audfer_jax.models.mae_dfer.lr_layer_id`, computed in float64 like the
    original's Python floats: a float per leaf, and for a stacked leaf
    (`[L - 1, ...]` under `blocks`) a float32 array `[L - 1, 1, ..., 1]` (one
    value per block, broadcasting over the leaf). With `frozen`, 0 for the
    `frozen_by_design` leaves (no update and no decay at all); the recipe
    leaves it off, as the original decays them (module docstring).
    """
    from audfer_jax.models import mae_dfer

    def scale(path, leaf):
        keys = _path_keys(path)
        if frozen and mae_dfer.frozen_by_design(keys, num_layers):
            return 0.0
        value = mae_dfer.lr_scale(keys, num_layers, layer_decay)
        if isinstance(value, np.ndarray):
            return value.astype(np.float32).reshape((-1,) + (1,) * (len(leaf.shape) - 1))
        return float(value)

    return jax.tree_util.tree_map_with_path(scale, params)


def scale_by_tree(scales) -> optax.GradientTransformation:
    """Multiplies each update leaf by the matching constant of `scales` (a
    float, or an array that broadcasts against the leaf)."""

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, s: u * jnp.asarray(s, u.dtype), updates, scales), state

    return optax.GradientTransformation(init_fn, update_fn)


def bias_correction(decay: float, count) -> jax.Array:
    """`1 - decay ** count` in float32, to about 1e-7 relative.

    `-expm1(count * log(decay))` with the logarithm taken in float64 on the
    host. optax forms `decay ** count` in float32, where `0.999` itself is
    rounded: its `1 - 0.999 ** t` is 1.3e-5 to 2.7e-5 relative off for small
    t, which made Adam's steps 0.6e-5 to 1.3e-5 larger than PyTorch's AdamW,
    whose bias corrections are Python floats (found by the optimiser parity
    test, issue 30).
    """
    log_decay = jnp.float32(math.log(decay))
    return -jnp.expm1(jnp.asarray(count, jnp.float32) * log_decay)


def scale_by_adam(b1: float, b2: float, eps: float) -> optax.GradientTransformation:
    """`optax.scale_by_adam` (same state) with `bias_correction`'s accurate corrections.

    update = m_hat / (sqrt(v_hat) + eps), m_hat = m / (1 - b1**t), v_hat =
    v / (1 - b2**t), t the step count after this step (Kingma & Ba 2015,
    Algorithm 1; the form of PyTorch's `_single_tensor_adam`).
    """
    base = optax.scale_by_adam(b1=b1, b2=b2, eps=eps)

    def update_fn(updates, state, params=None):
        del params
        mu = optax.tree.update_moment(updates, state.mu, b1, 1)
        nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
        count = optax.safe_increment(state.count)
        c1, c2 = bias_correction(b1, count), bias_correction(b2, count)
        out = jax.tree.map(lambda m, v: (m / c1) / (jnp.sqrt(v / c2) + eps), mu, nu)
        return out, optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(base.init, update_fn)


# ---------------------------------------------------------------------------
# The chain.
# ---------------------------------------------------------------------------

def make_schedule(cfg, *, steps_per_epoch: int, num_epochs: int,
                  global_batch_size: int) -> Schedule:
    """The learning-rate schedule named by `cfg.schedule`.

    Fields of `cfg` (an `ml_collections.ConfigDict`, `config.optim`):
    `lr`, `min_lr`, `lr_batch_base` (0 = off; else lr and min_lr are multiplied
    by `global_batch_size / lr_batch_base`, MAE-DFER's 256), `schedule` in
    {'step', 'timm_cosine', 'warmup_cosine', 'constant'}, `step_epochs`,
    `gamma`, `warmup_epochs`, `warmup_lr_init`.

    Raises:
        ValueError: unknown schedule name.
    """
    lr, min_lr = float(cfg.lr), float(cfg.get("min_lr", 0.0))
    base = float(cfg.get("lr_batch_base", 0) or 0)
    if base:
        lr *= global_batch_size / base
        min_lr *= global_batch_size / base
    name = cfg.schedule
    if name == "step":
        return step_lr_schedule(lr, steps_per_epoch, int(cfg.step_epochs), float(cfg.gamma))
    if name == "timm_cosine":
        return timm_cosine_schedule(lr, steps_per_epoch, num_epochs,
                                    float(cfg.warmup_epochs), min_lr,
                                    float(cfg.get("warmup_lr_init", 0.0)))
    if name == "warmup_cosine":
        return warmup_cosine_schedule(lr, steps_per_epoch, num_epochs,
                                      float(cfg.warmup_epochs), min_lr,
                                      float(cfg.get("warmup_lr_init", 0.0)))
    if name == "constant":
        return constant_schedule(lr)
    raise ValueError(f"unknown lr schedule {name!r}; expected step, timm_cosine, "
                     "warmup_cosine or constant")


def make_optimizer(cfg, params, *, steps_per_epoch: int, num_epochs: int,
                   global_batch_size: int, num_layers: int | None = None,
                   ) -> tuple[optax.GradientTransformation, Schedule]:
    """Builds the optax chain of a recipe and returns it with its lr schedule.

    Args:
        cfg: `config.optim` with, beside the schedule fields of `make_schedule`:
            `optimizer` ('sgd' or 'adamw'), `momentum` (SGD), `b1`, `b2`, `eps`
            (AdamW), `weight_decay`, `decay_rule` ('all' or 'mae_dfer', see
            `decay_mask`), `layer_decay` (0 = off; MAE-DFER 0.75), `grad_clip_norm`
            (0 = off; none of the recipes clip).
        params: parameter pytree (arrays or `ShapeDtypeStruct`s), used to build
            the per-leaf masks and scales.
        steps_per_epoch: optimiser steps per epoch (`num_train // global_batch`).
        num_epochs: epochs of the run.
        global_batch_size: clips per optimiser step over all devices.
        num_layers: transformer depth (MAE-DFER rules only).

    Returns:
        `(tx, schedule)`; `schedule(step)` is the base lr of step `step`
        (before layer scales), for logging.

    Raises:
        ValueError: unknown optimizer or rule.
    """
    schedule = make_schedule(cfg, steps_per_epoch=steps_per_epoch, num_epochs=num_epochs,
                             global_batch_size=global_batch_size)
    wd = float(cfg.get("weight_decay", 0.0))
    rule = cfg.get("decay_rule", "all")
    layer_decay = float(cfg.get("layer_decay", 0.0) or 0.0)
    parts = []
    clip = float(cfg.get("grad_clip_norm", 0.0) or 0.0)
    if clip > 0:
        parts.append(optax.clip_by_global_norm(clip))
    if cfg.optimizer == "sgd":
        # torch.optim.SGD: g += wd * p; buf = momentum * buf + g; p -= lr * buf.
        if wd:
            parts.append(optax.add_decayed_weights(wd, mask=decay_mask(params, rule, num_layers)))
        parts.append(optax.trace(decay=float(cfg.momentum), nesterov=bool(cfg.get("nesterov", False))))
    elif cfg.optimizer == "adamw":
        # torch.optim.AdamW: p -= lr * (adam_step + wd * p).
        parts.append(scale_by_adam(float(cfg.b1), float(cfg.b2), float(cfg.eps)))
        if wd:
            parts.append(optax.add_decayed_weights(wd, mask=decay_mask(params, rule, num_layers)))
    else:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}; expected 'sgd' or 'adamw'")
    if layer_decay:
        if num_layers is None:
            raise ValueError("layer_decay needs num_layers (model depth)")
        parts.append(scale_by_tree(layer_scales(params, layer_decay, num_layers)))
    parts.append(optax.scale_by_schedule(lambda count: -schedule(count)))
    return optax.chain(*parts), schedule
