"""Tests of `audfer-jax sweep`: fold tables (`experiments.tables`), resumption
(`experiments.folds`) and the command (`cli.sweep`), with a fake runner."""

from __future__ import annotations

import csv
import io
import json
import math
import os

import ml_collections
import pytest

from audfer_jax import config_lib
from audfer_jax.cli import sweep as sweep_cli
from audfer_jax.experiments import folds
from audfer_jax.experiments import tables

# Per-fold figures (%) chosen so that the sample and the population std differ.
LAST_UAR = {1: 50.0, 2: 52.0, 3: 54.0, 4: 56.0, 5: 58.0}
LAST_WAR = {1: 60.0, 2: 61.0, 3: 62.0, 4: 63.0, 5: 64.0}
BEST_UAR = {1: 51.0, 2: 55.0, 3: 55.0, 4: 57.0, 5: 57.0}
BEST_WAR = {1: 61.0, 2: 61.0, 3: 64.0, 4: 64.0, 5: 65.0}


def _result(fold: int) -> dict:
    """What `train.train_and_evaluate` returns for a finished fold."""
    return {
        "class_names": ["a", "b"], "steps": 10, "best_metric": "war+uar",
        "last": {"label": "last", "epoch": 10, "step": 100, "uar": LAST_UAR[fold],
                 "war": LAST_WAR[fold],
                 "per_class_recall": {"a": LAST_UAR[fold] + 1, "b": LAST_UAR[fold] - 1}},
        "best": {"label": "best", "epoch": fold + 2, "step": 10 * (fold + 2),
                 "uar": BEST_UAR[fold], "war": BEST_WAR[fold], "criterion": "war+uar",
                 "per_class_recall": {"a": BEST_UAR[fold], "b": BEST_UAR[fold]}},
        "history": []}


def _row(rows, table, fold):
    (row,) = [r for r in rows if r["table"] == table and r["fold"] == fold]
    return row


def test_summarize_folds_hand_computed():
    per_fold = {k: folds.fold_record(_result(k)) for k in (3, 1, 2, 5, 4)}
    rows = tables.summarize_folds(per_fold)
    # Last epoch: UAR 50..58 step 2 -> mean 54, sample std sqrt(40 / 4) = sqrt(10)
    # (population std would be sqrt(8)); WAR 60..64 -> mean 62, std sqrt(10 / 4).
    mean, std = _row(rows, "last", "mean"), _row(rows, "last", "std")
    assert mean["uar"] == pytest.approx(54.0) and mean["war"] == pytest.approx(62.0)
    assert std["uar"] == pytest.approx(math.sqrt(10.0))
    assert std["war"] == pytest.approx(math.sqrt(2.5))
    # Best epoch: UAR 51, 55, 55, 57, 57 -> mean 55, deviations -4 0 0 2 2 ->
    # sum of squares 24, std sqrt(6). WAR 61 61 64 64 65 -> mean 63,
    # deviations -2 -2 1 1 2 -> 14, std sqrt(3.5).
    mean, std = _row(rows, "best", "mean"), _row(rows, "best", "std")
    assert mean["uar"] == pytest.approx(55.0) and mean["war"] == pytest.approx(63.0)
    assert std["uar"] == pytest.approx(math.sqrt(6.0))
    assert std["war"] == pytest.approx(math.sqrt(3.5))
    # Per-class recall: class a = UAR + 1 at the last epoch.
    assert _row(rows, "last", "mean")["recall/a"] == pytest.approx(55.0)
    # Per-fold rows are sorted and keep their own epoch.
    assert [r["fold"] for r in rows if r["table"] == "best"] == [1, 2, 3, 4, 5, "mean", "std"]
    assert _row(rows, "best", 4)["epoch"] == 6 and _row(rows, "best", 4)["uar"] == 57.0
    assert [r["table"] for r in rows] == ["last"] * 7 + ["best"] * 7


def test_single_fold_std_is_nan_and_empty_is_an_error():
    rows = tables.summarize_folds({1: folds.fold_record(_result(1))})
    assert math.isnan(_row(rows, "last", "std")["uar"])
    assert _row(rows, "last", "mean")["uar"] == 50.0
    with pytest.raises(ValueError):
        tables.summarize_folds({})
    with pytest.raises(ValueError, match="best"):
        folds.fold_record({"last": {"uar": 1.0, "war": 2.0}})


def test_markdown_and_csv_are_labelled():
    per_fold = {k: folds.fold_record(_result(k)) for k in (1, 2)}
    rows = tables.summarize_folds(per_fold)
    md = tables.to_markdown(rows, per_fold)
    assert "## Last epoch" in md and "## Best epoch (criterion: war+uar)" in md
    assert "std (sample, ddof=1)" in md
    # UAR 50, 52: mean 51.00, sample std sqrt(2) = 1.41.
    assert "| last | mean |  | 51.00 |" in md
    assert "| last | std (sample, ddof=1) |  | 1.41 |" in md
    table = list(csv.DictReader(io.StringIO(tables.to_csv(rows))))
    assert {r["table"] for r in table} == {"last", "best"}
    std_row = [r for r in table if r["table"] == "last" and r["fold"] == "std_sample_ddof1"]
    assert float(std_row[0]["uar"]) == pytest.approx(math.sqrt(2.0))


def test_parse_folds_and_with_fold():
    assert sweep_cli.parse_folds("1-5") == [1, 2, 3, 4, 5]
    assert sweep_cli.parse_folds("3,1") == [3, 1]
    for bad in ("", "0", "2-1", "1,1", "a"):
        with pytest.raises(ValueError):
            sweep_cli.parse_folds(bad)
    assert config_lib.with_fold("c/x.py:dataset=dfew,fold=2,loss=au", 4) == \
        "c/x.py:dataset=dfew,loss=au,fold=4"
    assert config_lib.with_fold("c/x.py", 1) == "c/x.py:fold=1"


