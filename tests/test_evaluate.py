"""Tests of `audfer_jax.evaluate`, its command and the run-directory lookup it uses.

The end-to-end test trains the trainer's micro model on the in-memory data of
`tests/_train_fakes.py` (compiles in seconds) and checks that evaluating its
best and last checkpoints reproduces the figures the trainer recorded.
"""

from __future__ import annotations

import functools
import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

import _train_fakes as fakes  # noqa: E402

from audfer_jax import checkpoint as ckpt_lib  # noqa: E402
from audfer_jax import evaluate  # noqa: E402
from audfer_jax import metrics  # noqa: E402
from audfer_jax.cli import evaluate as evaluate_cli  # noqa: E402


def _tree(tmp_path, latest=(8, 16), best=(12,), config=True):
    run = tmp_path / "run"
    for s in latest:
        (run / "checkpoints" / str(s)).mkdir(parents=True)
    for s in best:
        (run / "best" / str(s)).mkdir(parents=True)
    # An interrupted asynchronous save: not a checkpoint.
    (run / "checkpoints" / "24.orbax-checkpoint-tmp-99").mkdir(parents=True)
    if config:
        (run / "config.json").write_text(json.dumps(
                {"model": "former_dfer", "best_metric": "uar", "eval_batch_size": 0,
                 "data": {"dataset": "dfew", "fold": 2}}))
    return run


def test_resolve_checkpoint(tmp_path):
    run = str(_tree(tmp_path))
    assert ckpt_lib.resolve_checkpoint(run, "best") == (f"{run}/best/12", "best", 12)
    assert ckpt_lib.resolve_checkpoint(run, "last") == (f"{run}/checkpoints/16", "last", 16)
    assert ckpt_lib.resolve_checkpoint(run, "8") == (f"{run}/checkpoints/8", "step", 8)
    assert ckpt_lib.resolve_checkpoint(run, "12") == (f"{run}/best/12", "step", 12)
    with pytest.raises(FileNotFoundError, match=r"step 24 .*\[8, 16\]"):
        ckpt_lib.resolve_checkpoint(run, "24")
    with pytest.raises(ValueError, match="expected best, last"):
        ckpt_lib.resolve_checkpoint(run, "newest")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no best checkpoint"):
        ckpt_lib.resolve_checkpoint(str(empty), "best")


# A hand-made confusion matrix: 3 classes, rows = true.
CM = np.array([[8, 2, 0], [1, 3, 0], [0, 1, 5]])
# Recalls 8/10, 3/4, 5/6 -> UAR = (0.8 + 0.75 + 0.8333...) / 3 = 79.444 %;
# WAR = 16 / 20 = 80 %.
UAR, WAR = 100 * (0.8 + 0.75 + 5 / 6) / 3, 80.0


def _fake_eval(calls):
    def fake(config, path, data=None):
        calls.append((config, path))
        out = metrics.summarize(CM, ["a", "b", "c"], np.array([[2, 1, 1]] * 18),
                                [f"AU{i:02d}" for i in range(18)])
        out.update(loss=0.5, step=int(os.path.basename(path)), checkpoint=path)
        return out
    return fake


def test_evaluate_uses_saved_config_and_overrides(tmp_path):
    run = _tree(tmp_path)
    calls = []
    summary = evaluate.evaluate(str(run), "best", overrides=[("eval_batch_size", "4")],
                                evaluate_fn=_fake_eval(calls))
    config, path = calls[0]
    assert config.eval_batch_size == 4 and config.data.fold == 2
    assert path == f"{run}/best/12"
    assert summary["epoch_choice"] == "best" and summary["step"] == 12
    assert summary["criterion"] == "uar"                 # from the run's config
    assert (summary["dataset"], summary["fold"]) == ("dfew", 2)
    assert summary["uar"] == pytest.approx(UAR) and summary["war"] == pytest.approx(WAR)


def test_cli_prints_and_writes_json(tmp_path, monkeypatch, capsys):
    from audfer_jax import train
    run = _tree(tmp_path)
    monkeypatch.setattr(train, "evaluate_checkpoint", _fake_eval([]))
    assert evaluate_cli.main(["--workdir", str(run), "--checkpoint", "last"]) == 0
    out = capsys.readouterr().out
    assert "[last] UAR 79.44 %   WAR 80.00 %" in out
    assert "last checkpoint" in out and "step 16" in out
    # Confusion-matrix rows in class order, recall per class, AU F1 (2*2/(4+1+1)).
    assert "\n  b     1     3     0\n" in out
    assert "\n  c   83.33\n" in out
    assert "AU00  66.7" in out
    saved = json.loads((run / "evaluation_last_step16.json").read_text())
    assert saved["confusion_matrix"] == CM.tolist() and saved["epoch_choice"] == "last"


def test_cli_errors(tmp_path, capsys):
    assert evaluate_cli.main(["--workdir", str(tmp_path / "missing")]) == 1
    assert "no such run directory" in capsys.readouterr().err
    run = _tree(tmp_path, best=())
    assert evaluate_cli.main(["--workdir", str(run)]) == 1
    err = capsys.readouterr().err
    assert "no best checkpoint" in err and "[8, 16]" in err
    bare = tmp_path / "bare"
    (bare / "best" / "3").mkdir(parents=True)
    assert evaluate_cli.main(["--workdir", str(bare)]) == 1
    assert "config.json" in capsys.readouterr().err


def test_end_to_end_matches_trainer(tmp_path):
    """Best and last checkpoints of a real (micro) run give the recorded figures."""
    from audfer_jax import train
    config = fakes.micro_config(num_epochs=2)
    model = fakes.MicroModel(num_classes=7)
    result = train.train_and_evaluate(config, str(tmp_path), data=fakes, model=model)
    eval_fn = functools.partial(train.evaluate_checkpoint, model=model)
    for choice in ("best", "last"):
        got = evaluate.evaluate(str(tmp_path), choice, data=fakes, evaluate_fn=eval_fn)
        want = result[choice]
        assert got["epoch_choice"] == choice and got["step"] == want["step"]
        assert got["confusion_matrix"] == want["confusion_matrix"]
        assert got["uar"] == pytest.approx(want["uar"])
        assert got["war"] == pytest.approx(want["war"])
        assert got["au_f1"] == pytest.approx(want["au_f1"])


def test_run_directory_under_either_flag(tmp_path):
    """`evaluate --checkpoint RUN` reads RUN as `predict --checkpoint RUN` does."""
    from audfer_jax.cli import errors as cli_errors
    from audfer_jax.cli import evaluate as evaluate_cli
    run = tmp_path / "run"
    step = run / "best" / "40"
    (step / "state").mkdir(parents=True)
    pick = evaluate_cli._run_and_checkpoint
    assert pick(str(run), None) == (str(run), "best")
    assert pick(str(run), "last") == (str(run), "last")
    assert pick(None, str(run)) == (str(run), "best")
    assert pick(None, str(step)) == (str(run), str(step))
    for bad in (None, "best", "12"):
        with pytest.raises(cli_errors.UsageError, match="--workdir RUN is required"):
            pick(None, bad)
