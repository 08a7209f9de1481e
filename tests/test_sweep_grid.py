"""Tests of `sweep --grid`: expansion, names, resume, paired statistics, tables, figure, errors.

Training is replaced by a fake runner (writes `metrics.json` like train.py)
except in the end-to-end case on the demo set.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys

import ml_collections
import numpy as np
import pytest

from audfer_jax import config_lib
from audfer_jax.cli import sweep as sweep_cli
from audfer_jax.experiments import comparison
from audfer_jax.experiments import folds as folds_lib
from audfer_jax.experiments import grid
from audfer_jax.experiments import grid_runner
from audfer_jax.experiments import published
from audfer_jax.experiments import stats
from audfer_jax.experiments import variants as variants_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
M3DFEL = os.path.join(REPO, "configs", "m3dfel.py") + ":dataset=dfew"
DEMO = os.path.join(REPO, "configs", "demo.py")


# ---------------------------------------------------------------------------
# Grid expansion, de-duplication and names.
# ---------------------------------------------------------------------------

def _toy_config(assign):
    """A config with the fields a grid point sets; `loss=ce` ignores `au`."""
    c = ml_collections.ConfigDict({"loss": "au", "au": {"lam": 0.25, "per_class": False},
                                   "optim": {"lr": 0.1}, "data": {"fold": 1}})
    for k, v in assign:
        node = c
        *head, leaf = k.split(".")
        for h in head:
            node = node[h]
        node[leaf] = type(node[leaf])(v)
    return c


def test_expand_product_order_and_ce_lambda_merge():
    axes = grid.parse_axes(["loss=ce,au", "au.lam=0.1,0.25,0.5"])
    variants, merges = grid.expand(axes, _toy_config)
    # 2 x 3 points; under loss=ce the three lambdas train one model.
    assert [v.name for v in variants] == ["loss-ce__au.lam-0.1", "loss-au__au.lam-0.1",
                                          "loss-au__au.lam-0.25", "loss-au__au.lam-0.5"]
    assert [a for _, a in merges] == [(("loss", "ce"), ("au.lam", "0.25")),
                                      (("loss", "ce"), ("au.lam", "0.5"))]
    assert variants[0].merged == [a for _, a in merges]
    # Equal values written differently resolve to one experiment too.
    variants, merges = grid.expand(grid.parse_axes(["au.lam=0.1,0.10,0.2"]), _toy_config)
    assert [v.label() for v in variants] == ["au.lam=0.1", "au.lam=0.2"]
    assert len(merges) == 1
    # No axis: one unnamed variant (the config as given, WORKDIR/fold_k layout).
    (only,), _ = grid.expand([], _toy_config)
    assert only.name == "" and only.assignments == ()


def test_fingerprint_ignores_fold_and_logging_but_not_the_experiment():
    a = _toy_config([])
    b = _toy_config([])
    b.data.fold = 4
    assert grid.fingerprint(a) == grid.fingerprint(b)
    b.optim.lr = 0.2
    assert grid.fingerprint(a) != grid.fingerprint(b)


def test_variant_names_are_stable_and_safe():
    assert grid.variant_name([("loss", "au_distinct"), ("au.lam", "0.25")]) == \
        "loss-au_distinct__au.lam-0.25"
    assert grid.variant_name([("au.minor_classes", "('fear', 'disgust')")]) == \
        "au.minor_classes-_fear_disgust_"
    # The same command line names the same directories, in two separate expansions
    # of the real m3dfel config (fresh config objects each time).
    names = []
    for _ in range(2):
        axes = variants_lib.classify_axes(M3DFEL, grid.parse_axes(["loss=ce,au", "au.lam=0.1,0.25"]))
        variants, _ = grid.expand(axes, lambda a, axes=axes: variants_lib.variant_config(
                M3DFEL, axes, [], a, 1))
        names.append([(v.name, v.fingerprint) for v in variants])
    assert names[0] == names[1]
    assert [n for n, _ in names[0]] == ["loss-ce__au.lam-0.1", "loss-au__au.lam-0.1",
                                        "loss-au__au.lam-0.25"]
    assert all(set(n) <= set("abcdefghijklmnopqrstuvwxyz0123456789._-") for n, _ in names[0])


def test_argument_and_field_axes_on_a_recipe_config():
    axes = variants_lib.classify_axes(M3DFEL, grid.parse_axes(["loss=ce,au_distinct", "optim.lr=1e-4"]))
    assert [(a.key, a.is_argument) for a in axes] == [("loss", True), ("optim.lr", False)]
    c = variants_lib.variant_config(M3DFEL, axes, [("batch_size", "8")],
                             (("loss", "au_distinct"), ("optim.lr", "1e-4")), 3)
    assert (c.loss, c.optim.lr, c.batch_size, c.data.fold) == ("au_distinct", 1e-4, 8, 3)


def test_baseline_selection():
    axes = grid.parse_axes(["loss=ce,au", "au.lam=0.1,0.25"])
    variants, _ = grid.expand(axes, _toy_config)
    # loss=ce matches the merged CE variant (its merged points included).
    assert grid.find_baseline(variants, grid.parse_baseline("loss=ce", axes)).name == \
        "loss-ce__au.lam-0.1"
    assert grid.find_baseline(variants, grid.parse_baseline("loss=ce,au.lam=0.25", axes)) \
        is variants[0]
    with pytest.raises(ValueError, match="matches 2 variants"):
        grid.find_baseline(variants, grid.parse_baseline("loss=au", axes))
    with pytest.raises(ValueError, match="not among the variants"):
        grid.parse_baseline("loss=au_minor", axes)


# ---------------------------------------------------------------------------
# Paired statistics against hand-computed numbers.
# ---------------------------------------------------------------------------

def test_paired_comparison_hand_computed():
    base = [50.0, 52.0, 54.0]
    var = [51.0, 55.0, 53.0]
    r = stats.paired_comparison(base, var)
    # d = 1, 3, -1: mean 1; deviations 0, 2, -2 -> sample variance 8 / 2 = 4, std 2
    # (population std would be sqrt(8/3)); 2 of 3 folds improved.
    assert r["diffs"] == [1.0, 3.0, -1.0]
    assert r["mean_diff"] == pytest.approx(1.0) and r["std_diff"] == pytest.approx(2.0)
    assert (r["improved"], r["n"]) == (2, 3)
    # t = mean / (std / sqrt(n)) = sqrt(3) / 2 with 2 degrees of freedom; Student's t
    # with 2 dof has the closed-form CDF 1/2 + t / (2 sqrt(2 + t^2)).
    t = math.sqrt(3) / 2
    p = 2 * (1 - (0.5 + t / (2 * math.sqrt(2 + t * t))))
    assert r["t"] == pytest.approx(t, rel=1e-12) and r["p"] == pytest.approx(p, rel=1e-9)
    from scipy import stats as sp
    ref = sp.ttest_rel(var, base)
    assert (r["t"], r["p"]) == pytest.approx((ref.statistic, ref.pvalue), rel=1e-12)
    assert "ttest_rel" in r["test"]


def test_paired_comparison_degenerate_cases():
    one = stats.paired_comparison([50.0], [52.0])
    assert one["diffs"] == [2.0] and math.isnan(one["std_diff"]) and math.isnan(one["p"])
    same = stats.paired_comparison([50.0, 60.0], [51.0, 61.0])   # d constant: t undefined
    assert same["std_diff"] == 0.0 and math.isnan(same["t"]) and same["improved"] == 2
    with pytest.raises(ValueError):
        stats.paired_comparison([1.0, 2.0], [1.0])


# ---------------------------------------------------------------------------
# Tables and the published reference row.
# ---------------------------------------------------------------------------

# Per-fold (last UAR, last WAR, best UAR, best WAR) of two variants over folds 1-3.
FIGS = {"loss-ce": {1: (50, 60, 52, 61), 2: (52, 62, 53, 63), 3: (54, 64, 55, 64)},
        "loss-au": {1: (51, 60, 53, 62), 2: (55, 61, 54, 63), 3: (53, 66, 55, 67)}}


def _result(f):
    return {"last": {"epoch": 2, "uar": float(f[0]), "war": float(f[1])},
            "best": {"epoch": 1, "uar": float(f[2]), "war": float(f[3]),
                     "criterion": "war+uar"}}


def _per_variant():
    return {n: {k: folds_lib.fold_record(_result(f)) for k, f in folds.items()}
            for n, folds in FIGS.items()}


def test_tables_one_per_metric_and_epoch_with_paired_columns():
    tables = comparison.build_tables(_per_variant(), {"loss-ce": "loss=ce", "loss-au": "loss=au"},
                                     "loss-ce")
    assert [(t["epoch"], t["metric"]) for t in tables] == [
            ("last", "uar"), ("last", "war"), ("best", "uar"), ("best", "war")]
    last_uar = tables[0]
    base, au = last_uar["rows"]
    assert base["baseline"] and base["vs_baseline"] is None
    assert au["values"] == [51.0, 55.0, 53.0] and au["mean"] == pytest.approx(53.0)
    assert au["vs_baseline"]["diffs"] == [1.0, 3.0, -1.0]
    # Last WAR: d = 0, -1, 2 -> mean 1/3, one fold improved (0 is not an improvement).
    assert tables[1]["rows"][1]["vs_baseline"]["mean_diff"] == pytest.approx(1 / 3)
    assert tables[1]["rows"][1]["vs_baseline"]["improved"] == 1
    md = comparison.to_markdown(tables, baseline_label="loss=ce", criterion="war+uar")
    assert "## UAR, last epoch" in md and "## WAR, best epoch (criterion: war+uar)" in md
    assert "| loss=au | 51.00 | 55.00 | 53.00 | 53.00 | 2.00 | +1.00 / +3.00 / -1.00 | " \
           "+1.00 | 2.00 | 2/3 | 0.87 | 0.478 |" in md
    assert "loss=ce **(baseline)**" in md and "ttest_rel" in md and "published" not in md
    rows = list(csv.DictReader(io.StringIO(comparison.to_csv(tables))))
    assert len(rows) == 8
    r = [x for x in rows if (x["epoch"], x["metric"], x["variant"]) == ("last", "uar", "loss-au")]
    assert float(r[0]["diff_std_sample_ddof1"]) == pytest.approx(2.0)
    assert r[0]["fold_2"] == "55.0" and r[0]["folds_improved"] == "2"
    # Best UAR, loss-au vs loss-ce: d = 1, 1, 0 (not all equal, so a finite t).
    best = tables[2]["rows"][1]["vs_baseline"]
    assert best["diffs"] == [1.0, 1.0, 0.0] and math.isfinite(best["p"])
    assert "d +1.00 +- 2.00, improved 2/3, paired t p=0.478" in comparison.console_summary(tables)


def test_published_row_for_a_recipe_and_not_for_the_demo(tmp_path):
    m3dfel = published.for_config(config_lib.load_config_file(config_lib.with_fold(M3DFEL, 1)))
    assert (m3dfel["uar"], m3dfel["war"]) == (56.10, 69.25) and "M3DFEL" in m3dfel["source"]
    assert published.for_config(config_lib.load_config_file(DEMO + ":loss=ce")) is None
    # A pair no source gives has no entry: M3DFEL on MAFW.
    assert published.lookup("m3dfel", "mafw") is None
    for e in published.table():
        assert e["source"] and 0 < e["uar"] < e["war"] < 100
    tables = comparison.build_tables(_per_variant(), {}, "loss-ce", m3dfel)
    md = comparison.to_markdown(tables)
    assert "| *published: M3DFEL on DFEW (original paper, CE)* [1] |  |  |  | 56.10 |" in md
    assert "| *published: M3DFEL on DFEW (original paper, CE)* [1] |  |  |  | 69.25 |" in md
    assert "[1] Reference only" in md and "Tencent/TFace" in md
    rows = list(csv.DictReader(io.StringIO(comparison.to_csv(tables))))
    pub = [r for r in rows if r["variant"] == "published"]
    assert [float(r["mean"]) for r in pub] == [56.10, 69.25, 56.10, 69.25]
    # A sweep without a grid gets the row in its results.md too; the demo does not.
    for spec, expect in ((M3DFEL, True), (DEMO + ":loss=au", False)):
        work = tmp_path / os.path.basename(spec.split(":")[0])
        folds_lib.run_sweep(lambda fold, spec=spec: config_lib.load_config_file(
                config_lib.with_fold(spec, fold)), [1, 2], str(work),
                runner=_grid_runner([]), log=lambda m: None)
        md = (work / "results.md").read_text()
        assert ("| last | *published: M3DFEL on DFEW (original paper, CE)* [1] |  | "
                "56.10 | 69.25 |" in md) == expect
        assert ("published" in md) == expect
    # MAE-DFER on DFEW carries the README's per-fold figures.
    mae = published.lookup("mae_dfer", "dfew")
    assert np.mean([v[0] for v in mae["folds"].values()]) == pytest.approx(mae["uar"], abs=0.01)


# ---------------------------------------------------------------------------
# The figure.
# ---------------------------------------------------------------------------

def test_results_figure_draws_means_folds_std_and_baseline():
    from audfer_jax.figures import sweep as sweep_figure
    m3dfel = published.lookup("m3dfel", "dfew") | {"label": "published"}
    tables = comparison.build_tables(_per_variant(), {"loss-ce": "loss=ce", "loss-au": "loss=au"},
                                     "loss-ce", m3dfel)
    fig = sweep_figure.results_figure(tables, title="t")
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 4
    ax = axes[0]                                         # UAR, last epoch
    assert ax.get_title() == "UAR, last epoch"
    (means,) = [ln for ln in ax.get_lines() if ln.get_label() == "mean +- std"]
    assert list(means.get_ydata()) == pytest.approx([52.0, 53.0])
    (band,) = [p for p in ax.patches if p.get_label() == "baseline"]
    assert band.get_x() < 0 < band.get_x() + band.get_width() < 1   # around variant 0 only
    from matplotlib.collections import LineCollection, PathCollection
    (points,) = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert sorted(np.asarray(points.get_offsets())[:, 1]) == sorted([50, 52, 54, 51, 55, 53])
    # Error bars: sample std 2.0 for both variants (segments mean -+ std).
    segs = [s for c in ax.collections if isinstance(c, LineCollection) for s in c.get_segments()]
    spans = sorted(round(float(s[1][1] - s[0][1]), 6) for s in segs)
    assert spans == [4.0, 4.0]
    pub = [ln for ln in ax.get_lines() if ln.get_label() == "published"]
    assert pub and pub[0].get_ydata()[0] == pytest.approx(56.10)
    assert "(baseline)" in ax.get_xticklabels()[0].get_text()


# ---------------------------------------------------------------------------
# Running a grid: resume, extension, reuse (fake runner counting train calls).
# ---------------------------------------------------------------------------

def _grid_runner(calls, fail_on=()):
    """Writes metrics.json like train.py; `(loss, fold)` in `fail_on` crash once."""
    fail_on = set(fail_on)

    def run(config, workdir):
        key = (config.loss, int(config.data.fold))
        calls.append(key)
        os.makedirs(workdir, exist_ok=True)
        if key in fail_on:
            fail_on.discard(key)
            raise KeyboardInterrupt(f"killed during {key}")
        f = FIGS["loss-ce" if config.loss == "ce" else "loss-au"][key[1]]
        lam = float(config.au.lam) if config.loss != "ce" else 0.0
        result = _result(tuple(x + 10 * lam for x in f))
        with open(os.path.join(workdir, "metrics.json"), "w") as fh:
            json.dump(result, fh)
        return result

    return run


def _run(tmp_path, grids, calls, runner=None, folds=(1, 2, 3)):
    axes = variants_lib.classify_axes(M3DFEL, grid.parse_axes(grids))

    def make(v, fold):
        return variants_lib.variant_config(M3DFEL, axes, [], v.assignments, fold)

    variants, _ = grid.expand(axes, lambda a: variants_lib.variant_config(M3DFEL, axes, [], a, 1))
    return grid_runner.run_grid(variants, make, list(folds), str(tmp_path), baseline=variants[0],
                          runner=runner or _grid_runner(calls), log=lambda m: None)


def test_resume_and_extension_train_no_finished_fold_again(tmp_path):
    calls = []
    runner = _grid_runner(calls, fail_on={("au", 2)})
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, ["loss=ce,au"], calls, runner)
    assert calls == [("ce", 1), ("ce", 2), ("ce", 3), ("au", 1), ("au", 2)]
    assert not (tmp_path / "results.md").exists()
    tables = _run(tmp_path, ["loss=ce,au"], calls, runner)
    assert calls[5:] == [("au", 2), ("au", 3)]          # only the unfinished folds
    assert tables[0]["rows"][1]["values"] == [53.5, 57.5, 55.5]    # lam 0.25 adds 2.5
    for name in ("results.md", "results.csv", "results.json", "results.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert (tmp_path / "loss-ce" / "fold_3" / "metrics.json").exists()
    assert (tmp_path / "loss-au" / "results.md").exists()          # per-variant tables
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["baseline"] == "loss-ce" and set(saved["variants"]) == {"loss-ce", "loss-au"}
    # The same grid again: everything is read back.
    _run(tmp_path, ["loss=ce,au"], calls)
    assert len(calls) == 7
    # Extended by a lambda axis: the new names differ, but loss=ce and loss=au with
    # lam 0.25 (the config's default) are the experiments already done, found by
    # their fingerprints; only lam=0.5 trains.
    tables = _run(tmp_path, ["loss=ce,au", "au.lam=0.25,0.5"], calls)
    assert calls[7:] == [("au", 1), ("au", 2), ("au", 3)]
    assert [r["label"] for r in tables[0]["rows"]] == [
            "loss=ce, au.lam=0.25", "loss=au, au.lam=0.25", "loss=au, au.lam=0.5"]
    assert tables[0]["rows"][2]["values"] == [56.0, 60.0, 58.0]
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [
            "loss-au", "loss-au__au.lam-0.5", "loss-ce"]


# ---------------------------------------------------------------------------
# The command line: output and one-line errors before anything trains.
# ---------------------------------------------------------------------------

def test_cli_grid_with_fake_training(tmp_path, monkeypatch, capsys):
    from audfer_jax import train
    calls = []
    monkeypatch.setattr(train, "train_and_evaluate", _grid_runner(calls))
    rc = sweep_cli.main(["--config", M3DFEL, "--folds", "1-3", "--grid", "loss=ce,au",
                     "--grid", "au.lam=0.1,0.25", "--baseline", "loss=ce",
                     "--workdir", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "3 variant(s) x 3 fold(s); baseline: loss=ce, au.lam=0.1" in out
    assert "merged: loss=ce, au.lam=0.25 trains the same experiment as loss=ce, au.lam=0.1" in out
    assert "UAR last epoch" in out and "paired t p=" in out
    assert "published: M3DFEL on DFEW" in out
    assert len(calls) == 9
    md = (tmp_path / "results.md").read_text()
    assert md.count("| loss=au, au.lam=0.25 |") == 4 and "- merged: loss=ce, au.lam=0.25" in md


BAD = [
    (["--grid", "au.lamm=0.1,0.2"], "--grid au.lamm: neither a config argument of"),
    (["--grid", "au.lam=0.1,x"], "--grid au.lam=x: expected a number, got 'x'"),
    (["--grid", "loss=ce,au", "--baseline", "loss=au_minor"],
     "--baseline 'loss=au_minor': loss=au_minor is not among the variants"),
    (["--grid", "loss="], "--grid loss=: empty list of values"),
    (["--grid", "loss=ce,cee"], "--grid loss=cee: unknown loss 'cee'"),
    (["--grid", "fold=1,2"], "--grid fold: folds are chosen by --folds"),
    (["--baseline", "loss=ce"], "--baseline needs --grid"),
]


@pytest.mark.parametrize("extra,message", BAD, ids=[b[1][:24] for b in BAD])
def test_cli_errors_are_one_line_before_training(tmp_path, monkeypatch, capsys, extra, message):
    from audfer_jax import train
    calls = []
    monkeypatch.setattr(train, "train_and_evaluate", _grid_runner(calls))
    rc = sweep_cli.main(["--config", M3DFEL, "--folds", "1-2", "--workdir", str(tmp_path), *extra])
    err = capsys.readouterr().err
    assert rc == 2 and calls == [] and not os.listdir(tmp_path)
    assert message in err and len(err.strip().splitlines()) == 1, err


# ---------------------------------------------------------------------------
# End to end on the demo set through the CLI.
# ---------------------------------------------------------------------------

@pytest.mark.slow
def test_demo_grid_end_to_end_cli(tmp_path, capsys):
    """`audfer-jax sweep` on the demo set: 2 variants x 2 folds, 1 epoch each.

    The real demo set, pipeline and trainer; the backbone is the tiny 3-D CNN of
    tests/plugin_backbone.py (import path), so that four runs fit in seconds.
    """
    pytest.importorskip("tensorflow")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from audfer_jax import cli
    spec = (f"{DEMO}:num_clips=35,epochs=1,size=32,data_dir={tmp_path / 'data'},"
            "model=plugin_backbone:make_backbone")
    rc = cli.main(["sweep", "--config", spec, "--folds", "1-2", "--grid", "loss=ce,au",
                   "--workdir", str(tmp_path / "grid"), "--config.batch_size=8",
                   "--config.progress_bar=False", "--config.async_checkpoints=False"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "2 variant(s) x 2 fold(s); baseline: loss=ce" in out
    assert "published" not in out                       # the demo has no paper figures
    saved = json.loads((tmp_path / "grid" / "results.json").read_text())
    for name in ("loss-ce", "loss-au"):
        for fold in (1, 2):
            m = json.loads((tmp_path / "grid" / name / f"fold_{fold}" / "metrics.json")
                           .read_text())
            assert saved["variants"][name]["per_fold"][str(fold)]["last"]["uar"] == \
                pytest.approx(m["last"]["uar"])
    (last_uar,) = [t for t in saved["tables"] if (t["epoch"], t["metric"]) == ("last", "uar")]
    ce, au = last_uar["rows"]
    assert ce["baseline"] and au["vs_baseline"]["diffs"] == pytest.approx(
            [b - a for a, b in zip(ce["values"], au["values"])])
    assert (tmp_path / "grid" / "results.png").stat().st_size > 0
