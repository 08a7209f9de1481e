"""Training parity with the original PyTorch recipes (issue 21).

The fixtures in tests/fixtures/recipe_parity/ were written by
tools/recipe_reference/generate.py, which ran K optimiser steps of each
original training loop (Former-DFER `main_DFEW.py`, M3DFEL `solver.py`,
MAE-DFER `run_class_finetuning.py` + `engine_for_finetuning.py`) with its own
optimiser, scheduler and loss, on weights and batches made by the seeded NumPy
recipes below (repeated here, so no weight or clip is stored and PyTorch is not
needed). This test runs our trainer's own pieces on the same numbers: the
recipe's config file (`configs/*.py`), `optim.make_optimizer`,
`steps.make_train_step`, the converter's key mapping (`convert_state_dict`),
and the step counter set to the same schedule point, and compares:

* per step: the loss and its CE and AU parts (1e-4 relative), the global
  gradient norm (1e-3 relative), and the learning rate and weight decay every
  parameter leaf gets (1e-6 relative; read off our optax chain by probing it,
  compared leaf by leaf with the original's parameter group of the PyTorch
  tensors the leaf was converted from);
* after step K: every parameter tensor's L2 norm and the BatchNorm running
  statistics (1e-4 relative);
* the whole per-iteration schedule of each recipe (DFEW fold 1) against the
  original scheduler's values (1e-7 relative);
* MAE-DFER's Mixup/CutMix (a copy of timm 0.4.12's) against ours, given the
  same lambda and box.

In two slow M3DFEL cases float32 rounding noise reaches the parameters after
the first two steps, in the original's own float32 run as much as in ours;
later steps and the state after step K are compared within a measured drift
bound there (`FLOAT32_NOISE`). Former-DFER's cases run at 1/1000 of the
recipe's lr (`lr_scale`), where every step holds the tolerances above.

Two further sets see every optimiser and loss constant of the recipes free of
the model's rounding (issue 30): the original optimisers and schedulers on
seeded gradients at the real parameter shapes (`*_optim` fixtures: per step
and tensor the norms of the update, moments and parameter, 1e-6 relative),
and each recipe's criterion on seeded logits (`losses.json`, 1e-6).
`tools/mutation_check.py` checks that changing any of those constants fails
the default run.

What differs from the originals on purpose is listed in the fixture README.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from audfer_jax import experiment
from audfer_jax import model_state
from audfer_jax import optim
from audfer_jax import steps
from audfer_jax.models import convert

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "recipe_parity"
DFEW_FOLD1_TRAIN = 9356   # DFEW set 1 training clips; the recipes drop the last batch.

# Tolerances of issue 21.
LOSS_RTOL = 1e-4
LR_RTOL = 1e-6
GRAD_NORM_RTOL = 1e-3
STATE_RTOL = 1e-4
SCHEDULE_RTOL = 1e-7

# The default run (`make test`) keeps one case per recipe that passes and is
# cheapest to compile; the others are slow (each compiles a full train step,
# a minute or more on 2 cores). Default: M3DFEL's first steps (the two lr-0
# steps, BatchNorm statistics, CE with label smoothing) and MAE-DFER at the
# warmup -> cosine boundary (AU loss, all 8 layer-decay/no-decay group kinds,
# the zero-gradient last-block weights).
DEFAULT_CASES = ("m3dfel_ce_start", "mae_dfer_au_warmup")
SLOW_CASES = ("former_dfer_ce_start", "former_dfer_au_steplr40", "m3dfel_au_warmup_end",
              "m3dfel_au_cosine_mid", "mae_dfer_ce_start", "mae_dfer_au_cosine_mid",
              "m3dfel_au_full", "mae_dfer_au_full")


# ---------------------------------------------------------------------------
# The generator's seeded NumPy recipes (tools/recipe_reference/generate.py).
# ---------------------------------------------------------------------------

def recipe_array(rng: np.random.Generator, key: str, shape) -> np.ndarray:
    """One state_dict entry, drawn in state_dict key order (fan-in scaled)."""
    name = key.rsplit(".", 1)[-1]
    shape = tuple(int(s) for s in shape)
    if name == "num_batches_tracked":
        return np.zeros(shape, np.int64)
    z = rng.standard_normal(shape)
    if name == "running_mean":
        v = 0.1 * z
    elif name == "running_var":
        v = 1.0 + 0.25 * np.tanh(z)
    elif len(shape) <= 1:
        v = 1.0 + 0.1 * z if name.endswith("weight") else 0.05 * z
    else:
        v = z / math.sqrt(int(np.prod(shape[1:])))
    return v.astype(np.float32)


def recipe_batches(seed: int, num_steps: int, batch: int, frames: int, size: int):
    """`num_steps` batches in our layout: clips `[B, T, S, S, 3] uint8`, labels, AU targets."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(num_steps):
        clips = rng.integers(0, 256, (batch, frames, size, size, 3), dtype=np.uint8)
        labels = rng.integers(0, 7, (batch,)).astype(np.int32)
        au = (rng.random((batch, 18)) < 0.3).astype(np.float32)
        out.append({"clips": clips, "labels": labels, "au_targets": au,
                    "au_mask": np.ones((batch,), np.float32),
                    "mask": np.ones((batch,), np.float32)})
    return out


