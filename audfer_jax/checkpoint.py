"""Checkpoints: the only module of audfer_jax that imports Orbax.

Two kinds of checkpoint live here:

* **Variables** (`save_variables` / `restore_variables`): a Flax variables
  pytree (`{'params': ..., 'batch_stats': ...}`) plus a JSON metadata dict, as
  written by the PyTorch converter (`audfer_jax.models.convert`) and read to
  initialise training or evaluation from converted weights.
* **Training** (`TrainCheckpointer`): an Orbax `CheckpointManager` over
  `workdir/checkpoints` holding the whole train state (step, params,
  batch_stats, optimizer state, RNG key) and a JSON `meta` item with the data
  position (epoch, batch in epoch), class names and the best criterion so far;
  a second manager over `workdir/best` holds the single best-criterion state.
* **Run directories** (`resolve_checkpoint`, `newest_step_dir`,
  `load_run_config`, ...): the one place that knows where a run keeps its
  config and which of its steps is the newest or the best, for the readers of
  a run (`evaluate`, `predict`).

Restoring always goes through an abstract target whose leaves are
`jax.ShapeDtypeStruct(shape, dtype, sharding=...)` carrying the *current*
shardings, so a checkpoint written on 8 devices restores onto 1 (and back)
(engineering.md section 7: without a target Orbax raises "Topology mismatch").
Saves are asynchronous; call `wait_until_finished()` before reading a
checkpoint back or exiting.

Several checkpointers of one multi-process job save at the same time (the
epoch-end best and latest checkpoints of one step, both asynchronous). Orbax
names its cross-process barriers after the step directory
(`async_write_complete.<step>`), so two managers saving step 10 would wait at
the same barrier name and collide ("Barrier ... is already ongoing", then a
timeout). Every manager and checkpointer here therefore has its own
`MultiprocessingOptions.barrier_sync_key_prefix` (`_BARRIER_PREFIXES`): the
saves stay asynchronous and overlap, which ordering them (waiting for one
before starting the other) would have given up at every epoch end.

No checkpoint holds a non-finite state: `TrainCheckpointer` runs one jitted
all-finite reduction over the state (`all_finite`) before every save and raises
`NonFiniteStateError` instead of saving, so retention (`LatestN`) never drops
the newest finite checkpoint in favour of a diverged one.

Directories may be local or cloud storage URLs (`gs://bkt/run`, see
`audfer_jax.paths`): Orbax writes arrays through tensorstore and metadata
through `etils.epath`. Multi-host: every process must construct the same
checkpointers and call every save and restore in the same order (Orbax
coordinates the writes; each process writes its own shards and process 0 the
metadata and the final rename).
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocp_managers

from audfer_jax import paths

PyTree = Any

# A run directory's layout (see "Run directories" below).
RUN_CONFIG = "config.json"
LATEST_DIR = "checkpoints"
BEST_DIR = "best"

# Where `newest_step_dir` looks, in order, for each `which`.
STEP_SEARCH = {"best": (BEST_DIR, LATEST_DIR), "last": (LATEST_DIR,)}

_VARIABLES = "variables"
_METADATA = "metadata"
_STATE = "state"
_META = "meta"

# One barrier-name prefix per saver, so that Orbax barriers of savers that run
# at the same time never share a name (module docstring). They are constants,
# identical on every process, as the barrier names must be.
_BARRIER_PREFIXES = {"latest": "audfer_latest", "best": "audfer_best",
                     "variables": "audfer_variables", "state": "audfer_state"}


def _multiprocessing(saver: str) -> ocp.options.MultiprocessingOptions:
    """Orbax multiprocessing options with the barrier prefix of `saver`."""
    return ocp.options.MultiprocessingOptions(
            barrier_sync_key_prefix=_BARRIER_PREFIXES[saver])


class NonFiniteStateError(FloatingPointError):
    """A save was refused because the state holds NaN or infinite values.

    Attributes:
        step: the step whose state was refused.
        last_finite_step: newest finite latest checkpoint on disk, or None.
        directory: the latest checkpoints' directory.
    """

    def __init__(self, step: int, last_finite_step: int | None, directory: str):
        self.step, self.last_finite_step, self.directory = step, last_finite_step, directory
        where = ("no checkpoint saved yet" if last_finite_step is None else
                 f"last finite checkpoint: step {last_finite_step} "
                 f"({paths.join(directory, str(last_finite_step))})")
        super().__init__(f"the train state of step {step} holds NaN or infinite values; not "
                         f"saved; {where}; rerun with a lower learning rate (e.g. "
                         "--config.optim.lr) to resume from it")


def finite_flag(tree: PyTree) -> jax.Array:
    """`[] bool`: every floating-point leaf of `tree` is finite (traceable, jittable).

    Integer and PRNG-key leaves (the step, RNG keys, optax counters) are
    skipped: they cannot hold NaN.
    """
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
              if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


_all_finite = jax.jit(finite_flag)


def all_finite(tree: PyTree) -> bool:
    """True when every floating-point leaf of `tree` is finite (no NaN, no inf).

    One jitted reduction over the whole pytree (parameters, optimizer state,
    BatchNorm statistics of a train state; integer leaves such as the step
    and RNG keys are skipped). On a multi-process run the inputs are global
    arrays and the reduction's result is replicated, so every process gets the
    same answer (call it on every process, like a save).

    Args:
        tree: pytree of `jax.Array` (any sharding) or NumPy arrays.

    Returns:
        A Python bool.
    """
    leaves = [x for x in jax.tree.leaves(tree) if hasattr(x, "dtype")]
    if not leaves:
        return True
    out = _all_finite(leaves)
    # A replicated result is not fully addressable on several processes: read
    # this process's copy.
    return bool(np.asarray(out.addressable_data(0)))


def _replicated_sharding() -> jax.sharding.Sharding:
    """A sharding that replicates an array on every device of every process."""
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("data",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def abstract_like(tree: PyTree, sharding: jax.sharding.Sharding | None = None) -> PyTree:
    """Abstract restore target for `tree`.

    Args:
        tree: pytree of arrays (`jax.Array`, NumPy) or `jax.ShapeDtypeStruct`.
        sharding: sharding given to every leaf. None keeps each `jax.Array`'s
            own sharding and replicates the other leaves over all devices.

    Returns:
        The same pytree with `jax.ShapeDtypeStruct(shape, dtype, sharding=...)`
        leaves.
    """
    default = _replicated_sharding()

    def leaf(x):
        s = sharding
        if s is None:
            s = getattr(x, "sharding", None) or default
        return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s)

    return jax.tree.map(leaf, tree)


# ---------------------------------------------------------------------------
# Converted variables.
# ---------------------------------------------------------------------------

def save_variables(directory: str | os.PathLike, variables: PyTree,
                   metadata: Mapping[str, Any]) -> str:
    """Writes Flax variables and a metadata dict as one Orbax checkpoint.

    Synchronous: the files are complete when this returns. Every process of a
    multi-process run must call it (Orbax coordinates the writes).

    Args:
        directory: target directory; must not exist yet (an existing one is an
            error, so that a conversion never silently overwrites weights).
        variables: Flax variables, e.g. `{'params': {...}, 'batch_stats': {...}}`
            with float32 `jax.Array` or NumPy leaves.
        metadata: JSON-serialisable dict (source file, model name, class names,
            conversion report...).

    Returns:
        The path written (`paths.resolve(directory)`: absolute, or the URL).

    Raises:
        FileExistsError: `directory` exists.
        TypeError: `metadata` is not JSON-serialisable.
    """
    path = paths.resolve(directory)
    if paths.exists(path):
        raise FileExistsError(f"{path}: already exists; refusing to overwrite a "
                              "variables checkpoint (remove it first)")
    import json
    try:
        json.dumps(dict(metadata))
    except TypeError as e:
        raise TypeError(f"metadata for {path} is not JSON-serialisable: {e}") from e
    variables = jax.tree.map(np.asarray, variables)
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler(),
                          multiprocessing_options=_multiprocessing("variables")) as ckptr:
        ckptr.save(path, args=ocp.args.Composite(**{
                _VARIABLES: ocp.args.StandardSave(variables),
                _METADATA: ocp.args.JsonSave(dict(metadata))}))
    return path


def restore_variables(directory: str | os.PathLike, target: PyTree | None = None,
                      ) -> tuple[PyTree, dict]:
    """Reads a checkpoint written by `save_variables`.

    Args:
        directory: the directory `save_variables` wrote.
        target: optional pytree (arrays or `jax.ShapeDtypeStruct`) giving the
            structure, shapes, dtypes and shardings to restore onto. Its leaves
            must match the stored ones exactly (or be their MAE-DFER stacked
            form: a per-block checkpoint is stacked on load). None restores
            the stored tree, every leaf replicated over all devices, with
            MAE-DFER's blocks stacked if they were stored per block.

    Returns:
        `(variables, metadata)`: the variables pytree of `jax.Array` and the
        metadata dict.

    Raises:
        FileNotFoundError: `directory` does not exist.
        ValueError: the stored tree does not match `target` (names both).
    """
    path = paths.resolve(directory)
    if not paths.isdir(path):
        raise FileNotFoundError(f"{path}: no variables checkpoint there")
    handler = ocp.CompositeCheckpointHandler(**{
            _VARIABLES: ocp.StandardCheckpointHandler(),
            _METADATA: ocp.JsonCheckpointHandler()})
    with ocp.Checkpointer(handler, multiprocessing_options=_multiprocessing("variables")
                          ) as ckptr:
        def restore(tree):
            return ckptr.restore(path, args=ocp.args.Composite(**{
                    _VARIABLES: ocp.args.StandardRestore(tree),
                    _METADATA: ocp.args.JsonRestore()}))

        if target is None:
            stored = ckptr.metadata(path).item_metadata[_VARIABLES]
            stored = getattr(stored, "tree", stored)
            stored = abstract_like(jax.tree.map(
                    lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), stored))
            out = restore(stored)
            out = {_VARIABLES: _stacked_if_per_block(out[_VARIABLES]), _METADATA: out[_METADATA]}
        else:
            try:
                out = _restore_any_layout(restore, abstract_like(target), _VARIABLES)
            except (ValueError, KeyError) as e:
                raise ValueError(f"{path}: stored variables do not match the target "
                                 f"structure: {e}") from e
    return out[_VARIABLES], dict(out[_METADATA] or {})


# Checkpoints written before MAE-DFER's blocks were stacked hold them per
# block (`blocks_0` .. `blocks_15`, `mae_dfer.per_block_layout`); they are
# restored in that layout and stacked on load, into the target's shardings.

def _per_block_target(target: PyTree) -> PyTree | None:
    """`target` in MAE-DFER's per-block layout, or None when it has no stacked blocks."""
    from audfer_jax.models import mae_dfer  # pylint: disable=g-import-not-at-top
    legacy = mae_dfer.per_block_layout(target)
    if jax.tree.structure(legacy) == jax.tree.structure(target):
        return None
    return legacy


