"""Train-step throughput and the cost of the AU loss (`audfer-jax bench train`'s library).

`run_bench` builds the config's model, optimizer and the trainer's own train step
(`steps.make_train_step`, jitted with the state donated as in training,
`parallel.jit_step`) on the current backend, feeds synthetic uint8 batches
(`clips [B, T, H, W, 3]`, random labels and AU targets) and measures:

* **train-step throughput**: clips/s = B / median step time, the median over
  `steps` timed steps after compilation and `warmup` untimed steps, each
  step waited for with `block_until_ready` (so asynchronous dispatch does
  not hide work); the two variants below alternate step by step, so a
  change of the machine's load hits both alike;
* **efficiency**: the step's FLOPs per clip (XLA cost analysis of its
  lowering with MAE-DFER's block loop unrolled, `flops.unrolled_flops`),
  the achieved FLOP/s per device and, on GPU/TPU, the MFU against the
  device's peak bfloat16 FLOP/s (`audfer_jax.flops`, `peak_flops` to
  override; "n/a" on CPU);
* **share of step time spent in the AU loss**, two ways:
  1. *difference*: the same step with the AU loss (and AU head) removed (lambda = 0 and
     the AU head's output replaced by a constant, so XLA drops the AU head
     and its gradient) against the full step: `(t_full - t_without) / t_full`
     with the fastest timed step of each (other processes only add time). On
     a busy machine this difference is noisy and may come out negative.
  2. *isolated*: forward + backward of the jitted AU loss alone
     (`losses.au_weighted_bce` on `[B, 18]` logits), 100 chained calls
     inside one jit so dispatch overhead is amortised, divided by `t_full`.

* **device-side augmentation share** (issue 14, with `data.augment_device`
  and a random recipe): the jitted `augment_device` function on a batch of
  the host's clips (`[B, T, S, S, 3] uint8`, S = prepare_size or image_size),
  median of 5 calls, as a share of augmentation + full step
  (`aug / (aug + t_full)`; the goal is <= 10 % for MAE-DFER on a CPU).

The goal is under 2 % (the paper claims the AU loss needs "no additional
arithmetic" at inference; au_dfer_method.md section 5). Timings are
wall-clock on whatever else shares the machine; report the device with them.

Parameters are by default random (`init="random"`: the shapes of the model's
init, values from a fan-in-scaled normal, BatchNorm statistics 0 / 1): step
time does not depend on the values, and this skips the model's jitted init,
whose random-number code takes minutes to compile on a small CPU.
`init="model"` uses the trainer's jitted init (`ModelState.init_state`) instead.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any, Callable

import numpy as np

GOAL_PERCENT = 2.0


class _WithoutAUHead:
    """A model whose AU logits are a constant zero array.

    `make_train_step` calls `model.apply(...)`; returning zeros that do not
    depend on the features lets XLA remove the AU head's matmul and gradient,
    and with lambda = 0 the AU term only adds an elementwise op on a constant
    `[B, 18]` array to the logged metrics. The parameter tree is unchanged.
    """

    def __init__(self, model):
        self.model = model

    def apply(self, *args, **kwargs):
        import jax  # pylint: disable=g-import-not-at-top
        import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
        from audfer_jax.models.base import ModelOutput  # pylint: disable=g-import-not-at-top

        def strip(out):
            return out._replace(au_logits=jax.lax.stop_gradient(
                    jnp.zeros(out.au_logits.shape, out.au_logits.dtype)))

        res = self.model.apply(*args, **kwargs)
        if isinstance(res, ModelOutput):
            return strip(res)
        out, state = res
        return strip(out), state


def random_variables(shapes, seed: int = 0):
    """Random values for a `ShapeDtypeStruct` variables tree (timing only).

    Leaves named `bias`, `mean` -> 0; `scale`, `var` -> 1; every other leaf a
    normal with std `1 / sqrt(fan_in)`, fan_in = product of all but the last
    axis (LeCun normal), so activations stay finite through deep stacks.

    Returns:
        The same tree with NumPy leaves of the given shapes and dtypes.
    """
    import jax  # pylint: disable=g-import-not-at-top
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = str(getattr(path[-1], "key", path[-1]))
        shape, dtype = tuple(leaf.shape), leaf.dtype
        if name in ("bias", "mean"):
            return np.zeros(shape, dtype)
        if name in ("scale", "var"):
            return np.ones(shape, dtype)
        if not np.issubdtype(dtype, np.floating):
            return np.zeros(shape, dtype)
        fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
        return (rng.standard_normal(shape) / np.sqrt(max(fan_in, 1))).astype(dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def synthetic_batch(batch: int, input_shape, num_classes: int, num_aus: int = 18,
                    seed: int = 0) -> dict:
    """A training batch of the layout.md contract with random content.

    Returns:
        `clips [B, T, H, W, 3] uint8`, `labels [B] int32`, `au_targets [B, A]
        float32` in {0, 1}, `au_mask [B]` and `mask [B]` float32 ones,
        `index [B] int32`.
    """
    rng = np.random.default_rng(seed)
    t, h, w = input_shape
    return {"clips": rng.integers(0, 256, (batch, t, h, w, 3), dtype=np.uint8),
            "labels": rng.integers(0, num_classes, batch).astype(np.int32),
            "au_targets": (rng.random((batch, num_aus)) < 0.3).astype(np.float32),
            "au_mask": np.ones(batch, np.float32), "mask": np.ones(batch, np.float32)}


def _loss_constants(config, dataset: str, num_classes: int):
    """`(lam, prior, pos_weight)` of the config, or stand-ins of the same shapes.

    Variants that estimate the prior or pos_weight from the training labels
    need a prepared dataset; for timing, ones of the same shapes do.
    """
    from audfer_jax import experiment  # pylint: disable=g-import-not-at-top
    try:
        return experiment.resolve_loss(config, dataset, num_classes)
    except ValueError:
        lam = 0.0 if config.loss == "ce" else float(config.au.lam)
        return lam, np.ones((num_classes, 18), np.float32), np.ones((18,), np.float32)


def time_interleaved(steps: dict[str, Callable], states: dict[str, Any], batch, num_steps: int,
                     warmup: int) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Times state-donating step functions, alternating them step by step.

    Each function is compiled (first call) and run `warmup` more times; then
    `num_steps` rounds each run one step of every function in turn, each
    waited for with `block_until_ready`. Alternating makes slow drifts of the
    machine's load hit all variants alike.

    Returns:
        `({name: seconds per timed step}, {name: seconds of the first call,
        i.e. compilation + one step})`.
    """
    import jax  # pylint: disable=g-import-not-at-top
    states = dict(states)
    first = {}
    for name, step in steps.items():
        t0 = time.perf_counter()
        states[name], m = step(states[name], batch)
        jax.block_until_ready((states[name], m))
        first[name] = time.perf_counter() - t0
        for _ in range(warmup):
            states[name], m = step(states[name], batch)
        jax.block_until_ready((states[name], m))
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(num_steps):
        for name, step in steps.items():
            t0 = time.perf_counter()
            states[name], m = step(states[name], batch)
            jax.block_until_ready((states[name], m))
            times[name].append(time.perf_counter() - t0)
    return times, first