def recipe_state_dict(case: dict, fill=None) -> dict[str, np.ndarray]:
    """The case's initial PyTorch state_dict; `fill(i, key, shape)` replaces the values."""
    rng = np.random.default_rng(case["weight_seed"])
    out = {}
    for i, (key, shape, _) in enumerate(case["state_dict"]):
        value = recipe_array(rng, key, shape)
        out[key] = value if fill is None else fill(i, key, value)
    return out


# ---------------------------------------------------------------------------
# Our side.
# ---------------------------------------------------------------------------

def load_case(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def recipe_config(recipe: str, loss: str, case: dict | None = None):
    """The recipe's own config file, with the generator's determinism settings."""
    spec = importlib.util.spec_from_file_location(f"_cfg_{recipe}",
                                                  ROOT / "configs" / f"{recipe}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config(f"dataset=dfew,fold=1,loss={loss}")
    if case is None:
        return c
    if recipe == "m3dfel":
        c.model_overrides.image_size = int(case["image_size"])
    if recipe == "mae_dfer":
        c.model_overrides.depth = int(case["depth"])
        c.model_overrides.drop_path_rate = 0.0
        # Mixup off (its draws are tested on their own below); without it the
        # original's criterion is LabelSmoothingCrossEntropy(--smoothing 0.1),
        # which our config's label_smoothing gives with Mixup off.
        c.mixup.enabled = False
    if "lr_scale" in case:
        # The fixture's stable regime (Former-DFER: 1/100 of the recipe's lr).
        c.optim.lr = float(c.optim.lr) * float(case["lr_scale"])
    return c


def at_count(opt_state, count: int):
    """`opt_state` with every schedule counter at `count` (the schedule point);
    the optimiser's moments and Adam's own step count stay fresh, as in the
    original, whose optimiser is new at t0."""
    is_sched = lambda s: isinstance(s, optax.ScaleByScheduleState)  # noqa: E731
    return jax.tree.map(
            lambda s: s._replace(count=jnp.asarray(count, s.count.dtype)) if is_sched(s) else s,
            opt_state, is_leaf=is_sched)


def flat(tree, prefix=(), is_leaf=lambda _: False):
    for k, v in tree.items():
        if isinstance(v, dict) and not is_leaf(v):
            yield from flat(v, prefix + (k,), is_leaf)
        else:
            yield prefix + (k,), v


class Run:
    """Our trainer on one case: built once per test session (see `run_case`)."""

    def __init__(self, name: str):
        case = self.case = load_case(name)
        recipe = case["recipe"]
        config = self.config = recipe_config(recipe, case["objective"], case)
        model = self.model = model_state.build_model(config, 7)
        frames, size = 16, int(case["image_size"])
        template = jax.eval_shape(
                lambda: model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)},
                                   jnp.zeros((1, frames, size, size, 3), jnp.uint8),
                                   train=False))
        variables, _ = convert.convert_state_dict(recipe, recipe_state_dict(case), template)
        # Which PyTorch keys each Flax leaf was converted from: convert a state_dict
        # whose key i holds the constant i + 1 (every conversion moves values only).
        tags, _ = convert.convert_state_dict(
                recipe, recipe_state_dict(case, lambda i, k, v: np.full(v.shape, i + 1,
                                                                        np.float32)), template)
        keys = self.keys = [k for k, _, _ in case["state_dict"]]
        self.sources = {path: sorted({keys[int(t) - 1] for t in np.unique(np.asarray(leaf))
                                      if t > 0})
                        for path, leaf in flat(tags)}
        # For the lr probe, which reads lrs per source tensor whatever the layout
        # (a stacked leaf holds several blocks' tensors): of each parameter leaf
        # every element (leaves up to 4096 elements) or every 61st and the last,
        # with 1 + the index of its PyTorch key (0: a value no key holds). Every
        # tensor of these models has >= 512 elements per leaf it is in, so >= 8 probed.
        self.probe_at = jax.tree.map(_probe_elements, tags["params"])
        params = jax.tree.map(jnp.asarray, variables["params"])
        batch_stats = jax.tree.map(jnp.asarray, variables.get("batch_stats", {}))
        spe = DFEW_FOLD1_TRAIN // int(config.batch_size)
        self.tx, self.schedule = optim.make_optimizer(
                config.optim, params, steps_per_epoch=spe, num_epochs=int(config.num_epochs),
                global_batch_size=int(config.batch_size),
                num_layers=model_state.model_depth(model))
        lam, prior, pos_weight = experiment.resolve_loss(config, "dfew", 7)
        step = jax.jit(steps.make_train_step(model, config, tx=self.tx, schedule=self.schedule,
                                             prior=prior, pos_weight=pos_weight, lam=lam,
                                             num_classes=7))
        t0 = int(case["t0"])
        state = steps.TrainState(step=jnp.asarray(t0, jnp.int32), params=params,
                                 batch_stats=batch_stats,
                                 opt_state=at_count(self.tx.init(params), t0),
                                 rng=jax.random.PRNGKey(0))
        self.metrics = []
        for batch in recipe_batches(case["batch_seed"], case["steps"], case["batch"], frames,
                                    size):
            state, m = step(state, batch)
            self.metrics.append(jax.device_get(m))
        self.state = jax.device_get(state)
        self.params0 = params

    def probe(self, count: int):
        """Per PyTorch tensor: (lr, lr * weight decay) of our optax chain at schedule
        point `count`, read off the elements of our leaves converted from it.

        With fresh moments, a gradient of 1 on a zero parameter moves it by
        -lr (SGD's first momentum step is the gradient; Adam's bias-corrected
        first step is g / (|g| + eps) = 1 / (1 + 1e-8), 1 in float32), and a zero
        gradient on a parameter of 1 moves it by -lr * wd (the decay alone).
        Layer scales, decay masks and frozen leaves all show in these numbers.
        (optax's own Adam forms its bias corrections in float32 and would step
        1 - 6.4e-6 here; `optim.scale_by_adam`, like PyTorch, steps 1.)

        Raises:
            AssertionError: a tensor whose elements get different lrs or decays.
        """
        opt = self.config.optim
        # SGD's first momentum step is the gradient; Adam's 1 / (1 + eps).
        first_step = 1.0 / (1.0 + float(opt.eps)) if opt.optimizer == "adamw" else 1.0
        spans = jax.device_get(self._probe_program(count, self.params0, self.probe_at))
        out = ({}, {})
        for found, tree, scale in zip(out, spans, (1.0 / first_step, 1.0)):
            for path, (low, high) in flat({"params": tree}, is_leaf=_is_pair):
                for key in self.sources[path]:
                    t = self.keys.index(key) + 1
                    assert low[t] == high[t], (f"{key} ({'/'.join(path)}): lr or decay not "
                                               f"uniform over the tensor ({low[t]}..{high[t]})")
                    value = float(low[t]) * scale
                    assert found.setdefault(key, value) == value, f"{key}: split leaves differ"
        return out


    @functools.cached_property
    def _probe_program(self):
        """The jitted probe, compiled once per case: `(count, params, probe_at) ->
        (lr spans, decay spans)`, each leaf's `(min, max)` per key tag of its
        probed elements (a mean would add float32 summation error)."""
        tx, n = self.tx, len(self.keys) + 1

        def span(u, at):
            where, tag = at
            values = -u.reshape(-1)[where]
            return (jax.ops.segment_min(values, tag, num_segments=n),
                    jax.ops.segment_max(values, tag, num_segments=n))

        # Arguments, not closed-over constants: XLA would fold megabytes of them.
        @jax.jit
        def run(count, params0, probe_at):
            zeros = jax.tree.map(jnp.zeros_like, params0)
            ones = jax.tree.map(jnp.ones_like, params0)
            state = at_count(tx.init(params0), count)
            lr, _ = tx.update(ones, state, zeros)
            decay, _ = tx.update(zeros, state, ones)
            return (jax.tree.map(span, lr, probe_at, is_leaf=_is_pair),
                    jax.tree.map(span, decay, probe_at, is_leaf=_is_pair))

        return run


