"""SIGTERM / SIGINT: a checkpoint at the next step boundary, a clean exit, an exact resume."""

import json
import os
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


def test_second_ctrl_c_exits_at_once():
    with preemption.PreemptionGuard() as guard:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        assert guard.reason() == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