def time_isolated_loss(batch: int, num_classes: int, prior, pos_weight, scale: float,
                       repeats: int = 100, calls: int = 5) -> float:
    """Seconds per forward + backward of the AU loss on `[B, 18]` logits.

    `repeats` chained evaluations run in one `lax.fori_loop` (each feeds a tiny
    multiple of its gradient into the next, so none can be hoisted or
    skipped); the median over `calls` calls, divided by `repeats`.
    """
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    from audfer_jax import losses  # pylint: disable=g-import-not-at-top
    rng = np.random.default_rng(1)
    z0 = jnp.asarray(rng.standard_normal((batch, 18)), jnp.float32)
    targets = jnp.asarray(rng.random((batch, 18)) < 0.3, jnp.float32)
    labels = jnp.asarray(rng.integers(0, num_classes, batch), jnp.int32)
    prior = jnp.asarray(prior, jnp.float32)
    pos = None if pos_weight is None else jnp.asarray(pos_weight, jnp.float32)
    grad = jax.value_and_grad(lambda z: losses.au_weighted_bce(
            z, targets, labels, prior, pos, scale=scale))

    @jax.jit
    def run(z):
        def body(_, carry):
            z, acc = carry
            value, g = grad(z)
            return z - 1e-6 * g, acc + value
        return jax.lax.fori_loop(0, repeats, body, (z, jnp.zeros((), jnp.float32)))

    jax.block_until_ready(run(z0))
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        jax.block_until_ready(run(z0))
        times.append(time.perf_counter() - t0)
    return statistics.median(times) / repeats


@dataclasses.dataclass(frozen=True)
class _Bench:
    """What both variants of one `run_bench` share.

    Attributes:
        setup: the config's `model_state.ModelState` (model, variables, optimizer).
        mesh: the data mesh over the local devices.
        num_classes: expression classes C.
        lam, prior, pos_weight: the AU loss constants (`_loss_constants`).
        device_batch: the synthetic batch, sharded over `mesh`.
        make_state: a fresh, replicated `TrainState` per call.
    """
    setup: Any
    mesh: Any
    num_classes: int
    lam: float
    prior: Any
    pos_weight: Any
    device_batch: dict
    make_state: Callable[[], Any]