def _is_pair(x) -> bool:
    return isinstance(x, tuple)


def _probe_elements(tags) -> tuple[np.ndarray, np.ndarray]:
    """`(flat indices, their key tags)` of the elements of a leaf the lr probe reads."""
    flat_tags = np.asarray(tags).reshape(-1)
    where = np.arange(flat_tags.size) if flat_tags.size <= 4096 else np.unique(
            np.append(np.arange(0, flat_tags.size, 61), flat_tags.size - 1))
    return where.astype(np.int32), flat_tags[where].astype(np.int32)


@functools.lru_cache(maxsize=None)
def run_case(name: str) -> Run:
    return Run(name)


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


# Where float32 rounding noise reaches the trajectory (issue 21; fixture README,
# "What the comparison found"). Up to `first_noisy_step` every check uses the
# issue's tolerances; the loss and gradient norm of later steps, and the state
# after step K, are computed from parameters that rounding noise has moved, in
# the original's own float32 run as much as in ours, and are compared within
# `drift` (relative; loss, gradient norm, parameter norms, BatchNorm
# statistics), about 3x the larger of our measured difference and the
# original's float32-vs-float64 difference (`generate.py --float64`):
# * M3DFEL at lr 5e-4: Adam moves every element with |g| >> eps by about
#   +-lr whatever its size, so an element whose gradient is within rounding of
#   zero moves +-lr by the sign of its rounding error; a layer-1 ReLU input of
#   -4.3e-6 (float64) rounds positive in ours, and the 1e-5 gradient error that
#   leaves in the stem and layer 1 flips 47 elements with |g| ~ 1e-6 (11 flip
#   between the original's float32 and float64 runs). From step 2 the
#   parameters differ by those +-lr moves.
# Former-DFER's cases run at 1/1000 of the recipe's lr (`lr_scale` in the
# fixture, issue 30): at lr 0.01 the seeded weights trained far from a stable
# regime (loss 4.5 -> 18 -> 74) and the float32 step-0 gradient of layers 1-3
# (good to ~3e-3 in the original's own float32 run) needed drift bounds of
# 3e-2 / 7.5e-2 / 4e-2 / 0.2 after step 0; at 1e-5 every step holds the
# issue's tolerances (measured: loss 1.8e-5, gradient norm 8.2e-5, parameter
# norms 4.8e-7, BatchNorm statistics 6.5e-6 at worst).
_M3DFEL_DRIFT = dict(loss=1e-2, grad_norm=3.5e-2, param_norm=2.5e-3, batch_stats=5e-2)
FLOAT32_NOISE: dict[str, tuple[int, dict[str, float]]] = {
        "m3dfel_au_warmup_end": (2, _M3DFEL_DRIFT),
        "m3dfel_au_cosine_mid": (2, _M3DFEL_DRIFT),
}


