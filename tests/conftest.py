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


# Long cases moved out of the default run (`make test`, CI: 15 minutes on 2
# cores) because a faster default-run test covers the same code; `make
# test-slow` runs them. Each entry names what covers it.
_SLOW_CASES = {
    # `make train` itself; the demo set's train/evaluate/predict path runs in
    # test_plugin.py::test_demo_set_train_evaluate_predict.
    "test_train.py::test_demo_config_end_to_end",
    # Reduced MAE-DFER parity; the M3DFEL case, the whole schedules and the
    # per-leaf lr of every MAE-DFER group stay (test_learning_rate_* below).
    "test_recipe_parity.py::test_loss_per_step[mae_dfer_au_warmup]",
    "test_recipe_parity.py::test_grad_norm_per_step[mae_dfer_au_warmup]",
    "test_recipe_parity.py::test_parameter_norms_after_k_steps[mae_dfer_au_warmup]",
    # bfloat16 eval logits against float32 stay, for all three backbones.
    "test_models_accelerator.py::test_bfloat16_training_reduces_the_loss_like_float32",
    # SIGINT and SIGTERM on one process: tests/test_pod_runs.py (SIGTERM to one
    # of two processes, then an exact resume) and the in-process guard tests of
    # test_preemption.py stay.
    "test_preemption.py::test_signal_saves_and_resume_matches_uninterrupted[2]",
    "test_preemption.py::test_signal_saves_and_resume_matches_uninterrupted[15]",
    # remat: test_models_mae_dfer.py::test_remat_matches_plain stays.
    "test_models_accelerator.py::test_remat_gives_the_same_loss_and_gradients[m3dfel_tiny]",
    "test_models_accelerator.py::test_remat_gives_the_same_loss_and_gradients[former_dfer_tiny]",
    "test_models_accelerator.py::test_remat_gives_the_same_loss_and_gradients[mae_dfer_tiny]",
    "test_models_mae_dfer_scan.py::test_remat_with_scan_gives_the_same_loss_and_gradients",
    "test_models_mae_dfer_scan.py::test_scanned_gradients_equal_unrolled[False]",
    # Every loss variant: tests/test_losses.py and test_train.py's loss test stay.
    "test_plugin.py::test_every_loss_variant_trains_the_plugin",
    # Two processes: tests/test_pod_runs.py (two processes against one with two
    # devices, SIGTERM, resume) stays.
    "test_parallel.py::test_two_processes_train_and_agree",
}


def pytest_collection_modifyitems(config, items):  # pylint: disable=unused-argument
    for item in items:
        if item.nodeid.split("tests/", 1)[-1] in _SLOW_CASES:
            item.add_marker(pytest.mark.slow)