def _stacked_if_per_block(tree: PyTree) -> PyTree:
    """`tree` with MAE-DFER's per-block blocks stacked (jitted: any device layout)."""
    from audfer_jax.models import mae_dfer  # pylint: disable=g-import-not-at-top
    if not mae_dfer.has_per_block_layout(tree):
        return tree
    return jax.jit(mae_dfer.stacked_layout)(tree)


def _restore_any_layout(restore, target: PyTree, item: str) -> dict:
    """`restore(target)` (an Orbax composite restore; `item` names the tree in
    it), or, when the stored tree is MAE-DFER's per-block layout and `target`
    the stacked one, the stored tree restored in its layout and stacked into
    `target`'s shapes and shardings.

    Raises:
        ValueError, KeyError: Orbax's error for `target`, when the per-block
            layout does not match either.
    """
    try:
        return restore(target)
    except (ValueError, KeyError) as error:
        legacy = _per_block_target(target)
        if legacy is None:
            raise
        try:
            out = restore(legacy)
        except (ValueError, KeyError):
            raise error from None
    from audfer_jax.models import mae_dfer  # pylint: disable=g-import-not-at-top
    shardings = jax.tree.map(lambda x: x.sharding, target)
    out = {k: out[k] for k in out.keys()}     # Orbax's CompositeArgs is read-only
    out[item] = jax.jit(mae_dfer.stacked_layout, out_shardings=shardings)(out[item])
    return out