def tolerance(name: str, check: str, rtol: float, step: int | None = None) -> float:
    """The issue's `rtol`, or the case's float32 drift bound once noise has reached
    the parameters (`step` at or after `first_noisy_step`; `step=None`: the state
    after step K, always after it)."""
    if name not in FLOAT32_NOISE:
        return rtol
    first_noisy, drift = FLOAT32_NOISE[name]
    return rtol if step is not None and step < first_noisy else max(rtol, drift[check])


def cases(names, check: str):
    out = []
    for n in names:
        marks = [pytest.mark.slow] if n in SLOW_CASES else []
        if not (FIXTURES / f"{n}.json").exists():
            marks.append(pytest.mark.skip(reason=f"fixture {n}.json not generated"))
        out.append(pytest.param(n, marks=marks, id=n))
    return out


ALL_CASES = DEFAULT_CASES + SLOW_CASES


# ---------------------------------------------------------------------------
# Per-step trajectory.
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", cases(ALL_CASES, "loss"))
def test_loss_per_step(name):
    run = run_case(name)
    # In `ce` cases the AU term is only logged, ours without the pos_weight
    # that the `ce` config does not resolve: not compared.
    keys = ("loss", "ce") if run.case["objective"] == "ce" else ("loss", "ce", "au_bce")
    for k, m in enumerate(run.metrics):
        rtol = tolerance(name, "loss", LOSS_RTOL, step=k)
        for ours, theirs in zip(keys, keys):
            ref = run.case[theirs][k]
            assert abs(float(m[ours]) - ref) <= rtol * abs(ref), (
                    f"{name} step {k} (iteration {run.case['t0'] + k}): {ours} "
                    f"{float(m[ours])!r} vs original {ref!r} (rtol {rtol})")


@pytest.mark.parametrize("name", cases(ALL_CASES, "grad_norm"))
def test_grad_norm_per_step(name):
    run = run_case(name)
    for k, m in enumerate(run.metrics):
        ref = run.case["grad_norm"][k]
        rtol = tolerance(name, "grad_norm", GRAD_NORM_RTOL, step=k)
        assert abs(float(m["grad_norm"]) - ref) <= rtol * ref, (
                f"{name} step {k}: gradient norm {float(m['grad_norm'])!r} vs original {ref!r} "
                f"(rtol {rtol})")


