"""The persistent compilation cache on multi-process runs (parallel.py, issue 29 item 8).

JAX writes cache entries from process 0 only; `parallel.write_cache_from_every_process`
lets the other processes write what the cache lacks. The fast test drives JAX's
real compile path in this process with its process id set to 1; the slow one
launches two `jax.distributed` processes on 127.0.0.1 twice over one cache
folder and reads JAX's compile log: the second launch compiles nothing.
"""

from __future__ import annotations

import collections
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from jax._src import compilation_cache, compiler, distributed

from audfer_jax import parallel

HERE = Path(__file__).resolve().parent


@pytest.fixture
def process_1_cache(tmp_path, monkeypatch):
    """A fresh cache folder (every program cached), this process posing as process 1,
    and JAX's own cache writer in place; all restored afterwards."""
    old = (jax.config.jax_compilation_cache_dir,
           jax.config.jax_persistent_cache_min_compile_time_secs)
    folder = tmp_path / "cache"
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    compilation_cache.reset_cache()
    jax.devices()     # the CPU client starts as process 0 (it reads the same field)
    monkeypatch.setattr(distributed.global_state, "process_id", 1)
    jax_writer = getattr(compiler._cache_write, "original", compiler._cache_write)
    monkeypatch.setattr(compiler, "_cache_write", jax_writer)
    yield folder
    monkeypatch.undo()
    jax.config.update("jax_compilation_cache_dir", old[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", old[1])
    compilation_cache.reset_cache()


def _entries(folder: Path) -> list[str]:
    return sorted(p.name.split("-")[0] for p in folder.glob("*-cache")) if folder.is_dir() \
        else []


def test_a_process_other_than_0_writes_what_the_cache_lacks(process_1_cache):
    x = jnp.arange(6.0)
    stamp = float(time.time() % 1000)          # programs no earlier test compiled

    def tripled(v):
        return v * 3 + stamp

    def scaled(v):
        return v * 5 - stamp

    jax.jit(tripled)(x).block_until_ready()
    assert _entries(process_1_cache) == []     # JAX alone: process 1 writes nothing
    assert parallel.write_cache_from_every_process()
    assert parallel.write_cache_from_every_process()      # installed once
    assert compiler._cache_write.original.__module__ == "jax._src.compiler"
    jax.jit(scaled)(x).block_until_ready()
    assert _entries(process_1_cache) == ["jit_scaled"]
    # The entry loads: a fresh process-level cache finds it.
    hits = []
    listener = lambda event, **kw: hits.append(event)  # noqa: E731
    jax.monitoring.register_event_listener(listener)
    try:
        jax.clear_caches()
        assert jax.jit(scaled)(x).tolist() == (x * 5 - stamp).tolist()
    finally:
        jax.monitoring.unregister_event_listener(listener)
    assert "/jax/compilation_cache/cache_hits" in hits


def test_bucket_caches_and_short_compiles_stay_with_jax(process_1_cache, monkeypatch):
    calls = []

    def jax_writer(cache_key, compile_time_secs, module_name, backend, executable,
                   host_callbacks):
        calls.append(module_name)

    monkeypatch.setattr(compiler, "_cache_write", jax_writer)
    assert parallel.write_cache_from_every_process()
    write = compiler._cache_write
    jax.config.update("jax_compilation_cache_dir", "gs://bucket/jax_cache")
    write("key-1", 5.0, "on_a_bucket", None, None, [])
    jax.config.update("jax_compilation_cache_dir", str(process_1_cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    write("key-2", 0.5, "too_quick", None, None, [])
    write("key-3", 5.0, "with_a_host_callback", None, None, [object()])
    assert calls == ["on_a_bucket", "too_quick", "with_a_host_callback"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(root: Path, n: int, cache: Path) -> list[dict]:
    """Both processes of launch `n` (results ordered by process index)."""
    sys.path.insert(0, str(HERE))
    from conftest import multidevice_env  # pylint: disable=import-outside-toplevel
    env = multidevice_env(1)
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"     # cache every program
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, str(HERE / "multidevice" / "cache_launch.py"),
                               str(i), str(port), str(root / f"run{n}"), str(cache)],
                              env=env, cwd=HERE.parent, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    results = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=600)
            assert p.returncode == 0, f"exit {p.returncode}\n{stdout[-3000:]}\n{stderr[-5000:]}"
            results.append(json.loads(stdout.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return sorted(results, key=lambda r: r["process"])


@pytest.mark.slow      # two launches of two processes: about a minute on 2 cores
def test_second_launch_of_two_processes_compiles_nothing(tmp_path):
    cache = tmp_path / "cache"
    first = _launch(tmp_path, 1, cache)
    second = _launch(tmp_path, 2, cache)
    for a, b in zip(first, second):
        assert a["steps"] == b["steps"] == 3
        # Launch 1 compiled the init, the train step (`wrapped`), the eval step...
        assert {"jit_init", "jit_wrapped", "jit_eval_step"} <= set(a["misses"])
        # ...and launch 2 loaded every one of them on both processes.
        assert b["misses"] == [], b["process"]
        assert collections.Counter(b["hits"]) == collections.Counter(a["misses"])
        assert b["goodput"]["programs_compiled"] == 0
        assert b["goodput"]["programs_from_cache"] == len(b["hits"])
    # On CPU the keys differ per process (the topology fingerprint), so each
    # process's programs are its own entries.
    assert len(os.listdir(cache)) == len(first[0]["misses"]) + len(first[1]["misses"])
