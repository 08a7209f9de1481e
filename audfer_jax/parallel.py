"""Data parallelism: the mesh, shardings, global batches and two step strategies.

* **jit** (default, engineering.md section 3): one 1-D mesh `('data',)` over
  all devices of all processes, batch sharded `P('data')`, train state
  replicated `P()`, one `jax.jit` train step with the state donated. Under jit
  a mean over the global batch is the global mean and BatchNorm statistics are
  computed over the global batch: no collective is written by hand.
* **pmap** (explicit collectives): `jax.pmap` over the local devices with
  `axis_name='data'`. The train step then sums gradients with `lax.psum` (each
  device's loss is its masked numerator over the *global* denominator, so the
  sum is the exact global mean gradient also for unequal per-device counts)
  and averages BatchNorm running statistics with `lax.pmean`. BatchNorm
  normalises with per-device batch statistics in this mode (as PyTorch
  `DataParallel`, which M3DFEL used), so it equals jit exactly only for models
  without BatchNorm and without per-device randomness (dropout masks and
  mixup pairs are drawn per device).

Both strategies wrap the same step function `step_fn(state, batch, axis_name)`
built by `audfer_jax.steps.make_train_step`.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from audfer_jax.models import platform

DATA_AXIS = "data"
STRATEGIES = ("jit", "pmap")

PyTree = Any


def make_mesh(devices=None) -> jax.sharding.Mesh:
    """A 1-D `('data',)` mesh over `devices` (default: all devices of all processes).

    Axis type Auto: plain data parallelism, the compiler places collectives
    (engineering.md section 3: `jax.make_mesh` defaults to Explicit now).
    """
    if devices is None:
        return jax.make_mesh((jax.device_count(),), (DATA_AXIS,),
                             axis_types=(AxisType.Auto,))
    devices = list(devices)
    return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,),
                         devices=devices)


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Sharding of the train state: a full copy on every device."""
    return NamedSharding(mesh, P())