@pytest.mark.parametrize("name", cases(ALL_CASES, "lr"))
def test_learning_rate_and_decay_per_leaf(name):
    """Every parameter tensor's lr and lr x weight decay at every step, as our
    leaves converted from it get them, against the original's parameter group."""
    run = run_case(name)
    case = run.case
    group_of = {p: g for g, grp in enumerate(case["groups"]) for p in grp["params"]}
    wd = [grp["weight_decay"] for grp in case["groups"]]
    no_grad = set(case["no_grad"])
    checked = 0
    for k in range(case["steps"]):
        lr, decay = run.probe(case["t0"] + k)
        assert set(lr) == set(group_of), "parameters without a leaf, or leaves without one"
        for key, ours in lr.items():
            g = group_of[key]
            if key in no_grad:
                if case["objective"] == "ce" and key.split(".")[0] in ("AU_fc", "fc_au"):
                    # The CE-only original has no AU head; ours keeps one that
                    # the CE loss does not train (see the fixture README).
                    continue
                # The original's AdamW/SGD skips a tensor without a gradient
                # (MAE-DFER's last-block propagation step): ours must not move it.
                assert ours == 0.0 and decay[key] == 0.0, (
                        f"{name} {key} never gets a gradient in the original "
                        f"but ours moves it (lr {ours}, decay {decay[key]})")
                continue
            ref_lr = case["lr"][k][g]
            assert abs(ours - ref_lr) <= LR_RTOL * abs(ref_lr), (
                    f"{name} step {k} (iteration {case['t0'] + k}) {key}: lr "
                    f"{ours!r} vs original group {g} lr {ref_lr!r}")
            ref_decay = ref_lr * wd[g]
            assert abs(decay[key] - ref_decay) <= LR_RTOL * abs(ref_decay) + 1e-30, (
                    f"{name} step {k} {key}: lr x weight decay {decay[key]!r} vs "
                    f"original group {g}: {ref_lr!r} x {wd[g]!r}")
            checked += 1
    assert checked >= case["steps"] * 10


# ---------------------------------------------------------------------------
# State after step K.
# ---------------------------------------------------------------------------

def _components(run: Run, collection: str):
    """Groups of our leaves and of PyTorch keys that map onto each other, so
    that L2 norms compare (a split tensor's squared norm is its parts' sum)."""
    comps: list[tuple[set, set]] = []
    for path, src in run.sources.items():
        if path[0] != collection or not src:
            continue
        hit = [c for c in comps if c[1] & set(src)]
        merged = ({path}, set(src))
        for c in hit:
            comps.remove(c)
            merged = (merged[0] | c[0], merged[1] | c[1])
        comps.append(merged)
    return comps


@pytest.mark.parametrize("name", cases(ALL_CASES, "param_norm"))
def test_parameter_norms_after_k_steps(name):
    run = run_case(name)
    ours = dict(flat({"params": run.state.params}))
    ref = run.case["param_norm"]
    worst = (0.0, "")
    rtol = tolerance(name, "param_norm", STATE_RTOL)
    comps = _components(run, "params")
    assert sum(len(k) for _, k in comps) == len(ref)
    for paths, keys in comps:
        if run.case["objective"] == "ce" and any(k.split(".")[0] in ("AU_fc", "fc_au")
                                            for k in keys):
            continue    # the AU head: not part of the CE-only original (README)
        a = math.sqrt(sum(float(np.sum(np.square(np.asarray(ours[p], np.float64))))
                          for p in paths))
        b = math.sqrt(sum(ref[k] ** 2 for k in keys))
        worst = max(worst, (abs(a - b) / b, sorted(keys)[0]))
        assert abs(a - b) <= rtol * b, (
                f"{name}: after step {run.case['steps']}, norm of {sorted(keys)} is {a!r}, "
                f"original {b!r} (rtol {rtol})")


@pytest.mark.parametrize("name", cases([n for n in ALL_CASES if not n.startswith("mae_dfer")],
                                       "batch_stats"))
def test_batchnorm_statistics_after_k_steps(name):
    run = run_case(name)
    ref = np.load(FIXTURES / f"{name}_bn.npz")
    ours = dict(flat({"batch_stats": run.state.batch_stats}))
    seen = set()
    rtol = tolerance(name, "batch_stats", STATE_RTOL)
    for path, leaf in ours.items():
        (key,) = run.sources[path]
        seen.add(key)
        assert rel(leaf, ref[key]) <= rtol, (
                f"{name}: after step {run.case['steps']}, {'/'.join(path)} ({key}) differs "
                f"from the original by {rel(leaf, ref[key]):.3g} (relative L2; rtol {rtol})")
    assert seen == set(ref.files)


# ---------------------------------------------------------------------------
# Whole schedules (item 3).
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("recipe", ["former_dfer", "m3dfel", "mae_dfer"])
def test_whole_schedule(recipe):
    """Our lr at every iteration of the recipe's full DFEW fold 1 run."""
    ref = np.load(FIXTURES / "schedules.npz")
    config = recipe_config(recipe, "au")
    spe = DFEW_FOLD1_TRAIN // int(config.batch_size)
    total = spe * int(config.num_epochs)
    if recipe == "former_dfer":
        expected = np.repeat(ref["former_dfer_per_epoch"], spe)
    else:
        expected = ref[recipe]
    assert expected.shape == (total,)
    _, schedule = optim.make_optimizer(
            config.optim, {"w": jnp.zeros((1,))}, steps_per_epoch=spe,
            num_epochs=int(config.num_epochs), global_batch_size=int(config.batch_size),
            num_layers=16)
    ours = np.asarray(jax.jit(jax.vmap(schedule))(jnp.arange(total)), np.float64)
    err = np.abs(ours - expected)
    bad = np.nonzero(err > SCHEDULE_RTOL * np.abs(expected))[0]
    assert bad.size == 0, (
            f"{recipe}: {bad.size} of {total} iterations off by more than {SCHEDULE_RTOL} "
            f"relative; first {bad[0]}: ours {ours[bad[0]]!r}, original {expected[bad[0]]!r}; "
            f"worst relative {np.max(err / np.maximum(np.abs(expected), 1e-30)):.3g}")