def merge_variables(init: PyTree, loaded: PyTree) -> tuple[PyTree, list[str]]:
    """Overlays loaded variables on freshly initialised ones.

    Used to start training from converted weights where some leaves are absent
    (a new head, the AU head, `fc_norm` after MAE pre-training).

    Args:
        init: variables from `model.init` (dict pytree).
        loaded: variables from `restore_variables` (dict pytree, possibly partial).

    Returns:
        `(variables, fresh)`: `init` with every leaf present in `loaded` (same
        path) replaced, and the '/'-joined paths of the leaves kept fresh.

    Raises:
        ValueError: a loaded leaf's shape differs from the initialised one, or a
            loaded leaf has no counterpart in `init` (names the path and shapes).
    """
    flat_init = {"/".join(k): v for k, v in _flatten(init)}
    flat_loaded = {"/".join(k): v for k, v in _flatten(loaded)}
    unknown = sorted(set(flat_loaded) - set(flat_init))
    if unknown:
        raise ValueError(f"loaded variables not in the model: {unknown[:10]}"
                         f"{' ...' if len(unknown) > 10 else ''}")
    fresh = []
    out = {}
    for key, value in flat_init.items():
        if key in flat_loaded:
            new = flat_loaded[key]
            if tuple(np.shape(new)) != tuple(np.shape(value)):
                raise ValueError(f"{key}: loaded shape {tuple(np.shape(new))} != "
                                 f"model shape {tuple(np.shape(value))}")
            out[key] = new
        else:
            fresh.append(key)
            out[key] = value
    return _unflatten(out), fresh