def _fake_runner(calls, fail_on=None):
    """Writes metrics.json like train.py; `fail_on` folds crash once."""
    fail_on = set(fail_on or ())

    def run(config, workdir):
        fold = int(config.data.fold)
        calls.append(fold)
        os.makedirs(workdir, exist_ok=True)
        if fold in fail_on:
            fail_on.discard(fold)
            raise KeyboardInterrupt(f"killed during fold {fold}")
        result = _result(fold)
        with open(os.path.join(workdir, "metrics.json"), "w") as f:
            json.dump(result, f)
        return result

    return run


def _config(fold):
    return ml_collections.ConfigDict({"data": {"fold": fold}, "lr": 0.1})


def test_sweep_resumes_without_rerunning_finished_folds(tmp_path):
    calls = []
    runner = _fake_runner(calls, fail_on={3})
    with pytest.raises(KeyboardInterrupt):
        folds.run_sweep(_config, [1, 2, 3, 4, 5], str(tmp_path), runner=runner, log=lambda m: None)
    assert calls == [1, 2, 3]
    assert not (tmp_path / "results.md").exists()
    per_fold, rows = folds.run_sweep(_config, [1, 2, 3, 4, 5], str(tmp_path), runner=runner,
                                     log=lambda m: None)
    assert calls == [1, 2, 3, 3, 4, 5]          # folds 1 and 2 were not rerun
    assert sorted(per_fold) == [1, 2, 3, 4, 5]
    assert _row(rows, "last", "mean")["uar"] == pytest.approx(54.0)
    for name in ("results.md", "results.csv", "results.json"):
        assert (tmp_path / name).exists()
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["std"] == "sample (ddof=1)"
    # A third run reads everything back and trains nothing.
    folds.run_sweep(_config, [1, 2, 3, 4, 5], str(tmp_path), runner=runner, log=lambda m: None)
    assert calls == [1, 2, 3, 3, 4, 5]


def test_unfinished_run_stops_the_sweep(tmp_path):
    def stopped(config, workdir):
        return {"stopped_at_step": 3, "class_names": ["a"]}

    with pytest.raises(RuntimeError, match="did not finish"):
        folds.run_sweep(_config, [1], str(tmp_path), runner=stopped, log=lambda m: None)


def test_overrides_are_typed_and_checked():
    c = ml_collections.ConfigDict({"lr": 0.1, "epochs": 3, "flag": False, "name": "x",
                                   "sub": {"t": (1, 2)}})
    config_lib.apply_overrides(c, [("lr", "0.5"), ("epochs", "7"), ("flag", "true"),
                              ("name", "y"), ("sub.t", "(3, 4)")])
    assert (c.lr, c.epochs, c.flag, c.name, tuple(c.sub.t)) == (0.5, 7, True, "y", (3, 4))
    with pytest.raises(KeyError, match="unknown field"):
        config_lib.apply_overrides(c, [("lrr", "1")])
    with pytest.raises(ValueError, match="epochs"):
        config_lib.apply_overrides(c, [("epochs", "many")])
    rest, ov = config_lib.split_config_overrides(["--folds", "1", "--config.lr=2", "--config.epochs",
                                             "4", "--workdir", "w"])
    assert rest == ["--folds", "1", "--workdir", "w"]
    assert ov == [("lr", "2"), ("epochs", "4")]


def test_cli_with_config_file(tmp_path, monkeypatch, capsys):
    """`main` loads `FILE.py:ARGS`, sets each fold, applies overrides, writes tables."""
    from audfer_jax import train

    cfg = tmp_path / "cfg.py"
    cfg.write_text(
        "import ml_collections\n"
        "def get_config(arg=None):\n"
        "    kv = dict(x.split('=') for x in (arg or '').split(',') if x)\n"
        "    return ml_collections.ConfigDict({'data': {'fold': int(kv.get('fold', 1)),\n"
        "        'dataset': kv.get('dataset', 'dfew')}, 'lr': 0.1})\n")
    seen = []

    def fake_train(config, workdir):
        seen.append((int(config.data.fold), config.data.dataset, config.lr, workdir))
        return _result(int(config.data.fold))

    monkeypatch.setattr(train, "train_and_evaluate", fake_train)
    work = tmp_path / "sweep"
    rc = sweep_cli.main(["--config", f"{cfg}:dataset=mafw", "--folds", "1-3",
                     "--workdir", str(work), "--config.lr=0.02"])
    assert rc == 0
    assert [(f, d, lr) for f, d, lr, _ in seen] == [(1, "mafw", 0.02), (2, "mafw", 0.02),
                                                    (3, "mafw", 0.02)]
    assert [os.path.basename(w) for *_, w in seen] == ["fold_1", "fold_2", "fold_3"]
    out = capsys.readouterr().out
    assert "## Last epoch" in out and (work / "results.csv").exists()
    assert sweep_cli.main(["--config", f"{cfg}", "--folds", "1", "--workdir", str(work),
                       "--config.nope=1"]) == 2


def test_repository_configs_get_their_fold():
    """`with_fold` + `load_config_file` on the shipped backbone configs."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for name in ("former_dfer", "m3dfel", "mae_dfer"):
        spec = os.path.join(root, "configs", f"{name}.py") + ":dataset=dfew,fold=1,loss=au"
        config = config_lib.load_config_file(config_lib.with_fold(spec, 4))
        assert config.data.fold == 4 and config.model == name
        config_lib.apply_overrides(config, [("batch_size", "4"), ("optim.lr", "0.5")])
        assert (config.batch_size, config.optim.lr) == (4, 0.5)
