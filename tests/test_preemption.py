"""SIGTERM / SIGINT: a checkpoint at the next step boundary, a clean exit, an exact resume."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from audfer_jax import preemption

HERE = os.path.dirname(os.path.abspath(__file__))


def _env():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_ENABLE_ONEDNN_OPTS="0",
               JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    return env


def _run(workdir, delay):
    return subprocess.run([sys.executable, os.path.join(HERE, "preempt_run.py"), str(workdir),
                           str(delay)], env=_env(), capture_output=True, text=True, timeout=600)


def _steps_logged(workdir):
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return 0
    with open(path, encoding="utf-8") as f:
        return sum('"train/loss"' in line for line in f)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_and_resume_matches_uninterrupted(tmp_path, sig):
    reference = _run(tmp_path / "reference", 0.0)
    assert reference.returncode == 0, reference.stderr[-3000:]
    expected = json.loads(reference.stdout.strip().splitlines()[-1])

    workdir = tmp_path / "preempted"
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "preempt_run.py"),
                             str(workdir), "0.3"], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while _steps_logged(workdir) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == preemption.EXIT_CODES[signal.Signals(sig).name], err[-3000:]
    assert "Traceback" not in err
    stopped = json.loads(out.strip().splitlines()[-1])
    step = stopped["preempted_at_step"]
    assert 2 <= step < 18            # 48 clips / batch 8 = 6 steps x 3 epochs
    assert "Resume with the same command" in out
    assert str(step) in os.listdir(workdir / "checkpoints")

    resumed = _run(workdir, 0.0)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from step {step}" in resumed.stdout
    result = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert result["steps"] == expected["steps"] == 18
    for which in ("last", "best"):
        for key in ("epoch", "uar", "war", "confusion_matrix", "loss"):
            assert result[which][key] == expected[which][key], (which, key)
    assert result["history"] == expected["history"]


def test_guard_records_the_first_signal_and_restores_handlers():
    before = signal.getsignal(signal.SIGTERM)
    with preemption.PreemptionGuard() as guard:
        assert not guard.should_stop()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert guard.should_stop() and guard.reason() == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before


def _until(cond, timeout=5.0):
    deadline = time.time() + timeout
    while not cond() and time.time() < deadline:
        time.sleep(0.01)
    return cond()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_second_signal_exits_at_once_with_its_status(sig, capfd):
    exits = []
    with preemption.PreemptionGuard(grace_seconds=0, exit_fn=exits.append) as guard:
        os.kill(os.getpid(), sig)
        assert _until(lambda: guard.signal_name is not None)
        assert not exits and guard.should_stop() and guard.exit_code() == 128 + sig
        os.kill(os.getpid(), sig)
        assert _until(lambda: exits)
    assert exits == [128 + sig]         # 143 for SIGTERM, 130 for SIGINT
    name = signal.Signals(sig).name
    assert f"{name} received again: exiting at once, without a checkpoint" in capfd.readouterr().err


def test_grace_period_names_what_the_main_thread_waits_for(capfd):
    exits = []
    t0 = time.time()
    with preemption.PreemptionGuard(grace_seconds=0.5, exit_fn=exits.append) as guard:
        with guard.in_phase("the checkpoint save of step 7"):
            os.kill(os.getpid(), signal.SIGTERM)
            assert _until(lambda: exits)
    assert exits == [143] and time.time() - t0 >= 0.5
    err = capfd.readouterr().err
    lines = [x for x in err.splitlines() if "did not stop in time" in x]
    assert len(lines) == 1 and lines[0].startswith(
            "SIGTERM received 0.5 s ago and the run did not stop in time "
            "(config.preemption_grace_seconds): still waiting for the checkpoint save of "
            "step 7 (main thread in ")
    assert lines[0].endswith("exiting without a new checkpoint (exit 143); rerun the same "
                             "command to resume from the newest checkpoint")


def test_no_exit_once_the_run_has_stopped():
    exits = []
    with preemption.PreemptionGuard(grace_seconds=0.3, exit_fn=exits.append):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
    time.sleep(0.5)                     # the guard was left before the deadline
    assert exits == []


def test_a_step_blocked_in_xla_exits_after_the_grace_period(tmp_path):
    """The main thread waits in C for a step that never ends: no Python
    handler can run there; the watcher thread still stops the process."""
    marker = tmp_path / "blocked"
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "preempt_run.py"),
                             str(tmp_path / "run"), "0", str(marker), "2"], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while not marker.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.5)                 # the main thread is now waiting for step 1
        t0 = time.time()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    waited = time.time() - t0
    assert proc.returncode == 143, err[-3000:]
    assert 2.0 <= waited < 30, waited
    lines = [x for x in err.splitlines() if "did not stop in time" in x]
    assert len(lines) == 1, err[-3000:]
    assert re.search(r"still waiting for (the results of )?train step 1 \(main thread in ",
                     lines[0]), lines[0]
    assert not os.listdir(tmp_path / "run" / "checkpoints")
    assert "Traceback" not in err