def _flatten(tree, prefix=()):
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            yield from _flatten(v, prefix + (str(k),))
    else:
        yield prefix, tree


def _unflatten(flat: dict) -> dict:
    out: dict = {}
    for key, value in flat.items():
        node = out
        parts = key.split("/")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


# ---------------------------------------------------------------------------
# Training checkpoints.
# ---------------------------------------------------------------------------

class TrainCheckpointer:
    """Latest and best training checkpoints of one run.

    Layout: `workdir/checkpoints/<step>/{state,meta}` (the latest
    `keep` kept by `LatestN`) and `workdir/best/<step>/{state,meta}` (one kept).
    `meta` is a JSON dict; `train.py` stores `epoch`, `batch_in_epoch` (the
    next batch of that epoch to read), `class_names`, `best` and the metrics.

    Args:
        workdir: run directory, local or a URL (`gs://...`).
        save_every_steps: periodic save interval in optimizer steps; saves at
            `extra_steps` (epoch ends, the last step) are added to it.
        extra_steps: steps that are always saved.
        keep: number of latest checkpoints kept.
        async_save: asynchronous saves (Orbax default); tests turn it off
            to make failures surface at the call.
    """

    def __init__(self, workdir: str | os.PathLike, *, save_every_steps: int | None = None,
                 extra_steps=(), keep: int = 2, async_save: bool = True):
        workdir = paths.resolve(workdir)
        policies = [ocp_managers.SpecificStepsPolicy(frozenset(int(s) for s in extra_steps))]
        if save_every_steps:
            policies.append(ocp_managers.FixedIntervalPolicy(int(save_every_steps)))
        self.latest = ocp.CheckpointManager(
                paths.join(workdir, LATEST_DIR),
                options=ocp.CheckpointManagerOptions(
                        save_decision_policy=ocp_managers.AnySavePolicy(policies),
                        preservation_policy=ocp_managers.LatestN(max(1, int(keep))),
                        enable_async_checkpointing=async_save,
                        multiprocessing_options=_multiprocessing("latest"),
                        create=True),
                item_names=(_STATE, _META))
        self.best = ocp.CheckpointManager(
                paths.join(workdir, BEST_DIR),
                options=ocp.CheckpointManagerOptions(
                        save_decision_policy=ocp_managers.FixedIntervalPolicy(1),
                        preservation_policy=ocp_managers.LatestN(1),
                        enable_async_checkpointing=async_save,
                        multiprocessing_options=_multiprocessing("best"),
                        create=True),
                item_names=(_STATE, _META))

    def maybe_save(self, step: int, state: PyTree, meta: Mapping[str, Any] | Any,
                   force: bool = False) -> bool:
        """Saves `state` at `step` if the save policy says so (or `force`).

        `meta` may be a dict or a zero-argument callable returning one (so the
        dict is only built when a save happens). Returns whether it saved.

        Raises:
            NonFiniteStateError: the save is due but `state` is not finite
                (`all_finite`); nothing is written or deleted.
        """
        step = int(step)
        if step in self.latest.all_steps():
            return False
        if not force and not self.latest.should_save(step):
            return False
        self._check_finite(step, state)
        meta = meta() if callable(meta) else meta
        return self.latest.save(step, args=ocp.args.Composite(**{
                _STATE: ocp.args.StandardSave(state),
                _META: ocp.args.JsonSave(dict(meta))}), force=force)

    def save_best(self, step: int, state: PyTree, meta: Mapping[str, Any]) -> bool:
        """Replaces the best checkpoint by `state` at `step`.

        Raises:
            NonFiniteStateError: `state` is not finite; the best checkpoint on
                disk is kept.
        """
        step = int(step)
        if step in self.best.all_steps():
            return False
        self._check_finite(step, state)
        return self.best.save(step, args=ocp.args.Composite(**{
                _STATE: ocp.args.StandardSave(state),
                _META: ocp.args.JsonSave(dict(meta))}), force=True)

    def _check_finite(self, step: int, state: PyTree) -> None:
        # The newest latest checkpoint is finite: this class never saves
        # another (older run directories are checked when `train.py` resumes).
        if not all_finite(state):
            raise NonFiniteStateError(step, self.latest.latest_step(),
                                      str(self.latest.directory))

    def due(self, step: int) -> bool:
        """Whether `maybe_save(step, ...)` (without `force`) would save."""
        step = int(step)
        return step not in self.latest.all_steps() and bool(self.latest.should_save(step))

    def all_steps(self, *, best: bool = False) -> list[int]:
        """Steps of the complete latest (or best) checkpoints, newest first."""
        manager = self.best if best else self.latest
        return sorted((int(s) for s in manager.all_steps()), reverse=True)

    def latest_step(self) -> int | None:
        """Step of the newest complete latest checkpoint, or None."""
        return self.latest.latest_step()

    def best_step(self) -> int | None:
        """Step of the best checkpoint, or None."""
        return self.best.latest_step()

    def restore(self, abstract_state: PyTree, step: int | None = None, *,
                best: bool = False) -> tuple[PyTree, dict]:
        """Restores `(state, meta)`.

        Args:
            abstract_state: the state pytree as arrays or `ShapeDtypeStruct`s
                carrying the current shardings (see `abstract_like`); the
                restored arrays get those shardings whatever the device count
                at save time. A state saved with MAE-DFER's blocks per block
                (before they were stacked) is restored in that layout and
                stacked into this one (`mae_dfer.stacked_layout`).
            step: step to restore; None = newest.
            best: read the best checkpoint instead of the latest.

        Raises:
            FileNotFoundError: there is no checkpoint.
        """
        manager = self.best if best else self.latest
        if step is None:
            step = manager.latest_step()
        if step is None:
            raise FileNotFoundError(f"{manager.directory}: no checkpoint to restore")

        def restore(tree):
            return manager.restore(int(step), args=ocp.args.Composite(**{
                    _STATE: ocp.args.StandardRestore(tree), _META: ocp.args.JsonRestore()}))

        out = _restore_any_layout(restore, abstract_like(abstract_state), _STATE)
        return out[_STATE], dict(out[_META] or {})

    def read_meta(self, step: int | None = None, *, best: bool = False) -> dict | None:
        """The JSON `meta` of a checkpoint without touching its arrays, or None."""
        manager = self.best if best else self.latest
        if step is None:
            step = manager.latest_step()
        if step is None:
            return None
        out = manager.restore(int(step), args=ocp.args.Composite(**{
                _META: ocp.args.JsonRestore()}))
        return dict(out[_META] or {})

    def wait_until_finished(self) -> None:
        """Blocks until every asynchronous save has been committed."""
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the managers."""
        self.wait_until_finished()
        self.latest.close()
        self.best.close()


def restore_state_from_directory(path: str | os.PathLike, abstract_state: PyTree,
                                 ) -> tuple[PyTree, dict]:
    """Restores `(state, meta)` from one step directory `.../<step>`.

    Used by evaluation given a checkpoint path instead of a workdir. A state
    saved with MAE-DFER's blocks per block is stacked on load (`TrainCheckpointer.restore`).
    """
    path = paths.resolve(path)
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler(),
                          multiprocessing_options=_multiprocessing("state")) as ckptr:
        def restore(tree):
            return ckptr.restore(path, args=ocp.args.Composite(**{
                    _STATE: ocp.args.StandardRestore(tree), _META: ocp.args.JsonRestore()}))

        out = _restore_any_layout(restore, abstract_like(abstract_state), _STATE)
    return out[_STATE], dict(out[_META] or {})


# ---------------------------------------------------------------------------
# Run directories: what a reader (evaluate, predict) finds in one.
# ---------------------------------------------------------------------------
#
# A training run directory holds `config.json` (the run's config, written by
# `train.py`), `checkpoints/<step>/{state,meta}` (the latest states) and
# `best/<step>/{state,meta}` (the best state), both written by
# `TrainCheckpointer`. These functions only list and read the directory: they
# never open a `CheckpointManager`, so they work on a run another process is
# still writing and on cloud storage URLs alike.

def is_variables_checkpoint(path: str | os.PathLike) -> bool:
    """Whether `path` is a `save_variables` directory (`variables/` and `metadata/`)."""
    return (paths.isdir(paths.join(path, _VARIABLES))
            and paths.isdir(paths.join(path, _METADATA)))


def is_state_step(path: str | os.PathLike) -> bool:
    """Whether `path` is one `TrainCheckpointer` step directory (holds a `state` item)."""
    return paths.isdir(paths.join(path, _STATE))


def saved_steps(directory: str | os.PathLike, *, with_state: bool = False) -> list[int]:
    """Integer-named step directories of an Orbax manager directory, ascending.

    In-progress saves (`<step>.orbax-checkpoint-tmp-*`) are not integers and
    are skipped.

    Args:
        directory: `RUN/checkpoints` or `RUN/best` (may not exist: no steps).
        with_state: keep only steps holding a `state` item (`is_state_step`).

    Returns:
        The steps, oldest first.
    """
    if not paths.isdir(directory):
        return []
    steps = []
    for name in paths.listdir(directory):
        step_dir = paths.join(directory, name)
        if name.isdigit() and (is_state_step(step_dir) if with_state
                               else paths.isdir(step_dir)):
            steps.append(int(name))
    return sorted(steps)


def newest_step_dir(run_dir: str, which: str = "best") -> str | None:
    """The step directory a reader of a run takes, or None when there is none.

    Args:
        run_dir: training run directory.
        which: `best` (the newest complete step of `best/`, else of
            `checkpoints/` for a run without a best state yet) or `last` (the
            newest complete step of `checkpoints/`); see `STEP_SEARCH`.

    Returns:
        `RUN/<best|checkpoints>/<step>`, or None.
    """
    for sub in STEP_SEARCH[which]:
        directory = paths.join(run_dir, sub)
        steps = saved_steps(directory, with_state=True)
        if steps:
            return paths.join(directory, str(steps[-1]))
    return None


def run_dir_of_step(step_dir: str) -> str:
    """The run directory `RUN` of a step directory `RUN/<checkpoints|best>/<step>`."""
    return paths.dirname(paths.dirname(step_dir))


def run_config_path(run_dir: str) -> str:
    """`RUN/config.json`, where `train.py` saves a run's config."""
    return paths.join(run_dir, RUN_CONFIG)