def batch_sharded(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Sharding of a batch: the leading (clip) axis split over `'data'`."""
    return NamedSharding(mesh, P(DATA_AXIS))


def local_batch_size(global_batch_size: int, mesh: jax.sharding.Mesh | None = None) -> int:
    """Clips this process reads per step.

    Raises:
        ValueError: `global_batch_size` is not divisible by the device count
            (every device must get the same number of clips).
    """
    n_dev = mesh.size if mesh is not None else jax.device_count()
    if global_batch_size % n_dev:
        raise ValueError(f"global batch size {global_batch_size} is not divisible by "
                         f"the {n_dev} devices; choose a multiple of {n_dev}")
    return global_batch_size // jax.process_count()


def global_batch(local: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict:
    """Assembles each process's local batch into global `jax.Array`s.

    Args:
        local: dict of NumPy arrays with leading axis = local batch size
            (`[B_local, ...]`), the same keys and shapes on every process.
        mesh: the data mesh.

    Returns:
        dict of `jax.Array`s of leading size `B_local * process_count`, sharded
        `P('data')` (`jax.make_array_from_process_local_data`).
    """
    sharding = batch_sharded(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in local.items()}


def jit_step(step_fn: Callable, mesh: jax.sharding.Mesh, state_sharding: PyTree | None = None,
             ) -> Callable:
    """The jit strategy: `(state, global_batch) -> (state, metrics)`.

    The state (argument 0) is donated: its buffers are reused for the new
    state, so the caller must not touch the old one afterwards. The model's
    layers choose their forms for the platform of `mesh`'s devices
    (`models.platform`). The state stays
    replicated (or in `state_sharding`), metrics come back replicated.
    """
    state_sharding = replicated(mesh) if state_sharding is None else state_sharding
    # Traced for the mesh's platform: the model's layer forms follow the
    # devices compiled for, not the default backend (models/platform.py).
    return jax.jit(platform.traced_for(functools.partial(step_fn, axis_name=None), mesh),
                   in_shardings=(state_sharding, batch_sharded(mesh)),
                   out_shardings=(state_sharding, replicated(mesh)),
                   donate_argnums=(0,))


def pmap_step(step_fn: Callable) -> Callable:
    """The pmap strategy: `(stacked_state, device_batch) -> (stacked_state, metrics)`.

    Arguments and results carry a leading local-device axis (see
    `to_pmap_state`, `to_pmap_batch`); `step_fn` is called with
    `axis_name='data'` and must do its own collectives.
    """
    return jax.pmap(platform.traced_for(functools.partial(step_fn, axis_name=DATA_AXIS),
                                        jax.local_devices()),
                    axis_name=DATA_AXIS, donate_argnums=(0,))


def to_pmap_state(state: PyTree, devices=None) -> PyTree:
    """Copies a state onto each local device, stacked along a new axis 0."""
    devices = jax.local_devices() if devices is None else list(devices)
    n = len(devices)
    # pmap is jit(shard_map) since JAX 0.10: a leading axis split over a mesh
    # of the same devices is the layout it consumes without a copy.
    sharding = NamedSharding(jax.sharding.Mesh(np.asarray(devices), (DATA_AXIS,)), P(DATA_AXIS))

    def put(x):
        x = np.asarray(jax.device_get(x))
        return jax.device_put(np.broadcast_to(x, (n,) + x.shape), sharding)

    return jax.tree.map(put, state)


def from_pmap_state(state: PyTree) -> PyTree:
    """The copy of device 0 of a pmap-stacked state, as host NumPy arrays."""
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x[0])), state)


def to_pmap_batch(local: Mapping[str, np.ndarray], num_devices: int | None = None) -> dict:
    """Splits a local batch `[B, ...]` into `[num_local_devices, B / n, ...]`.

    Raises:
        ValueError: B is not divisible by the local device count.
    """
    n = jax.local_device_count() if num_devices is None else num_devices
    out = {}
    for k, v in local.items():
        v = np.asarray(v)
        if v.shape[0] % n:
            raise ValueError(f"batch key {k!r}: {v.shape[0]} clips do not split over "
                             f"{n} local devices")
        out[k] = v.reshape((n, v.shape[0] // n) + v.shape[1:])
    return out


def psum_if(x: PyTree, axis_name: str | None) -> PyTree:
    """`lax.psum(x, axis_name)`, or `x` when there is no axis (jit strategy)."""
    return x if axis_name is None else jax.lax.psum(x, axis_name)


def pmean_if(x: PyTree, axis_name: str | None) -> PyTree:
    """`lax.pmean(x, axis_name)`, or `x` when there is no axis (jit strategy)."""
    return x if axis_name is None else jax.lax.pmean(x, axis_name)


def device_index(axis_name: str | None) -> jax.Array:
    """This device's index along `axis_name` (0 under jit)."""
    return jnp.zeros((), jnp.int32) if axis_name is None else jax.lax.axis_index(axis_name)


def maybe_initialize_distributed(config) -> None:
    """`jax.distributed.initialize()` for multi-host runs.

    Called when `config.multihost` is set or a launcher's environment is seen
    (`JAX_COORDINATOR_ADDRESS`, Slurm with several tasks, Open MPI with
    several ranks, a Cloud TPU VM pod slice of several workers:
    `TPU_WORKER_HOSTNAMES` lists more than one host); explicit
    `config.coordinator_address`, `num_processes`, `process_id` are passed
    through (a 2-process test on 127.0.0.1 uses them).
    Must run before any device is touched; a second call is ignored.
    """
    env = os.environ
    launched = ("JAX_COORDINATOR_ADDRESS" in env
                or int(env.get("SLURM_NTASKS", "1") or 1) > 1
                or int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1
                or "," in env.get("TPU_WORKER_HOSTNAMES", ""))
    if not (config.multihost or launched):
        return
    kwargs = {}
    if config.coordinator_address:
        kwargs["coordinator_address"] = config.coordinator_address
    if config.num_processes:
        kwargs["num_processes"] = int(config.num_processes)
    if config.process_id is not None and config.process_id >= 0:
        kwargs["process_id"] = int(config.process_id)
    try:
        jax.distributed.initialize(**kwargs)
    except RuntimeError as e:
        if "already" not in str(e).lower():
            raise
    logging.info("jax.distributed: process %d of %d, %d devices", jax.process_index(),
                 jax.process_count(), jax.device_count())



def replicate(tree: PyTree, mesh: jax.sharding.Mesh) -> PyTree:
    """`tree` placed replicated on every device of `mesh`."""
    return jax.device_put(tree, replicated(mesh))


def enable_compilation_cache(directory: str) -> str | None:
    """Turns on JAX's persistent compilation cache in `directory` ('~' expanded).

    A restarted or resumed run then loads its compiled steps instead of
    compiling them again (MAE-DFER's train step takes about a minute to compile
    on a CPU). A cache folder set already (`JAX_COMPILATION_CACHE_DIR`, or by
    the caller's code) is kept; an empty `directory` leaves the cache off.
    Entries are only written for programs that took at least one second to
    compile (JAX's default threshold). Every process of a multi-process run
    writes the programs it compiled (`write_cache_from_every_process`), so a
    second launch loads them on every host; docs/pods.md says where the
    folder belongs on a TPU pod and on Slurm.

    Returns:
        The cache folder in use, or None.
    """
    current = jax.config.jax_compilation_cache_dir
    if current:
        write_cache_from_every_process()
        return current
    if not directory:
        return None
    path = os.path.expanduser(str(directory))
    jax.config.update("jax_compilation_cache_dir", path)
    write_cache_from_every_process()
    return path


# The arguments of JAX's `compiler._cache_write` (JAX 0.10.2, unchanged since
# 0.4.30): the wrapper below is only installed over exactly this signature.
_CACHE_WRITE_ARGS = ("cache_key", "compile_time_secs", "module_name", "backend", "executable",
                     "host_callbacks")


def write_cache_from_every_process() -> bool:
    """Lets every process of a multi-process run write its compiled programs to the cache.

    JAX writes persistent-cache entries from process 0 only
    (`jax._src.compiler._cache_write`: "Not writing persistent cache entry
    since process_id != 0"), to spare a shared bucket many writers of one
    object; no config option changes that (JAX 0.10.2). The other processes
    then compile again at every launch whenever they cannot read process 0's
    entries: a cache folder on each host's own disk (the default
    `~/.cache/audfer_jax/jax_cache` on a TPU pod's workers), or programs whose
    cache key differs between processes (on CPU the key's topology
    fingerprint is per process; pmap programs over the local devices).

    After this call, a process other than 0 also writes an entry that the
    cache does not hold yet, into a cache folder on a file system (a local or
    mounted path). A `gs://` (or other `scheme://`) cache is left to JAX's
    process-0 writes: there the keys of TPU and GPU programs are the same on
    every process (JAX docs, "Caching on multiple nodes"), so process 0's
    entries serve them all, and concurrent writers of one object meet the
    bucket's rate limit. Writing errors are warnings, as JAX's own are.

    Returns:
        Whether the wrapper is in place (False, with a log line, when JAX's
        function is not the one this was written against).
    """
    import inspect  # pylint: disable=g-import-not-at-top
    # Private JAX modules: the hook is JAX's own cache write (see above).
    from jax._src import compilation_cache  # pylint: disable=g-import-not-at-top
    from jax._src import compiler  # pylint: disable=g-import-not-at-top
    from jax._src import distributed  # pylint: disable=g-import-not-at-top

    original = compiler._cache_write  # pylint: disable=protected-access
    if getattr(original, "every_process", False):
        return True
    if tuple(inspect.signature(original).parameters) != _CACHE_WRITE_ARGS:
        logging.warning("compilation cache: JAX's _cache_write changed; only process 0 "
                        "writes the cache")
        return False

    def cache_write(cache_key, compile_time_secs, module_name, backend, executable,
                    host_callbacks):
        folder = str(jax.config.jax_compilation_cache_dir or "")
        if (distributed.global_state.process_id == 0 or "://" in folder or host_callbacks
                or compile_time_secs < jax.config.jax_persistent_cache_min_compile_time_secs):
            return original(cache_key, compile_time_secs, module_name, backend, executable,
                            host_callbacks)
        try:
            if not compilation_cache.is_executable_in_cache(backend, cache_key):
                compilation_cache.put_executable_and_time(
                        cache_key, module_name, executable, backend, int(compile_time_secs))
        except Exception as e:  # pylint: disable=broad-except
            # As JAX's own writer: a cache problem must not stop a run.
            warnings.warn(f"Error writing persistent compilation cache entry for "
                          f"'{module_name}' from process {distributed.global_state.process_id}: "
                          f"{type(e).__name__}: {e}")

    cache_write.every_process = True
    cache_write.original = original
    compiler._cache_write = cache_write  # pylint: disable=protected-access
    return True
