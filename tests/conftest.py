"""Shared test fixtures.

Multi-device tests run in their own process: 8 fake CPU devices need
XLA_FLAGS and, on a 2-core machine, NPROC >= 16 set before jaxlib starts
(engineering.md section 2), and NPROC slows single-device code, so the main
test process must not carry them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# With libtpu installed (the `test` extra, for `audfer-jax compile`), JAX would
# try to start a TPU backend in every test process: about 0.5 s, an error line
# about TPU_WORKER_HOSTNAMES, and libtpu's host-wide lock file taken. The tests
# run on the CPU; subprocesses inherit this.
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def multidevice_env(num_devices: int = 8) -> dict[str, str]:
    """Environment for a subprocess with `num_devices` fake CPU devices."""
    env = dict(os.environ)
    env["NPROC"] = str(2 * num_devices)
    env["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={num_devices} "
                        "--xla_cpu_collective_call_terminate_timeout_seconds=15")
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    return env


@pytest.fixture
def run_multidevice():
    """Runs `python script *args` with 8 fake CPU devices; fails on non-zero exit."""

    def run(script, *args, num_devices: int = 8, timeout: float = 600):
        proc = subprocess.run([sys.executable, str(script), *map(str, args)],
                              env=multidevice_env(num_devices), cwd=REPO,
                              capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            pytest.fail(f"{script} exited {proc.returncode}\n--- stdout\n"
                        f"{proc.stdout[-5000:]}\n--- stderr\n{proc.stderr[-5000:]}")
        return proc.stdout

    return run


@pytest.fixture(scope="module")
def module_compile_cache(tmp_path_factory):
    """JAX's persistent compilation cache in a fresh folder for one test module.

    Runs of the same model in one module reuse their compiled steps (same
    HLO); the previous cache settings are restored afterwards.
    """
    import jax  # pylint: disable=g-import-not-at-top
    old = (jax.config.jax_compilation_cache_dir,
           jax.config.jax_persistent_cache_min_compile_time_secs)
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jaxcache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    yield
    jax.config.update("jax_compilation_cache_dir", old[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", old[1])