# ---------------------------------------------------------------------------
# Mixup / CutMix (item 4).
# ---------------------------------------------------------------------------

def _mixup_cases():
    path = FIXTURES / "mixup.json"
    if not path.exists():
        return [pytest.param(None, marks=pytest.mark.skip(reason="mixup.json not generated"))]
    # "mae_dfer" in the id: `-k mae_dfer` selects every test that reads its config.
    return [pytest.param(c, id=f"mae_dfer-seed{c['seed']}-"
                                f"{'cutmix' if c['use_cutmix'] else 'mixup'}")
            for c in json.loads(path.read_text())["cases"]]


@pytest.mark.parametrize("case", _mixup_cases())
def test_mixup_cutmix_matches_original(case):
    """Same lam, box centre and partner (the reversed batch): our mixed clips
    and soft targets equal MAE-DFER's Mixup (timm 0.4.12's, 'batch' mode,
    smoothing 0.1)."""
    from audfer_jax import mixup  # pylint: disable=import-outside-toplevel
    # The smoothing of the mixed targets: the recipe's (configs/mae_dfer.py).
    smoothing = float(recipe_config("mae_dfer", "au").mixup.label_smoothing)
    arrays = np.load(FIXTURES / "mixup.npz")
    tag = f"case{case['seed']}"
    # The generator's seeded clips [B, C, T, H, W] in [0, 1] -> ours [B, T, H, W, C].
    clips = np.random.default_rng(100 + case["seed"]).random((4, 3, 2, 10, 10))
    clips = np.transpose(clips.astype(np.float32), (0, 2, 3, 4, 1))
    expected = np.transpose(arrays[f"{tag}_mixed"], (0, 2, 3, 4, 1))
    batch = {"clips": jnp.asarray(clips), "labels": jnp.asarray(case["labels"], jnp.int32),
             "au_targets": jnp.zeros((len(case["labels"]), 18), jnp.float32)}
    height, width = clips.shape[2:4]
    if case["use_cutmix"]:
        cy, cx = case["centre"]
        box, lam = mixup.box_from_centre(height, width, case["lam_drawn"], cy, cx)
        # timm's corrected lam is a float64 of the same area fraction.
        assert float(lam) == pytest.approx(case["lam"], rel=1e-7)
        out = mixup.mix_with(batch, 7, lam, box, label_smoothing=smoothing)
        # Pasted pixels: exactly the original's.
        np.testing.assert_array_equal(np.asarray(out["clips"]), expected)
    else:
        assert case["lam"] == case["lam_drawn"]
        out = mixup.mix_with(batch, 7, case["lam"], None, label_smoothing=smoothing)
        # The original forms 1 - lam in float64 before the float32 product;
        # ours in float32: at most one float32 rounding apart.
        np.testing.assert_allclose(np.asarray(out["clips"]), expected, rtol=2.5e-7, atol=1.2e-7)
    np.testing.assert_allclose(np.asarray(out["label_probs"]), arrays[f"{tag}_targets"],
                               rtol=2.5e-7, atol=1e-8)


# ---------------------------------------------------------------------------
# Optimiser parity on seeded gradients (issue 30): every recipe constant of
# the optimiser shows, free of the model's float32 noise.
# ---------------------------------------------------------------------------

OPTIM_CASES = ("former_dfer_optim", "m3dfel_optim", "mae_dfer_optim")
OPTIM_RTOL = 1e-6


def optim_base(rng: np.random.Generator, shape) -> np.ndarray:
    """One tensor's uniform draw (tools/recipe_reference/optimiser_cases.py)."""
    return rng.random(tuple(int(s) for s in shape), dtype=np.float32)


def optim_param(key: str, base: np.ndarray) -> np.ndarray:
    """The tensor's starting value (float32 arithmetic only, as the generator)."""
    half = base - np.float32(0.5)
    if base.ndim >= 2:
        return half * np.float32(2.0 / math.sqrt(int(np.prod(base.shape[1:]))))
    if key.endswith("weight"):
        return np.float32(1.0) + np.float32(0.2) * half
    return np.float32(0.1) * half