def run_bench(config, *, batch: int, steps: int, warmup: int = 2, init: str = "random",
              model=None, log: Callable[[str], None] = print,
              time_augment: bool = False, peak_flops: float | None = None,
              steps_per_epoch: int = 100) -> dict:
    """Times the full and the AU-free train step of `config`; see the module doc.

    Args:
        config: experiment config (`configs/*.py`).
        batch: global batch size B (a multiple of the device count).
        steps: timed steps per variant (>= 1).
        warmup: untimed steps after the compiling one (per variant).
        init: `random` (default) or `model` (the trainer's jitted init).
        model: a Flax module instead of `config.model` (tests).
        log: progress messages.
        time_augment: also time the device-side augmentation (module doc).
        peak_flops: peak FLOP/s of one device for the MFU (default: the
            `flops.PEAK_BF16_FLOPS` entry of the device kind).
        steps_per_epoch: optimizer steps per epoch for the schedule. It sets
            the learning rates the schedule computes, not the step's shapes
            or work, so the default 100 stands for any dataset.

    Returns:
        `{"model", "backend", "devices", "batch", "input_shape", "steps",
        "full_ms", "without_au_ms" (medians), "full_min_ms", "without_au_min_ms"
        (fastest steps), "full_clips_per_s", "without_au_clips_per_s" (from the
        medians), "au_share_diff_percent" (from the fastest steps),
        "au_loss_isolated_ms", "au_share_isolated_percent", "compile_s_full",
        "compile_s_without_au", "loss", "lam", "device_kind", "flops_per_clip",
        "flops_per_s" (per device), "mfu" (fraction; None when unknown, e.g. on
        CPU)}`, with `time_augment` and a device recipe also
        "augment_device_ms", "augment_device_recipe",
        "augment_device_share_percent"; times are in ms per step.

    Raises:
        ValueError: batch not a multiple of the device count, steps < 1, or an
            unknown `init`.
    """
    import jax  # pylint: disable=g-import-not-at-top
    if steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")
    if init not in ("random", "model"):
        raise ValueError(f"--init must be 'random' or 'model', got {init!r}")
    bench = _prepare(config, batch, model, init, steps_per_epoch)
    variants = _variants(config, bench)
    input_shape = bench.setup.input_shape
    out: dict[str, Any] = {"model": config.model, "backend": jax.default_backend(),
                           "devices": jax.device_count(), "batch": batch,
                           "input_shape": list(input_shape), "steps": steps,
                           "loss": str(config.loss), "lam": float(bench.lam)}
    log(f"compiling the full and the AU-free train step of {config.model} ...")
    states = {k: bench.make_state() for k in variants}
    compiled, compile_s = _compile_variants(variants, states, bench)
    times, first = time_interleaved(compiled, states, bench.device_batch, steps, warmup)
    for name in variants:
        median = statistics.median(times[name])
        out[f"{name}_ms"] = 1e3 * median
        out[f"{name}_min_ms"] = 1e3 * min(times[name])
        out[f"{name}_clips_per_s"] = batch / median
        out[f"compile_s_{name}"] = compile_s[name] + first[name]
    out.update(_efficiency(variants["full"], bench, out["full_ms"], batch, peak_flops))
    out.update(_au_shares(config, bench, batch, out))
    if time_augment:
        out.update(_augment_share(config, batch, out["full_ms"]))
    return out


def _prepare(config, batch: int, model, init: str, steps_per_epoch: int) -> _Bench:
    """The model, optimizer, loss constants, batch and state maker of one benchmark.

    Raises:
        ValueError: a bad model, or a batch not a multiple of the device count.
    """
    import jax  # pylint: disable=g-import-not-at-top
    from audfer_jax import classes, model_state, parallel  # pylint: disable=g-import-not-at-top
    from audfer_jax import steps as steps_lib  # pylint: disable=g-import-not-at-top
    dataset = str(config.data.name)
    num_classes = classes.num_classes(dataset)
    if model is None:
        model = model_state.build_model(config, num_classes)
    mesh = parallel.make_mesh()
    parallel.local_batch_size(batch, mesh)            # raises when not divisible
    setup = model_state.build(config, num_classes, steps_per_epoch=steps_per_epoch,
                              global_batch=batch, data_config=config.data, model=model)
    lam, prior, pos_weight = _loss_constants(config, dataset, num_classes)
    host_batch = synthetic_batch(batch, setup.input_shape, num_classes)
    device_batch = parallel.global_batch(host_batch, mesh)

    if init == "random":
        host_vars = random_variables(setup.variables)

        def make_state():
            # Random host values (no init program to compile); the optimizer
            # state is the ModelState's optimizer's own init of them.
            params = host_vars["params"]
            state = steps_lib.TrainState(
                    step=np.int32(0), params=params,
                    batch_stats=host_vars.get("batch_stats", {}),
                    opt_state=jax.jit(setup.tx.init)(params),
                    rng=np.asarray(jax.random.PRNGKey(int(config.seed))))
            return jax.device_put(state, parallel.replicated(mesh))
    else:
        def make_state():
            return setup.init_state(int(config.seed), mesh)

    return _Bench(setup=setup, mesh=mesh, num_classes=num_classes, lam=lam, prior=prior,
                  pos_weight=pos_weight, device_batch=device_batch, make_state=make_state)