def load_run_config(run_dir: str):
    """The config a run saved in `run_dir/config.json`, as a `ConfigDict`.

    Raises:
        FileNotFoundError: no `config.json` there (names the path and the
            `--config` alternative).
    """
    path = run_config_path(run_dir)
    if not paths.isfile(path):
        raise FileNotFoundError(
                f"{path}: not found; is {run_dir} a training run directory? Pass the run's "
                "config with --config configs/<backbone>.py:... otherwise")
    return ml_collections.ConfigDict(json.loads(paths.read_text(path)))


def resolve_checkpoint(workdir: str, checkpoint: str = "best") -> tuple[str, str, int | None]:
    """Finds the step directory a `--checkpoint` value names.

    Args:
        workdir: run directory (holds `checkpoints/` and `best/`).
        checkpoint: `best`, `last`, an integer step, or a directory path.

    Returns:
        `(path, choice, step)`: the step directory, the label (`best`, `last`,
        `step`, or `path`) and the step (None when unknown).

    Raises:
        FileNotFoundError: no such checkpoint (lists the steps there are).
        ValueError: a value that is none of the above.
    """
    ckpt_dir = paths.join(workdir, LATEST_DIR)
    best_dir = paths.join(workdir, BEST_DIR)
    latest, best = saved_steps(ckpt_dir), saved_steps(best_dir)
    available = (f"checkpoints/ has steps {latest or 'none'}, best/ has steps "
                 f"{best or 'none'}")
    if checkpoint == "best":
        if not best:
            raise FileNotFoundError(f"{best_dir}: no best checkpoint ({available})")
        return paths.join(best_dir, str(best[-1])), "best", best[-1]
    if checkpoint == "last":
        if not latest:
            raise FileNotFoundError(f"{ckpt_dir}: no checkpoint ({available})")
        return paths.join(ckpt_dir, str(latest[-1])), "last", latest[-1]
    if checkpoint.isdigit():
        step = int(checkpoint)
        for directory, steps in ((ckpt_dir, latest), (best_dir, best)):
            if step in steps:
                return paths.join(directory, str(step)), "step", step
        raise FileNotFoundError(f"{workdir}: no checkpoint at step {step} ({available})")
    if paths.isdir(checkpoint):
        base = paths.basename(checkpoint)
        return paths.resolve(checkpoint), "path", int(base) if base.isdigit() else None
    raise ValueError(f"--checkpoint {checkpoint!r}: expected best, last, a step number "
                     "or a checkpoint directory")