def optim_grad(index: int, base: np.ndarray, step: int) -> np.ndarray:
    """Gradient of parameter `index` at `step`: `2**-e (roll(base) - 1/2) base**2`."""
    flat_base = base.reshape(-1)
    other = np.roll(flat_base, (1 + 7919 * step) % max(flat_base.size, 1)).reshape(base.shape)
    e = (7 * index) % 31 + (step % 2) * (index % 2)
    return (np.float32(2.0 ** -e) * (other - np.float32(0.5))) * (base * base)


def _optimiser_moments(opt_state):
    """`(first, second)` moment trees of our optax state: AdamW's mu and nu, or
    SGD's momentum trace and None. Found by type, wherever the chain puts them."""
    is_state = lambda s: isinstance(s, (optax.ScaleByAdamState, optax.TraceState))  # noqa: E731
    found = [s for s in jax.tree.leaves(opt_state, is_leaf=is_state) if is_state(s)]
    assert len(found) == 1, f"expected one Adam or momentum state, found {len(found)}"
    (s,) = found
    return (s.mu, s.nu) if isinstance(s, optax.ScaleByAdamState) else (s.trace, None)


def _sum_squares(tree) -> dict:
    """`{path: sum of squares}` of every leaf, float64 (exact enough for 1e-6)."""
    return {path: float(np.sum(np.square(np.asarray(leaf, np.float64))))
            for path, leaf in flat({"params": jax.device_get(tree)})}


