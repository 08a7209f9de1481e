"""Tests of audfer_jax.parallel: single-device helpers here, and the
multi-device and multi-process runs in their own subprocesses
(tests/multidevice/, 8 fake CPU devices; conftest.multidevice_env)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from audfer_jax import parallel

HERE = Path(__file__).resolve().parent


def test_mesh_and_shardings():
    mesh = parallel.make_mesh()
    assert mesh.axis_names == ("data",) and mesh.size == jax.device_count()
    assert mesh.axis_types == (jax.sharding.AxisType.Auto,)
    b = parallel.global_batch({"x": np.arange(6).reshape(3, 2)}, mesh)
    assert b["x"].shape == (3, 2) and b["x"].sharding.spec == jax.sharding.PartitionSpec("data")
    np.testing.assert_array_equal(np.asarray(b["x"]), np.arange(6).reshape(3, 2))


def test_batch_split_errors():
    assert parallel.local_batch_size(8) == 8
    out = parallel.to_pmap_batch({"x": np.arange(8)}, 4)
    np.testing.assert_array_equal(out["x"], np.arange(8).reshape(4, 2))
    with pytest.raises(ValueError, match="do not split over 3"):
        parallel.to_pmap_batch({"x": np.arange(8)}, 3)


def test_collective_helpers_without_axis_are_identity():
    x = {"a": np.float32(2.0)}
    assert parallel.psum_if(x, None) is x and parallel.pmean_if(x, None) is x
    assert int(parallel.device_index(None)) == 0


def test_jit_pmap_and_one_device_agree(run_multidevice):
    out = run_multidevice(HERE / "multidevice" / "train_strategies.py", timeout=600)
    assert "OK" in out, out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_and_agree(tmp_path):
    """Two jax.distributed processes on 127.0.0.1 (gloo CPU collectives)."""
    sys.path.insert(0, str(HERE))
    from conftest import multidevice_env
    env = multidevice_env(2)
    port = _free_port()
    script = HERE / "multidevice" / "two_process.py"
    procs = [subprocess.Popen([sys.executable, str(script), str(i), str(port), str(tmp_path)],
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
    a, b = results
    assert {a["process"], b["process"]} == {0, 1}
    assert a["steps"] == b["steps"] == 3 and a["step"] == b["step"] == 3
    assert a["checksum"] == b["checksum"]
    assert a["cm"] == b["cm"] and np.sum(a["cm"]) == 10
    assert os.path.isfile(tmp_path / "metrics.json")
