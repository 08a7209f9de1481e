"""Two `jax.distributed` processes on 127.0.0.1, as a pod runs (issue 19).

A SIGTERM to one process only, then the resumed run, whose step-interval
checkpoints cross an epoch end next to the epoch-end best checkpoint, against
one process with two devices. The micro model on in-memory data
(`multidevice/pod_run.py`): the code under test is the trainer's checkpoint
and stop logic, which a real backbone would only make slower to compile.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "multidevice" / "pod_run.py"
STEPS = 6           # 24 clips / batch 8 = 3 steps x 2 epochs


def _env(devices: int) -> dict:
    sys.path.insert(0, str(HERE))
    from conftest import multidevice_env  # pylint: disable=import-outside-toplevel
    return multidevice_env(devices)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(process_id: int, port: int, workdir: Path, delay: float,
           stdout=subprocess.PIPE) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(SCRIPT), str(process_id), str(port),
                             str(workdir), str(delay)],
                            env=_env(2 if process_id < 0 else 1), cwd=HERE.parent,
                            stdout=stdout, stderr=subprocess.PIPE, text=True)


def _wait(procs, timeout=600):
    """`[(returncode, stdout, stderr)]`; kills every process on a timeout."""
    out = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=timeout)
            out.append((p.returncode, stdout, stderr))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return out


def _pair(workdir: Path, delay: float = 0.0, extra=()):
    """Starts both processes (and `extra` single processes) on a fresh port.

    The port is picked free just before the start; if the coordinator could
    not bind it after all (another program took it in between), try again.
    """
    for _ in range(3):
        port = _free_port()
        procs = [_start(i, port, workdir, delay) for i in range(2)]
        procs += [_start(-1, 0, w, 0.0) for w in extra]
        extra = ()
        done = _wait(procs)
        if not any("address already in use" in e.lower() for _, _, e in done[:2]):
            return done
    return done


def _result(done) -> dict:
    rc, stdout, stderr = done
    assert rc == 0, f"exit {rc}\n{stdout[-2000:]}\n{stderr[-4000:]}"
    return json.loads(stdout.strip().splitlines()[-1])


def _steps(directory: Path) -> list[int]:
    return sorted(int(p) for p in os.listdir(directory) if p.isdigit())


@pytest.fixture(scope="module")
def preempted_and_resumed(tmp_path_factory):
    """Two processes stopped by a SIGTERM to process 1 only, then resumed.

    Next to them, the reference: one process on two devices, uninterrupted.
    Returns `(workdir, stopped [(status, stdout, stderr)] x 2, resumed results
    x 2, reference result)`.
    """
    root = tmp_path_factory.mktemp("pod")
    workdir = root / "pair"
    port = _free_port()
    # Process 0's console goes to a file, read while it runs: the signal goes
    # out once step 1 is done (metrics.jsonl is only flushed at the end).
    console = root / "console0.txt"
    with open(console, "w", encoding="utf-8") as out0:
        procs = [_start(0, port, workdir, 0.5, stdout=out0), _start(1, port, workdir, 0.5),
                 _start(-1, 0, root / "single", 0.0)]
    deadline = time.time() + 480
    while ("step 1/6" not in console.read_text(encoding="utf-8") and time.time() < deadline
           and all(p.poll() is None for p in procs[:2])):
        time.sleep(0.1)
    assert all(p.poll() is None for p in procs[:2]), _wait(procs)
    procs[1].send_signal(signal.SIGTERM)           # process 1 only
    stopped = _wait(procs)
    reference = _result(stopped.pop())
    stopped[0] = (stopped[0][0], console.read_text(encoding="utf-8"), stopped[0][2])
    resumed = [_result(d) for d in _pair(workdir)] if [s[0] for s in stopped] == [143, 143] \
        else None
    return workdir, stopped, resumed, reference


def test_sigterm_to_one_process_stops_both_alike(preempted_and_resumed):
    workdir, done, _, _ = preempted_and_resumed
    codes = [rc for rc, _, _ in done]
    assert codes == [143, 143], done
    stops = [json.loads(out.strip().splitlines()[-1]) for _, out, _ in done]
    step = stops[0]["preempted_at_step"]
    assert stops[1]["preempted_at_step"] == step and 1 <= step < STEPS
    assert stops[0]["checkpoint_step"] == stops[1]["checkpoint_step"] == step
    # One line, from process 0, naming the signal, its process, the step and
    # the checkpoint.
    line = [x for x in done[0][1].splitlines() if x.startswith("stopped by")]
    assert line == [f"stopped by SIGTERM (received by process 1) at step {step} (epoch "
                    f"{step // 3 + 1}, batch {step % 3 + 1} next); checkpoint of step {step} "
                    f"in {workdir / 'checkpoints' / str(step)}. Resume with the same command "
                    "(same --config and --workdir)."], done[0][1][-2000:]
    assert not [x for x in done[1][1].splitlines() if x.startswith("stopped by")]


def test_resumed_run_crosses_an_epoch_end_with_step_and_best_checkpoints(
        preempted_and_resumed):
    workdir, done, resumed, single = preempted_and_resumed
    assert resumed is not None, done
    step = json.loads(done[0][1].strip().splitlines()[-1])["preempted_at_step"]
    # Step 3 (epoch 1's end) saved both a best and a latest checkpoint, and
    # steps 2, 4 (interval) and 6 (the end) the latest: no barrier collided.
    assert _steps(workdir / "checkpoints") == sorted({step, 2, 3, 4, 6})
    assert not [p for p in os.listdir(workdir / "checkpoints") if "tmp" in p]
    assert _steps(workdir / "best")
    a, b = resumed
    assert {a["process"], b["process"]} == {0, 1} and a["devices"] == single["devices"] == 2
    # One global batch of 8 over 2 devices either way: the same computation
    # (the cross-device sums done by gloo instead of in one process), and the
    # resumed run sees exactly the batches and random draws of an
    # uninterrupted one (train.py).
    for r in (a, b):
        assert r["steps"] == single["steps"] == STEPS
        for which in ("last", "best"):
            for key in ("epoch", "confusion_matrix", "uar", "war"):
                assert r[which][key] == single[which][key], (which, key)
            assert r[which]["loss"] == pytest.approx(single[which]["loss"], rel=1e-4)
        assert r["history"] == single["history"]
    assert a["last"] == b["last"]
    assert np.sum(a["last"]["confusion_matrix"]) == 10       # every test clip once
