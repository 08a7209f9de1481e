"""`audfer-jax sweep`: train the folds of a config in sequence and tabulate them.

    audfer-jax sweep --config configs/former_dfer.py:dataset=dfew,loss=au \\
        --folds 1-5 --workdir runs/former_dfer_dfew_au [--config.batch_size=16 ...]

Fold k trains in `WORKDIR/fold_k` with the config variant `fold=k`
(`train.train_and_evaluate`). A fold whose `fold_k/metrics.json` exists is
finished and is read back, not rerun; an unfinished fold is started again and
the trainer resumes it from its newest checkpoint. So an interrupted sweep is
resumed by running the same command again.

Evaluation protocol (../shared/spec/datasets.md section 8): DFEW and MAFW are
scored per fold and the figures are the **mean over folds of the per-fold
values**, reported together with every per-fold value; predictions are never
pooled across folds. Each run has two figures that are never mixed: the
last-epoch evaluation and the best epoch (one epoch chosen by the run's
criterion, default WAR+UAR, picked on the test split, hence optimistic). Every
table is labelled "last" or "best". The spread is the **sample** standard
deviation across folds (ddof = 1, divisor k - 1), undefined (NaN, printed
"n/a") for a single fold.

Outputs in WORKDIR: `results.md` (Markdown tables), `results.csv` (one row per
table x fold plus the mean and std rows) and `results.json` (the per-fold
records and the rows).

Grids (ablations): `--grid KEY=V1,V2` (repeatable; `grid.py`) runs every variant
of the product in turn, variant `NAME` in `WORKDIR/NAME/fold_k` (with its own
per-variant tables as above and `variant.json`), then writes the comparison
against `--baseline KEY=V` (default: the first variant) to WORKDIR:
`results.md`, `results.csv`, `results.json` (one table per metric and epoch
choice, paired statistics over folds: `comparison.py`, `stats.py`) and
`results.png` (`figures/sweep.py`). Every variant and fold is resolved and
checked before the first one trains. On several hosts every process runs the
same variants and folds in the same order (each run uses the whole slice);
process 0 writes the tables.

    audfer-jax sweep --config configs/m3dfel.py:dataset=dfew --folds 1-5 \\
        --grid loss=ce,au,au_distinct --grid au.lam=0.1,0.25 --baseline loss=ce \\
        --workdir runs/abl
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from audfer_jax import hints

from audfer_jax.cli import errors as cli_errors
from audfer_jax import config_lib
from audfer_jax import grid as grid_lib
from audfer_jax import paths

EPOCH_CHOICES = ("last", "best")
STD_LABEL = "std (sample, ddof=1)"

Row = dict[str, Any]


def parse_folds(text: str) -> list[int]:
    """`"1-5"` -> [1, 2, 3, 4, 5]; `"1,3"` -> [1, 3]; `"2"` -> [2].

    Raises:
        ValueError: an empty list, a fold < 1, a repeated fold or bad syntax.
    """
    folds: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                if hi < lo:
                    raise ValueError
                folds.extend(range(lo, hi + 1))
            else:
                folds.append(int(part))
        except ValueError:
            raise ValueError(f"--folds {text!r}: expected e.g. '1-5' or '1,3,5'") from None
    if not folds or min(folds) < 1 or len(set(folds)) != len(folds):
        raise ValueError(f"--folds {text!r}: need distinct folds >= 1")
    return folds


# ---------------------------------------------------------------------------
# Tables.
# ---------------------------------------------------------------------------

def fold_record(result: Mapping[str, Any]) -> dict:
    """The part of a run's result a sweep tabulates.

    Args:
        result: what `train.train_and_evaluate` returns (and writes to
            `metrics.json`): `{"last": {"epoch", "uar", "war",
            "per_class_recall", ...}, "best": {..., "criterion"}, ...}`.

    Returns:
        `{"last": {...}, "best": {...}}` with `epoch`, `uar`, `war` (%),
        `per_class_recall` ({name: %}) and for best its `criterion`.

    Raises:
        ValueError: the result lacks a last or best evaluation (an unfinished
            or failed run).
    """
    out = {}
    for choice in EPOCH_CHOICES:
        rec = result.get(choice)
        if not rec or "uar" not in rec or "war" not in rec:
            raise ValueError(f"run result has no {choice!r} evaluation with uar/war "
                             f"(keys: {sorted(result)})")
        entry = {"epoch": rec.get("epoch"), "uar": float(rec["uar"]),
                 "war": float(rec["war"])}
        if rec.get("per_class_recall"):
            entry["per_class_recall"] = {k: float(v)
                                         for k, v in rec["per_class_recall"].items()}
        if choice == "best":
            entry["criterion"] = rec.get("criterion", result.get("best_metric"))
        out[choice] = entry
    return out


def _metric_columns(per_fold: Mapping[int, Mapping], choice: str) -> list[str]:
    """uar, war, then `recall/<class>` when every fold reports that class."""
    cols = ["uar", "war"]
    names = None
    for rec in per_fold.values():
        pcr = rec[choice].get("per_class_recall")
        if not pcr:
            return cols
        names = list(pcr) if names is None else [n for n in names if n in pcr]
    return cols + [f"recall/{n}" for n in names or []]


def _value(entry: Mapping, col: str) -> float:
    if col.startswith("recall/"):
        return float(entry["per_class_recall"][col[len("recall/"):]])
    return float(entry[col])


def sample_std(values: Sequence[float]) -> float:
    """Sample standard deviation (ddof = 1, divisor n - 1); NaN for n < 2."""
    x = np.asarray(values, np.float64)
    return float(np.std(x, ddof=1)) if x.size >= 2 else float("nan")


def summarize_folds(per_fold: Mapping[int, Mapping[str, Any]]) -> list[Row]:
    """Per-fold rows plus mean and sample std, for the last and the best epoch.

    Args:
        per_fold: `{fold: {"last": {"uar", "war", "epoch"?, "per_class_recall"?},
            "best": {...}}}` (`fold_record` of each fold; figures in %).

    Returns:
        Rows (dicts), first all "last" rows then all "best" rows; each has
        `table` ("last" | "best"), `fold` (the fold number, "mean" or "std"),
        `epoch` (the epoch a fold's figures come from; None for mean/std), and
        one key per metric column: `uar`, `war` and `recall/<class>` (when all
        folds report per-class recall). Per-fold rows are sorted by fold. The
        mean is the arithmetic mean of the per-fold values (never pooled
        predictions, datasets.md section 8); "std" is the sample standard
        deviation (ddof = 1), NaN with one fold.

    Raises:
        ValueError: `per_fold` is empty or a fold lacks a last/best entry.
    """
    if not per_fold:
        raise ValueError("no fold to summarise")
    rows: list[Row] = []
    for choice in EPOCH_CHOICES:
        for fold, rec in per_fold.items():
            if choice not in rec:
                raise ValueError(f"fold {fold} has no {choice!r} figures")
        cols = _metric_columns(per_fold, choice)
        values = {c: [] for c in cols}
        for fold in sorted(per_fold):
            entry = per_fold[fold][choice]
            row: Row = {"table": choice, "fold": int(fold), "epoch": entry.get("epoch")}
            for c in cols:
                row[c] = _value(entry, c)
                values[c].append(row[c])
            rows.append(row)
        rows.append({"table": choice, "fold": "mean", "epoch": None,
                     **{c: float(np.mean(values[c])) for c in cols}})
        rows.append({"table": choice, "fold": "std", "epoch": None,
                     **{c: sample_std(values[c]) for c in cols}})
    return rows


def _fmt(x: Any) -> str:
    if x is None:
        return ""
    if isinstance(x, float):
        return "n/a" if math.isnan(x) else f"{x:.2f}"
    return str(x)


def _header(col: str) -> str:
    return {"uar": "UAR", "war": "WAR"}.get(col, col)


def to_markdown(rows: Sequence[Row], per_fold: Mapping[int, Mapping] | None = None,
                title: str = "", published: Mapping[str, Any] | None = None) -> str:
    """Markdown: one table for the last epoch, one for the best epoch.

    Figures in %; the std row is labelled as the sample std (ddof = 1).
    `published` (`published.for_config`): the original paper's UAR/WAR as a
    reference row of each table, with its source below.
    """
    out = []
    if title:
        out += [f"# {title}", ""]
    out += ["Figures in %. Mean = mean of the per-fold values (predictions are never "
            "pooled across folds); std = sample standard deviation across folds "
            "(ddof=1). Best epoch = chosen on the test split (no validation split "
            "exists), hence optimistic.", ""]
    for choice in EPOCH_CHOICES:
        sub = [r for r in rows if r["table"] == choice]
        if not sub:
            continue
        cols = [k for k in sub[0] if k not in ("table", "fold", "epoch")]
        if choice == "last":
            heading = "## Last epoch"
        else:
            crit = None
            if per_fold:
                crits = {rec["best"].get("criterion") for rec in per_fold.values()}
                crit = ", ".join(sorted(str(c) for c in crits))
            heading = "## Best epoch" + (f" (criterion: {crit})" if crit else "")
        out += [heading, "",
                "| table | fold | epoch | " + " | ".join(_header(c) for c in cols) + " |",
                "|---|---|---|" + "---|" * len(cols)]
        for r in sub:
            fold = {"mean": "mean", "std": STD_LABEL}.get(r["fold"], r["fold"])
            out.append(f"| {choice} | {fold} | {_fmt(r['epoch'])} | "
                       + " | ".join(_fmt(r[c]) for c in cols) + " |")
        if published:
            out.append(f"| {choice} | *{published['label']}* [1] |  | "
                       + " | ".join(_fmt(float(published[c])) if c in ("uar", "war") else ""
                                    for c in cols) + " |")
        out.append("")
    if published:
        out += [f"[1] Reference only, not a run of this library. Source: "
                f"{published['source']}."
                + (f" Epoch selection of the source: {published['selection']}."
                   if published.get("selection") else ""), ""]
    return "\n".join(out)


def to_csv(rows: Sequence[Row]) -> str:
    """CSV with columns table, fold, epoch and every metric column (union).

    The std row's `fold` is `std_sample_ddof1`; NaN is written as an empty cell.
    """
    cols: list[str] = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(cols)
    for r in rows:
        line = []
        for c in cols:
            v = r.get(c)
            if c == "fold" and v == "std":
                v = "std_sample_ddof1"
            if isinstance(v, float):
                v = "" if math.isnan(v) else repr(round(v, 6))
            line.append("" if v is None else v)
        writer.writerow(line)
    return buf.getvalue()


# ---------------------------------------------------------------------------
# Running.
# ---------------------------------------------------------------------------

def fold_dir(workdir: str, fold: int) -> str:
    """`WORKDIR/fold_<k>`."""
    return paths.join(workdir, f"fold_{int(fold)}")


def finished_result(directory: str) -> dict | None:
    """The run result in `directory/metrics.json` if the run finished, else None.

    A run writes `metrics.json` only after its last epoch (`train.py`); a
    stopped or crashed run has none (or one without a last evaluation).
    """
    path = paths.join(directory, "metrics.json")
    if not paths.isfile(path):
        return None
    try:
        result = json.loads(paths.read_text(path))
    except json.JSONDecodeError:
        return None
    if not (result.get("last") and result.get("best")):
        return None
    return result


def _is_main_process() -> bool:
    """True on process 0 of a multi-host run (only it writes the tables)."""
    if "jax" not in sys.modules:
        return True
    return sys.modules["jax"].process_index() == 0


Runner = Callable[[Any, str], Mapping[str, Any]]


def run_sweep(make_config: Callable[[int], Any], folds: Sequence[int], workdir: str, *,
              runner: Runner | None = None, log: Callable[[str], None] = print,
              title: str = "") -> tuple[dict[int, dict], list[Row]]:
    """Runs the folds in sequence (skipping finished ones) and writes the tables.

    Args:
        make_config: fold -> the config of that fold.
        folds: fold numbers, run in this order.
        workdir: sweep directory; fold k runs in `workdir/fold_k`.
        runner: `(config, fold_workdir) -> result` (default
            `train.train_and_evaluate`); tests pass a fake.
        log: progress messages.
        title: heading of `results.md`.

    Returns:
        `(per_fold, rows)`: `fold_record` of each fold and `summarize_folds` rows.
        Also writes `results.md`, `results.csv`, `results.json` in `workdir`.

    Raises:
        RuntimeError: a fold's run returned without finishing (e.g. stopped
            early); the sweep stops there, the finished folds stay on disk.
    """
    if runner is None:
        def runner(config, directory):
            # Imported on the first fold to train: reading back a finished sweep
            # (or grid) does not pay for JAX and TensorFlow.
            from audfer_jax import train  # pylint: disable=g-import-not-at-top
            return train.train_and_evaluate(config, directory)
    workdir = paths.resolve(workdir)
    if _is_main_process():
        paths.makedirs(workdir)
    per_fold: dict[int, dict] = {}
    for fold in folds:
        directory = fold_dir(workdir, fold)
        result = finished_result(directory)
        if result is not None:
            log(f"fold {fold}: finished earlier, read {paths.join(directory, 'metrics.json')}")
        else:
            log(f"fold {fold}: training in {directory}")
            result = dict(runner(make_config(fold), directory))
            if not (result.get("last") and result.get("best")):
                raise RuntimeError(f"fold {fold} in {directory} did not finish (result keys "
                                   f"{sorted(result)}); run the sweep again to resume it")
        per_fold[fold] = fold_record(result)
        rec = per_fold[fold]
        log(f"fold {fold}: last UAR {rec['last']['uar']:.2f} WAR {rec['last']['war']:.2f} | "
            f"best UAR {rec['best']['uar']:.2f} WAR {rec['best']['war']:.2f} "
            f"(epoch {rec['best']['epoch']})")
    rows = summarize_folds(per_fold)
    if not _is_main_process():
        return per_fold, rows
    from audfer_jax import published as published_lib  # pylint: disable=g-import-not-at-top
    reference = published_lib.for_config(make_config(folds[0])) if folds else None
    paths.write_text(paths.join(workdir, "results.md"),
                     to_markdown(rows, per_fold, title, reference))
    paths.write_text(paths.join(workdir, "results.csv"), to_csv(rows))
    paths.write_text(paths.join(workdir, "results.json"), json.dumps(
            {"std": "sample (ddof=1)", "per_fold": {str(k): v for k, v in per_fold.items()},
             "rows": [{k: (None if isinstance(v, float) and math.isnan(v) else v)
                       for k, v in r.items()} for r in rows]}, indent=2))
    return per_fold, rows


# ---------------------------------------------------------------------------
# Grids of variants.
# ---------------------------------------------------------------------------

def classify_axes(spec: str, axes: Sequence[grid_lib.Axis]) -> list[grid_lib.Axis]:
    """Marks each axis as a config argument of `spec`'s file or a config field.

    A key without a dot that the config file's `get_config(arg)` accepts is an
    argument (its values go into `FILE.py:...,KEY=V`, so the file's own logic
    runs, e.g. MAFW's prior); any other key is a field (`--config.KEY=V`).

    Raises:
        ValueError: a value the config file rejects for an argument key.
    """
    base = None
    out = []
    for axis in axes:
        is_arg = False
        arg_error = ""
        if "." not in axis.key:
            try:
                config_lib.load_config_file(config_lib.with_arg(spec, axis.key, axis.values[0]))
                is_arg = True
            except ValueError as e:
                arg_error = cli_errors.one_line(e)
                if f"unknown config argument {axis.key!r}" not in arg_error:
                    raise ValueError(f"--grid {axis.key}={axis.values[0]}: {arg_error}") from None
        if not is_arg:
            if base is None:
                base = grid_lib.flat_fields(config_lib.load_config_file(spec))
            if axis.key not in base:
                args_text = arg_error.partition("; ")[2].split("; did you mean")[0]
                raise ValueError(
                        f"--grid {axis.key}: neither a config argument of "
                        f"{spec.split('.py:')[0] + '.py' if '.py:' in spec else spec}"
                        + (f" ({args_text})" if args_text else "")
                        + " nor a config field"
                        + (hints.did_you_mean(axis.key, list(base)) or
                           " (a field is e.g. au.lam or optim.lr)"))
        out.append(grid_lib.Axis(axis.key, axis.values, is_arg))
    return out


def variant_config(spec: str, axes: Sequence[grid_lib.Axis], overrides, assignments,
                   fold: int):
    """The config of one grid point and fold: `spec` with the argument values and
    the fold, then the `--config.` overrides, then the grid's field values.

    Raises:
        ValueError: a config argument the file rejects, a grid field that does not
            exist or a value of the wrong type (one line naming the `--grid` entry).
    """
    kinds = {a.key: a.is_argument for a in axes}
    for key, value in assignments:
        if kinds[key]:
            spec = config_lib.with_arg(spec, key, value)
    try:
        config = config_lib.load_config_file(config_lib.with_fold(spec, fold))
    except ValueError as e:
        grid_args = ",".join(f"{k}={v}" for k, v in assignments if kinds[k])
        raise ValueError(f"--grid {grid_args}: {cli_errors.one_line(e)}") from None
    config_lib.apply_overrides(config, overrides)
    for key, value in assignments:
        if not kinds[key]:
            try:
                config_lib.apply_overrides(config, [(key, value)])
            except (KeyError, ValueError) as e:
                text = cli_errors.one_line(e).partition(": ")[2]
                raise ValueError(f"--grid {key}={value}: {text}") from None
    return config


def _variant_dir(workdir: str, variant: grid_lib.Variant, log) -> str:
    """`WORKDIR/<name>`, or the directory of an earlier run of the same experiment.

    A directory of another name whose `variant.json` has the same fingerprint
    (a grid extended by an axis renames its variants) is reused, so that its
    finished folds are not trained again.
    """
    own = paths.join(workdir, variant.name)
    if paths.isfile(paths.join(own, "variant.json")):
        return own
    for path in paths.glob(workdir, "*"):
        record = paths.join(path, "variant.json")
        if not paths.isfile(record):
            continue
        try:
            if json.loads(paths.read_text(record)).get("fingerprint") == variant.fingerprint:
                log(f"variant {variant.label()}: same experiment as {path}; reusing it")
                return path
        except json.JSONDecodeError:
            continue
    return own


def run_grid(variants: Sequence[grid_lib.Variant], make_config: Callable[[Any, int], Any],
             folds: Sequence[int], workdir: str, *, baseline: grid_lib.Variant,
             runner: Runner | None = None, log: Callable[[str], None] = print,
             title: str = "", criterion: str = "", merged: Sequence[str] = ()
             ) -> list[dict]:
    """Runs each variant's folds in turn (`run_sweep`) and writes the comparison.

    Args:
        variants: `grid.expand` output, in run order.
        make_config: `(variant, fold) -> config`.
        folds: fold numbers.
        workdir: sweep directory; variant v in `workdir/<v.name or reused>`.
        baseline: the variant the others are compared with.
        runner, log: as `run_sweep`.
        title: heading of `results.md` and `results.png`.
        criterion: best-epoch criterion for the headings.
        merged: lines describing merged grid points (printed in `results.md`).

    Returns:
        `comparison.build_tables` output. Writes `results.{md,csv,json,png}` to
        `workdir` (process 0); each variant's own tables and `variant.json` in
        its directory.
    """
    from audfer_jax import comparison  # pylint: disable=g-import-not-at-top
    workdir = paths.resolve(workdir)
    if _is_main_process():
        paths.makedirs(workdir)
    per_variant, labels, dirs = {}, {}, {}
    for i, v in enumerate(variants, 1):
        directory = _variant_dir(workdir, v, log)
        dirs[v.name] = directory
        log(f"variant {i}/{len(variants)}: {v.label()} in {directory}")
        record_path = paths.join(directory, "variant.json")
        if paths.isfile(record_path):
            try:
                recorded = json.loads(paths.read_text(record_path)).get("fingerprint")
            except json.JSONDecodeError:
                recorded = None
            if recorded != v.fingerprint:
                log(f"warning: {record_path} records another resolved config "
                    f"({recorded} != {v.fingerprint}: other --config. values than before?); "
                    "its finished folds are read back as they are")
        elif _is_main_process():
            # The first run of a variant records what it is; later runs (also of an
            # extended grid that reuses it under another name) leave it as it is.
            paths.makedirs(directory)
            record = {"name": v.name, "assignments": [list(a) for a in v.assignments],
                      "merged": [[list(a) for a in m] for m in v.merged],
                      "fingerprint": v.fingerprint}
            paths.write_text(record_path, json.dumps(record, indent=2))
        per_fold, _ = run_sweep(lambda fold, v=v: make_config(v, fold), folds, directory,
                                runner=runner, log=lambda m: log(f"  {m}"),
                                title=f"{title}: {v.label()}")
        per_variant[v.name] = per_fold
        labels[v.name] = v.label()
    # A reference row only when every variant is the same paper recipe on the same
    # dataset (a grid over `dataset=` or `--config.model` has no single reference).
    from audfer_jax import published as published_lib  # pylint: disable=g-import-not-at-top
    configs = [make_config(v, folds[0]) for v in variants]
    recipes = {(str(c.model), str(c.data.name)) for c in configs}
    published = published_lib.for_config(configs[0]) if len(recipes) == 1 else None
    tables = comparison.build_tables(per_variant, labels, baseline.name, published)
    if not _is_main_process():
        return tables
    paths.write_text(paths.join(workdir, "results.md"), comparison.to_markdown(
            tables, title=title, baseline_label=baseline.label(), criterion=criterion,
            merged=merged))
    paths.write_text(paths.join(workdir, "results.csv"), comparison.to_csv(tables))
    paths.write_text(paths.join(workdir, "results.json"), json.dumps(
            {"std": "sample (ddof=1)", "test": "paired t-test (scipy.stats.ttest_rel, "
             "two-sided) over folds", "baseline": baseline.name,
             "variants": {v.name: {"label": v.label(), "directory": dirs[v.name],
                                   "merged": [dict(m) for m in v.merged],
                                   "per_fold": {str(k): r for k, r in
                                                per_variant[v.name].items()}}
                          for v in variants},
             "tables": comparison.to_json(tables)}, indent=2))
    from audfer_jax import figures  # pylint: disable=g-import-not-at-top
    from audfer_jax.figures import sweep as sweep_figure  # pylint: disable=g-import-not-at-top
    fig = sweep_figure.results_figure(tables, title=title)
    figures.save(fig, paths.join(workdir, "results.png"))
    return tables


def _grid_main(args, overrides, folds) -> int:
    """`sweep --grid ...`: resolve and check every variant, run them, compare."""
    prog = "audfer-jax sweep"
    try:
        axes = grid_lib.parse_axes(args.grid)
        override_keys = {k for k, _ in overrides}
        for a in axes:
            if a.key in override_keys:
                raise ValueError(f"--grid {a.key} and --config.{a.key} both set {a.key}; "
                                 "keep one")
        axes = classify_axes(args.config, axes)

        def make(assign, fold):
            return variant_config(args.config, axes, overrides, assign, fold)

        # Every grid point of every fold resolves before anything trains.
        variants, merges = grid_lib.expand(axes, lambda a: make(a, folds[0]))
        for v in variants:
            for fold in folds[1:]:
                make(v.assignments, fold)
        if args.baseline:
            baseline = grid_lib.find_baseline(variants,
                                              grid_lib.parse_baseline(args.baseline, axes))
        else:
            baseline = variants[0]
    except (ValueError, KeyError, OSError) as e:
        return cli_errors.report(prog, e, status=2)
    merged_lines = []
    for kept, assign in merges:
        text = ", ".join(f"{k}={v}" for k, v in assign)
        merged_lines.append(f"{text} trains the same experiment as {kept.label()} "
                            f"(resolved configs equal): merged into {kept.name}")
    print(f"{len(variants)} variant(s) x {len(folds)} fold(s); baseline: {baseline.label()}"
          + ("" if args.baseline else " (the first variant; --baseline to choose)"))
    for line in merged_lines:
        print(f"merged: {line}")
    first = make(variants[0].assignments, folds[0])
    criterion = str(first.get("best_metric", "")) if hasattr(first, "get") else ""
    grid_text = " ".join(f"--grid {a.key}={','.join(a.values)}" for a in axes)
    workdir = paths.resolve(args.workdir)
    tables = run_grid(variants, lambda v, fold: make(v.assignments, fold), folds, workdir,
                      baseline=baseline, title=f"{args.config} {grid_text} (folds {args.folds})",
                      criterion=criterion, merged=merged_lines)
    from audfer_jax import comparison  # pylint: disable=g-import-not-at-top
    print(comparison.console_summary(tables))
    print(f"wrote {paths.join(workdir, 'results.md')}, results.csv, results.json, results.png")
    return 0


def main(argv: list[str]) -> int:
    """`audfer-jax sweep --config FILE.py:ARGS --folds 1-5 --workdir DIR [--config.x=y]`."""
    try:
        rest, overrides = config_lib.split_config_overrides(argv)
    except ValueError as e:
        return cli_errors.report("audfer-jax sweep", e, status=2)
    parser = cli_errors.ArgumentParser(
            prog="audfer-jax sweep",
            description="Train folds in sequence (resuming finished ones) and write "
                        "per-fold UAR/WAR with mean and sample std (ddof=1), last and "
                        "best epoch, to WORKDIR/results.{md,csv,json}.")
    parser.add_argument("--config", required=True,
                        help="configs/<backbone>.py:dataset=...,loss=... (fold is set per fold)")
    parser.add_argument("--folds", default="1-5", help="e.g. 1-5 or 1,3 (default 1-5)")
    parser.add_argument("--workdir", required=True, help="sweep directory (fold_k inside)")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                        help="a config argument (loss=ce,au) or field (au.lam=0.1,0.25) "
                             "with a comma list; repeat for more axes. Variants = their "
                             "product, duplicates merged; variant NAME in WORKDIR/NAME")
    parser.add_argument("--baseline", default="", metavar="KEY=V",
                        help="the variant the others are compared with fold by fold "
                             "(e.g. loss=ce; default: the first variant)")
    parser.epilog = "--config.key=value overrides apply to every fold's config."
    args = parser.parse_args(rest)
    for key, _ in overrides:
        if key in ("data.fold", "fold"):
            parser.error("the fold is set by --folds, not by --config.data.fold")
    if args.baseline and not args.grid:
        return cli_errors.report("audfer-jax sweep", cli_errors.UsageError(
                "--baseline needs --grid (a sweep without a grid has one variant)"), status=2)
    try:
        folds = parse_folds(args.folds)
        # Fail before the first fold trains if the config or an override is bad.
        config_lib.apply_overrides(config_lib.load_config_file(config_lib.with_fold(args.config, folds[0])), overrides)
    except (ValueError, KeyError, OSError) as e:
        return cli_errors.report("audfer-jax sweep", e, status=2)
    if args.grid:
        return _grid_main(args, overrides, folds)

    def make_config(fold: int):
        return config_lib.apply_overrides(config_lib.load_config_file(config_lib.with_fold(args.config, fold)), overrides)

    workdir = paths.resolve(args.workdir)
    _, rows = run_sweep(make_config, folds, workdir,
                        title=f"{args.config} (folds {args.folds})")
    print(to_markdown(rows))
    print(f"wrote {paths.join(workdir, 'results.md')}, results.csv, results.json")
    return 0