class OptimRun:
    """Our recipe's optimiser (`model_state.build` from configs/<recipe>.py, i.e.
    `optim.make_optimizer`) on the fixture's seeded gradients: per step, the
    squared L2 norm of each of our parameter leaves' update, moments and value."""

    def __init__(self, name: str):
        meta = self.meta = load_case(name)
        recipe = meta["recipe"]
        config = recipe_config(recipe, "au")
        state = model_state.build(config, 7,
                                  steps_per_epoch=DFEW_FOLD1_TRAIN // int(config.batch_size))
        keys = meta["keys"]
        order = [k for k, _, is_param, _ in keys if is_param]
        rng = np.random.default_rng(meta["seed"])
        bases = {k: optim_base(rng, shape) for k, shape, is_param, _ in keys if is_param}
        buffers = {k: np.zeros(shape, np.int64 if k.endswith("num_batches_tracked")
                               else np.float32) for k, shape, is_param, _ in keys
                   if not is_param}

        def to_ours(values):
            variables, _ = convert.convert_state_dict(recipe, {**buffers, **values},
                                                      state.variables)
            return jax.tree.map(jnp.asarray, variables["params"])

        tags = to_ours({k: np.full(b.shape, i + 1, np.float32)
                        for i, (k, b) in enumerate(bases.items())})
        self.sources = {path: sorted({order[int(t) - 1] for t in np.unique(np.asarray(leaf))
                                      if t > 0})
                        for path, leaf in flat({"params": tags})}
        del tags
        params = to_ours({k: optim_param(k, b) for k, b in bases.items()})
        opt_state = at_count(state.tx.init(params), int(meta["t0"]))

        @jax.jit
        def step(grads, opt_state, params):
            updates, opt_state = state.tx.update(grads, opt_state, params)
            return updates, opt_state, optax.apply_updates(params, updates)

        self.sums = []
        for k in range(int(meta["steps"])):
            grads = to_ours({key: optim_grad(i, bases[key], k) for i, key in enumerate(order)})
            updates, opt_state, params = step(grads, opt_state, params)
            first, second = _optimiser_moments(opt_state)
            self.sums.append({"update": _sum_squares(updates), "moment1": _sum_squares(first),
                              "moment2": None if second is None else _sum_squares(second),
                              "param": _sum_squares(params)})


@functools.lru_cache(maxsize=None)
def optim_run(name: str) -> OptimRun:
    return OptimRun(name)


def _optim_cases():
    out = []
    for n in OPTIM_CASES:
        marks = [] if (FIXTURES / f"{n}.json").exists() else [
                pytest.mark.skip(reason=f"fixture {n}.json not generated")]
        out.append(pytest.param(n, marks=marks, id=n))
    return out


@pytest.mark.parametrize("name", _optim_cases())
def test_optimiser_updates_and_state_per_step(name):
    """Per step and per parameter tensor: the L2 norms of the update, of the
    momentum buffer (SGD) or the first and second moments (AdamW), and of the
    parameter after the step, against the original optimiser and scheduler
    on the same gradients (1e-6 relative; the tensors of one of our leaves,
    or of a leaf split over tensors, are compared as one sum of squares)."""
    run = optim_run(name)
    ref = np.load(FIXTURES / f"{name}.npz")
    order = [k for k, _, is_param, _ in run.meta["keys"] if is_param]
    column = {k: i for i, k in enumerate(order)}
    comps = _components(run, "params")
    assert sorted(k for _, keys in comps for k in keys) == sorted(order)
    bad = []
    for k, sums in enumerate(run.sums):
        for q, ours in sums.items():
            assert (ours is None) == (q not in ref.files), (
                    f"{name}: {q} exists on one side only (optimiser kind differs)")
            if ours is None:
                continue
            for paths, keys in comps:
                a = math.sqrt(sum(ours[p] for p in paths))
                b = math.sqrt(sum(float(ref[q][k, column[key]]) ** 2 for key in keys))
                err = abs(a - b) / max(b, 1e-30)
                if err > OPTIM_RTOL:
                    bad.append((err, f"step {k} (iteration {run.meta['t0'] + k}) {q} of "
                                     f"{sorted(keys)[0]}{' +' if len(keys) > 1 else ''}: "
                                     f"{a!r} vs original {b!r}"))
    bad.sort(reverse=True)
    assert not bad, (f"{name}: {len(bad)} norms off by more than {OPTIM_RTOL} relative; "
                     "worst: " + "; ".join(f"{e:.3g} {m}" for e, m in bad[:4]))


# ---------------------------------------------------------------------------
# Loss parity on seeded logits (issue 30): the recipe's loss constants, free
# of the model's float32 noise.
# ---------------------------------------------------------------------------

LOSS_RTOL_SEEDED = 1e-6


def loss_inputs(seed: int, recipe_index: int, batch: int):
    """Logits, AU logits, labels and AU targets (tools/recipe_reference/loss_cases.py)."""
    rng = np.random.default_rng([seed, recipe_index])
    logits = np.float32(2.0) * rng.standard_normal((batch, 7), dtype=np.float32)
    au_logits = np.float32(2.0) * rng.standard_normal((batch, 18), dtype=np.float32)
    labels = rng.integers(0, 7, (batch,)).astype(np.int32)
    au = (rng.random((batch, 18)) < 0.3).astype(np.float32)
    return logits, au_logits, labels, au


class LogitsModel:
    """A stand-in backbone whose parameters are its outputs: our train step's
    loss and gradient norm are then those of the logits themselves."""

    def apply(self, variables, clips, train, rngs=None, mutable=()):
        del clips, train, rngs, mutable
        from audfer_jax.models import base  # pylint: disable=import-outside-toplevel
        p = variables["params"]
        return base.ModelOutput(logits=p["logits"], au_logits=p["au_logits"],
                                features=p["logits"]), {}


def _loss_cases():
    path = FIXTURES / "losses.json"
    if not path.exists():
        return [pytest.param(None, None, marks=pytest.mark.skip(reason="losses.json missing"))]
    return [pytest.param(r, o, id=f"{r}-{o}") for r in ("former_dfer", "m3dfel", "mae_dfer")
            for o in ("ce", "au")]


@pytest.mark.parametrize("recipe,objective", _loss_cases())
def test_loss_on_seeded_logits(recipe, objective):
    """Our train step (`steps.make_train_step` with the recipe's config file:
    label smoothing, AU weight, scale, prior and pos_weight) on the original
    criterion's logits: loss, its CE and AU parts, and the gradient norm with
    respect to the logits, 1e-6 relative. MAE-DFER without Mixup, as the
    training cases (its mixed targets: `test_mixup_cutmix_matches_original`)."""
    ref = json.loads((FIXTURES / "losses.json").read_text())
    expected = ref[recipe][objective]
    logits, au_logits, labels, au = loss_inputs(ref["seed"], ref["recipes"].index(recipe),
                                                ref["batch"])
    config = recipe_config(recipe, objective, {"depth": 2, "image_size": 32})
    lam, prior, pos_weight = experiment.resolve_loss(config, "dfew", 7)
    tx = optax.sgd(0.0)
    step = jax.jit(steps.make_train_step(LogitsModel(), config, tx=tx,
                                         schedule=lambda count: 0.0, prior=prior,
                                         pos_weight=pos_weight, lam=lam, num_classes=7))
    params = {"logits": jnp.asarray(logits), "au_logits": jnp.asarray(au_logits)}
    batch = {"clips": np.zeros((len(labels), 1, 1, 1, 3), np.uint8), "labels": labels,
             "au_targets": au, "au_mask": np.ones(len(labels), np.float32),
             "mask": np.ones(len(labels), np.float32)}
    state = steps.TrainState(step=jnp.asarray(0, jnp.int32), params=params, batch_stats={},
                             opt_state=tx.init(params), rng=jax.random.PRNGKey(0))
    _, m = step(state, batch)
    # In `ce` runs our AU term is only logged (no pos_weight resolved): not compared.
    keys = ("loss", "ce", "grad_norm") + (("au_bce",) if objective == "au" else ())
    for k in keys:
        ours, theirs = float(m[k]), expected[k]
        assert abs(ours - theirs) <= LOSS_RTOL_SEEDED * abs(theirs), (
                f"{recipe} {objective}: {k} {ours!r} vs original {theirs!r}")
