"""Training and evaluation: `train_and_evaluate(config, workdir)` and its loop.

The shape of flax `examples/imagenet` and big_vision: a config in, metrics out,
everything else written to `workdir`:

    workdir/config.json          the resolved config
    workdir/checkpoints/<step>/  latest train states (Orbax, `checkpoint.py`)
    workdir/best/<step>/         the best-criterion train state
    workdir/metrics.jsonl        every logged scalar, one JSON object a line
    workdir/events.out.*         TensorBoard (scalars, confusion-matrix images)
    workdir/metrics.json         final figures: last and best epoch, labelled

Where things live: the train state and the jitted steps in `steps.py`; what
training and evaluation share (data config, model, loss constants, initial
state) in `experiment.py`; metric writers and records in `reporting.py`; the
mesh and the step wrappers in `parallel.py`. This module is the loop:
(1) set-up and restore (`_start`): resume from the newest checkpoint (step,
optimizer, RNG and data position) or initialise from converted weights
(`config.init_from`); (2) the epochs of jitted, donated train steps
(`_train_epoch`); (3) evaluation every `config.eval_every_epochs` and at the
end, the best-epoch bookkeeping and the epoch-end checkpoint
(`_evaluate_and_checkpoint`): UAR, WAR, per-class recall, per-AU F1,
confusion matrix (datasets.md section 8), last-epoch and best-epoch figures
(criterion `config.best_metric`) both recorded and labelled; (4) `_finish`.

Randomness: the key of step s is `fold_in(state.rng, s)`, so a resumed run
draws exactly what an uninterrupted one would; the data order depends only on
(seed, epoch, batch in epoch).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from audfer_jax import checkpoint as ckpt_lib
from audfer_jax import experiment
from audfer_jax import flops as flops_lib
from audfer_jax import goodput as goodput_lib
from audfer_jax import metrics as metrics_lib
from audfer_jax import parallel
from audfer_jax import paths
from audfer_jax import preemption
from audfer_jax import reporting
from audfer_jax import steps as steps_lib



@dataclasses.dataclass
class _Run:
    """The mutable state of one training run, shared by the loop's parts."""
    config: ml_collections.ConfigDict
    workdir: str
    exp: experiment.Experiment
    ckpt: ckpt_lib.TrainCheckpointer
    writer: Any
    state: Any
    meta: dict
    step: int
    train_step: Callable
    strategy: str
    best_metric: str
    stop_after: int
    console: reporting.Console
    guard: preemption.PreemptionGuard
    ledger: goodput_lib.Ledger
    preempted: bool = False
    session_steps: int = 0    # steps run by this process since it started
    flops_per_step: float | None = None   # per device, XLA's count of the train step
    t_session: float = 0.0    # when this session's steady steps began, less evaluations
    pending: Any = None       # (step, metrics, clip indices, epoch, batch) of the last step
    window: list = dataclasses.field(default_factory=list)
    t_window: float = 0.0

    @property
    def process0(self) -> bool:
        return jax.process_index() == 0

    def host_state(self):
        """The state as replicated global arrays (unstacks pmap copies)."""
        if self.strategy == "pmap":
            return parallel.replicate(parallel.from_pmap_state(self.state), self.exp.mesh)
        return self.state

    def make_meta(self, step: int) -> dict:
        spe = self.exp.steps_per_epoch
        out = dict(self.meta)
        out.update({"step": int(step), "epoch": int(step // spe),
                    "batch_in_epoch": int(step % spe), "class_names": self.exp.class_names,
                    "best_metric": self.best_metric})
        return out

    def stopped(self) -> bool:
        """The test hook `config.stop_after_steps` was reached."""
        return bool(self.stop_after) and self.step == self.stop_after


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
        "criterion", "value"}, "history": [{epoch, step, uar, war}...],
        "goodput": {wall_seconds, train_share, seconds: {startup, compile,
        input, train, eval, checkpoint_save, checkpoint_restore, other},
        programs_compiled, programs_from_cache}}` (`goodput.Ledger`: this
        session's wall time by category);
        also written to `workdir/metrics.json`. `last` is the final
        evaluation, `best` the evaluated epoch with the highest criterion
        (`config.best_metric`).

    Raises:
        FloatingPointError: the loss became NaN or infinite; names the step,
            the epoch and batch, and the clip indices of that batch.
        ValueError: a bad config (unknown loss or data field, batch not
            divisible by the devices, no full training batch...).
    """
    ledger = goodput_lib.Ledger()      # the session's wall time starts here
    parallel.maybe_initialize_distributed(config)
    parallel.enable_compilation_cache(config.compile_cache_dir)
    if data is None:
        from audfer_jax.data import pipeline as data  # pylint: disable=g-import-not-at-top
    # The run directory is created by `save_config` once the config has been
    # validated (`_start`), so a bad config leaves nothing behind.
    workdir = paths.resolve(workdir)
    grace = config.get("preemption_grace_seconds", preemption.DEFAULT_GRACE_SECONDS)
    with ledger, jax.set_mesh(parallel.make_mesh()), preemption.PreemptionGuard(
            grace_seconds=grace) as guard:
        run = _start(config, workdir, data, model, guard, ledger)
        try:
            for epoch in range(run.step // run.exp.steps_per_epoch, run.exp.num_epochs):
                _train_epoch(run, epoch)
                if (run.stopped() or run.preempted) and run.step % run.exp.steps_per_epoch:
                    # Stopped inside an epoch (a signal, or the test hook that
                    # simulates a kill right after step `stop_after_steps`).
                    _save_latest(run, force=True)
                    break
                _evaluate_and_checkpoint(run, epoch)
                # One agreement per epoch end (a collective on several hosts).
                ledger.switch("other")
                guard.phase = f"the other processes at the stop agreement (step {run.step})"
                run.preempted = run.preempted or guard.should_stop()
                if run.stopped() or run.preempted:
                    break
        finally:
            guard.phase = "the pending checkpoint writes"
            ledger.switch("checkpoint_save")
            run.ckpt.wait_until_finished()
            ledger.switch("other")
            run.writer.flush()
        return _finish(run)


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
    parallel.maybe_initialize_distributed(config)
    parallel.enable_compilation_cache(config.get("compile_cache_dir", ""))
    if data is None:
        from audfer_jax.data import pipeline as data  # pylint: disable=g-import-not-at-top
    path = paths.resolve(workdir_or_checkpoint)
    with jax.set_mesh(parallel.make_mesh()):
        exp = experiment.Experiment(config, path, data, for_training=False, model=model)
        if paths.isdir(paths.join(path, "checkpoints")) or paths.isdir(
                paths.join(path, "best")):
            ckpt = ckpt_lib.TrainCheckpointer(path)
            try:
                state, meta = ckpt.restore(exp.state, best=best)
            finally:
                ckpt.close()
        else:
            state, meta = ckpt_lib.restore_state_from_directory(path, exp.state)
        summary = exp.evaluate(state)
    summary["step"] = int(jax.device_get(state.step))
    summary["checkpoint"] = path
    if meta.get("class_names") and list(meta["class_names"]) != exp.class_names:
        raise ValueError(f"{path}: checkpoint classes {meta['class_names']} differ from the "
                         f"dataset's {exp.class_names}")
    return summary


# ---------------------------------------------------------------------------
# The loop's parts.
# ---------------------------------------------------------------------------

def _start(config, workdir: str, data, model, guard: preemption.PreemptionGuard,
           ledger: goodput_lib.Ledger) -> _Run:
    """Set-up: experiment, writers, checkpointer; resume or initialise; the step."""
    console = reporting.Console(enabled=jax.process_index() == 0,
                                progress_bar=None if config.progress_bar else False)
    exp = experiment.Experiment(config, workdir, data, for_training=True, model=model)
    _describe(console, config, exp)
    spe = exp.steps_per_epoch
    reporting.save_config(config, workdir)
    writer = reporting.make_writer(workdir)
    best_metric = str(config.best_metric)
    metrics_lib.criterion({"war": 0.0, "uar": 0.0, "au_f1_mean": 0.0}, best_metric)   # validates the name
    ckpt = ckpt_lib.TrainCheckpointer(
            workdir, save_every_steps=int(config.checkpoint_every_steps or 0),
            extra_steps=[spe * (e + 1) for e in range(exp.num_epochs)],
            keep=int(config.keep_checkpoints), async_save=bool(config.async_checkpoints))
    guard.phase = "the restore of the newest checkpoint"
    with ledger.phase("checkpoint_restore"):
        state, meta, start_step = _restore_or_init(config, workdir, exp, ckpt, console)

    step_fn = _with_finite_flag(steps_lib.make_train_step(
            exp.model, config, tx=exp.tx, schedule=exp.schedule, prior=exp.prior,
            pos_weight=exp.pos_weight, lam=exp.lam, num_classes=exp.num_classes,
            augment=exp.device_augment))
    strategy = str(config.strategy)
    if strategy == "jit":
        train_step = parallel.jit_step(step_fn, exp.mesh)
    elif strategy == "pmap":
        train_step = parallel.pmap_step(step_fn)
        state = parallel.to_pmap_state(state)
    else:
        raise ValueError(f"unknown config.strategy {strategy!r}; expected one of "
                         f"{parallel.STRATEGIES}")
    if jax.process_index() == 0 and start_step == 0:
        writer.write_hparams({k: reporting.jsonable(v) for k, v in
                              reporting.flatten_config(config.to_dict()).items()})
    return _Run(config=config, workdir=workdir, exp=exp, ckpt=ckpt, writer=writer,
                state=state, meta=meta, step=start_step, train_step=train_step,
                strategy=strategy, best_metric=best_metric,
                stop_after=int(config.stop_after_steps or 0), console=console, guard=guard,
                ledger=ledger, t_window=time.time(), t_session=time.time())


def _describe(console: reporting.Console, config, exp: experiment.Experiment) -> None:
    """The data and model summary lines of the console."""
    dc, info = exp.data_config, exp.info
    fold = f" fold {dc.fold}" if getattr(dc, "fold", 0) else ""
    console.line(f"data:  {exp.dataset}{fold}: {info.num_train} train / {info.num_test} test "
                 f"clips, {exp.num_classes} classes ({', '.join(exp.class_names)})")
    t, h, w = exp.input_shape
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(exp.state.params))
    lam = f", lambda {exp.lam:g}" if exp.lam else ""
    console.line(f"model: {config.model}, {params / 1e6:.2f} M parameters, clips "
                 f"{t}x{h}x{w}; loss {config.loss}{lam}")
    console.line(f"train: batch {exp.global_batch} on {jax.device_count()} device(s) "
                 f"({jax.process_count()} process(es)), {exp.steps_per_epoch} steps/epoch x "
                 f"{exp.num_epochs} epochs = {exp.total_steps} steps")


def _restore_or_init(config, workdir: str, exp: experiment.Experiment,
                     ckpt: ckpt_lib.TrainCheckpointer, console: reporting.Console
                     ) -> tuple[Any, dict, int]:
    """`(state, meta, start_step)`: the newest checkpoint, else `init_from`, else fresh."""
    state = exp.state
    meta: dict = {"history": [], "best": None, "last": None}
    if ckpt.latest_step() is not None:
        template = state
        state, meta = ckpt.restore(template)
        if not ckpt_lib.all_finite(state):
            _refuse_nonfinite_resume(config, workdir, ckpt, template)
        start_step = int(jax.device_get(state.step))
        if meta.get("class_names") and list(meta["class_names"]) != exp.class_names:
            raise ValueError(f"{workdir}: checkpoint classes {meta['class_names']} differ "
                             f"from the dataset's {exp.class_names}")
        console.line(f"resumed from step {start_step} (epoch {meta.get('epoch', 0) + 1}, batch "
                     f"{meta.get('batch_in_epoch', 0) + 1}) of {workdir}")
        return state, meta, start_step
    if config.init_from:
        loaded, _ = ckpt_lib.restore_variables(config.init_from)
        host = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
        merged, fresh = ckpt_lib.merge_variables(host, loaded)
        console.line(f"initialised from {config.init_from}"
                     f"{'; fresh (not in it): ' + ', '.join(fresh) if fresh else ''}")
        state = state.replace(params=parallel.replicate(merged["params"], exp.mesh),
                              batch_stats=parallel.replicate(merged.get("batch_stats", {}),
                                                             exp.mesh))
    else:
        console.line(f"initialised at random (seed {config.seed})")
    return state, meta, 0


def _refuse_nonfinite_resume(config, workdir: str, ckpt: ckpt_lib.TrainCheckpointer,
                             template) -> None:
    """Raises: the newest checkpoint is not finite (written before saves were checked).

    Names the newest finite latest checkpoint (each older one is restored and
    checked; this only happens on this error path).

    Raises:
        FloatingPointError: always.
    """
    steps = ckpt.all_steps()
    newest, finite = steps[0], None
    for step in steps[1:]:
        older, _ = ckpt.restore(template, step)
        if ckpt_lib.all_finite(older):
            finite = step
            break
    where = paths.join(workdir, "checkpoints")
    if finite is None:
        hint = (f"no finite checkpoint in {where}: start again in a new --workdir with a "
                f"lower learning rate (e.g. --config.optim.lr={_lower_lr(config)})")
    else:
        newer = ", ".join(str(s) for s in steps if s > finite)
        hint = (f"newest finite checkpoint: step {finite} ({paths.join(where, str(finite))}); "
                f"move the newer step folder(s) {newer} out of {where} to resume from it, "
                f"with a lower learning rate (e.g. --config.optim.lr={_lower_lr(config)})")
    raise FloatingPointError(
            f"{paths.join(where, str(newest))}: the newest checkpoint holds NaN or infinite "
            f"values (written by a version that did not check saves); {hint}")


def _lower_lr(config) -> str:
    """A tenth of the config's learning rate, for the divergence messages."""
    try:
        return f"{float(config.optim.lr) / 10:g}"
    except (AttributeError, KeyError, TypeError, ValueError):
        return "LR"


def _with_finite_flag(step_fn: Callable) -> Callable:
    """`step_fn` that also returns `state_finite`: the new state is all finite.

    One fused reduction over the new parameters, optimizer state and BatchNorm
    statistics inside the jitted step, so the step at which a run diverges is
    known exactly (the loss only turns non-finite one step later).
    """
    def step(state, batch, **kwargs):
        new, metrics = step_fn(state, batch, **kwargs)
        flag = ckpt_lib.finite_flag((new.params, new.opt_state, new.batch_stats))
        return new, {**metrics, "state_finite": flag}
    return step


def _train_epoch(run: _Run, epoch: int) -> None:
    """Runs the steps of `epoch` from the run's position; stops early at the test hook."""
    exp, config = run.exp, run.config
    spe = exp.steps_per_epoch
    first_batch = run.step - epoch * spe
    run.ledger.switch("input")
    ds = exp.data.create_train_dataset(
            exp.data_config, global_batch_size=exp.global_batch, seed=int(config.seed),
            epoch=epoch, start_batch=first_batch, process_index=jax.process_index(),
            process_count=jax.process_count())
    run.console.start_epoch(epoch, exp.num_epochs, first_batch, spe)
    batches = _on_device(run, ds, int(config.prefetch_to_device))
    for batch_idx in range(first_batch, spe):
        run.guard.phase = f"the input pipeline (epoch {epoch + 1}, batch {batch_idx + 1})"
        run.ledger.switch("input")
        try:
            local, batch = next(batches)
        except StopIteration:
            raise ValueError(f"the training data ran out at epoch {epoch + 1}, batch "
                             f"{batch_idx} of {spe}") from None
        if run.pending is not None and goodput_lib.step_running(run.pending[1]):
            run.ledger.recharge("train")     # the devices were busy all along
        run.ledger.switch("train")
        if run.session_steps == 0 and run.strategy == "jit":
            _count_flops(run, batch)
        run.guard.phase = f"train step {run.step + 1}"
        m = _step(run, batch)
        if run.pending is not None:
            run.window.append(_check(run, run.pending))
        run.pending = (run.step, m, np.asarray(local.get("index", [])).tolist(), epoch,
                       batch_idx)
        run.step += 1
        run.session_steps += 1
        if run.session_steps == 1:
            # The first step of a session includes XLA's compilation: the
            # ETA counts the steady steps after it.
            run.t_session = time.time()
        run.console.step_done()
        if run.step % config.log_every_steps == 0 or run.step == exp.total_steps:
            avg = _log_window(run)
            run.console.progress(run.step, exp.total_steps, avg["train/loss"],
                                 avg["train/clips_per_sec"], run.session_steps - 1,
                                 time.time() - run.t_session, avg.get("train/mfu"))
        if run.step % spe:        # epoch ends are saved after their evaluation
            _save_latest(run)
        if run.stopped():
            break
        run.guard.phase = f"the other processes at the stop agreement (step {run.step})"
        run.ledger.switch("other")
        if run.guard.should_stop():
            run.preempted = True
            break
    run.console.end_epoch()
    run.ledger.switch("train")       # the wait for the last step
    _flush(run)


def _flush(run: _Run) -> None:
    """Fetches and checks the metrics of the last step, if not done yet."""
    if run.pending is not None:
        run.window.append(_check(run, run.pending))
        run.pending = None


def _save_latest(run: _Run, force: bool = False) -> bool:
    """The latest checkpoint of `run.step` if due (or `force`); returns whether saved.

    The last step's metrics are checked first, so a diverged state stops the
    run with the step at which it diverged (`_check`) before the save's own
    all-finite check would refuse it.
    """
    if not force and not run.ckpt.due(run.step):
        return False
    _flush(run)
    run.guard.phase = f"the checkpoint save of step {run.step}"
    with run.ledger.phase("checkpoint_save"):
        return run.ckpt.maybe_save(run.step, run.host_state(),
                                   lambda: run.make_meta(run.step), force=force)


def _on_device(run: _Run, ds, prefetch: int):
    """Yields `(host batch, device batch)`, `prefetch` batches transferred ahead.

    The transfers are asynchronous, so the next batches travel to the devices
    while the current step runs (0: transfer each batch when its step comes).
    """
    def put(local):
        batch = experiment.device_batch(local)
        if run.strategy == "pmap":
            return local, parallel.to_pmap_batch(batch)
        return local, parallel.global_batch(batch, run.exp.mesh)

    queue = collections.deque()
    for local in ds:
        queue.append(put(local))
        if len(queue) > prefetch:
            yield queue.popleft()
    while queue:
        yield queue.popleft()


def _count_flops(run: _Run, batch) -> None:
    """XLA's FLOP count of the train step, once (a lowering; no extra compile).

    The lowered program is the global, not yet partitioned computation (its
    count is the whole batch's, checked against the compiled per-device count
    on 2 devices), so the per-device share is the count over the devices.
    """
    note = flops_lib.uncounted_reason(run.exp.model)   # scan_blocks: XLA counts the loop once
    if note:
        run.console.line(f"train step: {note}")
        return
    total = flops_lib.step_flops(run.train_step.lower(run.state, batch))
    run.flops_per_step = None if total is None else total / jax.device_count()
    if run.flops_per_step:
        per_clip = run.flops_per_step * jax.device_count() / run.exp.global_batch
        run.console.line(f"train step: {per_clip / 1e9:.3g} GFLOPs per clip "
                         "(XLA cost analysis; forward, backward and update)")


def _step(run: _Run, batch) -> dict:
    """One train step on a device batch; returns the (not yet fetched) metrics."""
    run.state, m = run.train_step(run.state, batch)
    if run.strategy == "pmap":
        return jax.tree.map(lambda x: x[0], m)
    return m


def _check(run: _Run, pending) -> dict:
    """Fetches a step's metrics; raises when the run diverged at that step.

    The state entering step `s + 1` passed this check at the previous step,
    so a non-finite loss now comes from that batch or the forward pass (the
    clips are named), while a finite loss with a non-finite new state means
    the update diverged (learning rate, gradient overflow), not the data.

    Raises:
        FloatingPointError: one line: the step, what diverged, the last finite
            checkpoint and how to resume from it.
    """
    s, m, idx, e, b = pending
    run.guard.phase = f"the results of train step {s + 1}"
    m = jax.device_get(m)
    state_finite = bool(np.asarray(m.pop("state_finite", True)))
    loss = float(m["loss"])
    if np.isfinite(loss) and state_finite:
        return m
    where = (f"step {s + 1} (epoch {e + 1}, batch {b + 1} of {run.exp.steps_per_epoch})")
    if np.isfinite(loss):
        what = (f"the train state became non-finite at {where}: the update diverged with a "
                f"finite loss {loss:.4g} (not the data)")
    else:
        what = (f"non-finite loss {loss} at {where} from a finite state: the forward pass "
                f"overflowed on that batch (too high a learning rate, or bad clips: clip "
                f"indices (`index`) of that batch: {idx})")
    run.ckpt.wait_until_finished()
    last = run.ckpt.latest_step()
    if last is None:
        resume = (f"no checkpoint saved yet: rerun with a lower learning rate (e.g. "
                  f"--config.optim.lr={_lower_lr(run.config)}) to start again")
    else:
        resume = (f"nothing saved from it; last finite checkpoint: step {last} "
                  f"({paths.join(run.workdir, 'checkpoints', str(last))}); rerun the same "
                  f"command with a lower learning rate (e.g. "
                  f"--config.optim.lr={_lower_lr(run.config)}) to resume from it")
    raise FloatingPointError(f"{what}; {resume}")


def _log_window(run: _Run) -> dict:
    """Writes the mean of the metrics since the last log line; returns them."""
    _flush(run)
    elapsed = time.time() - run.t_window
    avg = {f"train/{k}": float(np.mean([w[k] for w in run.window]))
           for k in run.window[0] if k != "count"}
    avg["train/clips_per_sec"] = len(run.window) * run.exp.global_batch / max(elapsed, 1e-9)
    avg["train/epoch"] = run.step / run.exp.steps_per_epoch
    if run.flops_per_step:
        eff = flops_lib.efficiency(run.flops_per_step, max(elapsed, 1e-9) / len(run.window),
                                   run.exp.global_batch, jax.devices()[0].device_kind,
                                   float(run.config.peak_flops) or None, jax.device_count())
        avg["train/flops_per_sec_per_device"] = eff["flops_per_s"]
        if eff["mfu"] is not None:
            avg["train/mfu"] = eff["mfu"]
    run.writer.write_scalars(run.step, avg)
    run.window, run.t_window = [], time.time()
    return avg


def _evaluate_and_checkpoint(run: _Run, epoch: int) -> None:
    """Evaluates when due, keeps the best state, then saves the epoch-end checkpoint."""
    exp, config, meta = run.exp, run.config, run.meta
    last_epoch = epoch + 1 == exp.num_epochs
    every = max(1, int(config.eval_every_epochs))
    t_eval = time.time()
    if (epoch + 1) % every == 0 or last_epoch:
        run.guard.phase = f"the evaluation of epoch {epoch + 1}"
        run.ledger.switch("eval")
        hs = run.host_state()
        summary = exp.evaluate(hs)
        record = {"epoch": epoch + 1, "step": run.step, **summary}
        meta["last"] = record
        meta["history"].append({"epoch": epoch + 1, "step": run.step,
                                "uar": summary["uar"], "war": summary["war"]})
        reporting.write_eval(run.writer, run.step, summary, "test")
        value = metrics_lib.criterion(summary, run.best_metric)
        best = meta.get("best")
        run.console.line(f"epoch {epoch + 1}/{exp.num_epochs}: UAR {summary['uar']:.2f} "
                         f"WAR {summary['war']:.2f} test loss {summary['loss']:.4f}")
        if best is None or value > best["value"]:
            meta["best"] = {**record, "criterion": run.best_metric, "value": value}
            run.guard.phase = f"the best-checkpoint save of step {run.step}"
            run.ledger.switch("checkpoint_save")
            run.ckpt.save_best(run.step, hs, run.make_meta(run.step))
            run.console.line(f"  best so far ({run.best_metric} {value:.2f}): saved to "
                             f"{paths.join(run.workdir, 'best', str(run.step))}")
    run.ledger.switch("other")
    if _save_latest(run):
        run.console.line(f"  checkpoint: step {run.step} -> "
                         f"{paths.join(run.workdir, 'checkpoints', str(run.step))}")
    # Training throughput leaves evaluation and saving out.
    run.t_window += time.time() - t_eval
    run.t_session += time.time() - t_eval


def _finish(run: _Run) -> dict:
    """The result dict (also `metrics.json`); closes the checkpointer and writers."""
    exp, meta = run.exp, run.meta
    goodput = _report_goodput(run)
    if run.preempted and run.step < exp.total_steps:
        saved = run.ckpt.latest_step()
        run.ckpt.close()
        run.writer.close()
        spe = exp.steps_per_epoch
        where = paths.join(run.workdir, "checkpoints", str(saved))
        what = (f"checkpoint of step {saved} in {where}" if saved == run.step else
                f"no checkpoint of this step; newest: {where}" if saved is not None else
                "no checkpoint")
        # One line for the pod's log, printed by process 0 only; every
        # process exits with the same status (main.py).
        run.console.line(
                f"stopped by {run.guard.reason()} at step {run.step} (epoch "
                f"{run.step // spe + 1}, batch {run.step % spe + 1} next); {what}. Resume "
                f"with the same command (same --config and --workdir).")
        return {"preempted_at_step": run.step, "signal": run.guard.reason(),
                "exit_code": run.guard.exit_code(), "checkpoint_step": saved,
                "class_names": exp.class_names, "goodput": goodput}
    if run.stop_after and run.step < exp.total_steps:
        run.ckpt.close()
        run.writer.close()
        return {"stopped_at_step": run.step, "class_names": exp.class_names,
                "goodput": goodput}
    run.console.line(f"done: {run.step} steps; this session {run.console.elapsed()}")
    result = {"class_names": exp.class_names, "steps": run.step,
              "best_metric": run.best_metric, "last": _label(meta.get("last"), "last"),
              "best": _label(meta.get("best"), "best"), "history": meta.get("history", []),
              "goodput": goodput}
    if run.process0:
        paths.write_text(paths.join(run.workdir, "metrics.json"), json.dumps(result, indent=2))
    run.ckpt.close()
    run.writer.close()
    return result


def _report_goodput(run: _Run) -> dict:
    """This session's `goodput.Ledger.summary()`: printed, logged and returned.

    The scalars `goodput/<category>_seconds`, `goodput/train_share` and
    `goodput/wall_seconds` go to metrics.jsonl and TensorBoard at the last
    step, so every session of a resumed run keeps its own record.
    """
    summary = run.ledger.summary()
    run.console.goodput(summary)
    scalars = {f"goodput/{k}_seconds": v for k, v in summary["seconds"].items()}
    scalars["goodput/train_share"] = summary["train_share"]
    scalars["goodput/wall_seconds"] = summary["wall_seconds"]
    run.writer.write_scalars(run.step, scalars)
    return summary


def _label(record, label):
    return None if record is None else {"label": label, **record}