def _variants(config, bench: _Bench) -> dict[str, Callable]:
    """`{"full": step, "without_au": step}`: the trainer's step with and without the AU loss."""
    from audfer_jax import steps as steps_lib  # pylint: disable=g-import-not-at-top
    setup = bench.setup
    common = dict(tx=setup.tx, schedule=setup.schedule, prior=bench.prior,
                  pos_weight=bench.pos_weight, num_classes=bench.num_classes)
    return {"full": steps_lib.make_train_step(setup.model, config, lam=bench.lam, **common),
            "without_au": steps_lib.make_train_step(_WithoutAUHead(setup.model), config,
                                                    lam=0.0, **common)}


def _compile_variants(variants: dict[str, Callable], states: dict[str, Any],
                      bench: _Bench) -> tuple[dict[str, Any], dict[str, float]]:
    """Each variant jitted as in training and compiled ahead of time; its compile seconds."""
    from audfer_jax import parallel  # pylint: disable=g-import-not-at-top
    compiled, compile_s = {}, {}
    for k, fn in variants.items():
        # Compiled ahead of time so that XLA's cost analysis (FLOPs) is at hand.
        t0 = time.perf_counter()
        compiled[k] = parallel.jit_step(fn, bench.mesh).lower(
                states[k], bench.device_batch).compile()
        compile_s[k] = time.perf_counter() - t0
    return compiled, compile_s


def _efficiency(step_fn: Callable, bench: _Bench, full_ms: float, batch: int,
                peak_flops: float | None) -> dict[str, Any]:
    """FLOPs per clip, FLOP/s per device and MFU of the full step.

    Counted on the step's lowering with its block loop unrolled
    (`flops.unrolled_flops`: XLA counts a scanned loop body once).
    """
    import jax  # pylint: disable=g-import-not-at-top
    from audfer_jax import flops as flops_lib  # pylint: disable=g-import-not-at-top
    out: dict[str, Any] = {}
    device_kind = jax.devices()[0].device_kind
    total = flops_lib.unrolled_flops(step_fn, bench.setup.abstract_state(0, bench.mesh),
                                     bench.device_batch)
    eff = flops_lib.efficiency(None if total is None else total / jax.device_count(),
                               full_ms / 1e3, batch, device_kind, peak_flops,
                               num_devices=jax.device_count())
    out.update(device_kind=device_kind, flops_per_clip=eff["flops_per_clip"],
               flops_per_s=eff["flops_per_s"], mfu=eff["mfu"])
    return out


def _au_shares(config, bench: _Bench, batch: int, timed: dict) -> dict[str, float]:
    """The AU loss's share of the step: by difference of the variants and isolated."""
    # Minima: other processes only ever add time, so the fastest step is the
    # least disturbed estimate of each variant's own cost.
    out = {"au_share_diff_percent": (100.0 * (timed["full_min_ms"] - timed["without_au_min_ms"])
                                     / timed["full_min_ms"])}
    iso = time_isolated_loss(batch, bench.num_classes, bench.prior, bench.pos_weight,
                             float(config.au.scale))
    out["au_loss_isolated_ms"] = 1e3 * iso
    out["au_share_isolated_percent"] = 100.0 * 1e3 * iso / timed["full_ms"]
    return out


def _augment_share(config, batch: int, full_ms: float) -> dict[str, Any]:
    """The device-side augmentation's time and share of augmentation + step ({} if none)."""
    from audfer_jax.benchmarks import input as input_bench  # pylint: disable=g-import-not-at-top
    aug = input_bench.time_device_augment(config.data, batch)
    if not aug:
        return {}
    return {"augment_device_ms": aug["ms_per_batch"],
            "augment_device_recipe": aug["recipe"],
            "augment_device_share_percent": (
                    100.0 * aug["ms_per_batch"] / (aug["ms_per_batch"] + full_ms))}
