"""The tables of a sweep: per-fold rows, their mean and sample std, as Markdown and CSV.

Evaluation protocol (../shared/spec/datasets.md section 8): DFEW and MAFW are
scored per fold and the figures are the **mean over folds of the per-fold
values**, reported together with every per-fold value; predictions are never
pooled across folds. Each run has two figures that are never mixed: the
last-epoch evaluation and the best epoch (one epoch chosen by the run's
criterion, default WAR+UAR, picked on the test split, hence optimistic). Every
table is labelled "last" or "best". The spread is the **sample** standard
deviation across folds (ddof = 1, divisor k - 1), undefined (NaN, printed
"n/a") for a single fold.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any, Mapping, Sequence

import numpy as np

from audfer_jax.experiments import stats

EPOCH_CHOICES = ("last", "best")
STD_LABEL = "std (sample, ddof=1)"

Row = dict[str, Any]


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
    """The figure of metric column `col` (`uar`, `war`, `recall/<class>`) in `entry`."""
    if col.startswith("recall/"):
        return float(entry["per_class_recall"][col[len("recall/"):]])
    return float(entry[col])


def summarize_folds(per_fold: Mapping[int, Mapping[str, Any]]) -> list[Row]:
    """Per-fold rows plus mean and sample std, for the last and the best epoch.

    Args:
        per_fold: `{fold: {"last": {"uar", "war", "epoch"?, "per_class_recall"?},
            "best": {...}}}` (`folds.fold_record` of each fold; figures in %).

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
                     **{c: stats.sample_std(values[c]) for c in cols}})
    return rows


def _fmt(x: Any) -> str:
    """A table cell: 2 decimals for a figure, "n/a" for NaN, "" for None."""
    if x is None:
        return ""
    if isinstance(x, float):
        return "n/a" if math.isnan(x) else f"{x:.2f}"
    return str(x)


def _header(col: str) -> str:
    """The column heading of metric column `col` (`uar` -> `UAR`)."""
    return {"uar": "UAR", "war": "WAR"}.get(col, col)


def _table_heading(choice: str, per_fold: Mapping[int, Mapping] | None) -> str:
    """`## Last epoch`, or `## Best epoch (criterion: ...)` with the folds' criteria."""
    if choice == "last":
        return "## Last epoch"
    crit = None
    if per_fold:
        crits = {rec["best"].get("criterion") for rec in per_fold.values()}
        crit = ", ".join(sorted(str(c) for c in crits))
    return "## Best epoch" + (f" (criterion: {crit})" if crit else "")


def _markdown_table(choice: str, sub: Sequence[Row], heading: str,
                    published: Mapping[str, Any] | None) -> list[str]:
    """The lines of one epoch choice's table (heading, rows, reference row, blank)."""
    cols = [k for k in sub[0] if k not in ("table", "fold", "epoch")]
    out = [heading, "",
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
    return out


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
        if sub:
            out += _markdown_table(choice, sub, _table_heading(choice, per_fold), published)
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


def to_json(per_fold: Mapping[int, Mapping], rows: Sequence[Row]) -> dict:
    """`results.json` of a sweep: the per-fold records and the rows, NaN as None."""
    return {"std": "sample (ddof=1)", "per_fold": {str(k): v for k, v in per_fold.items()},
            "rows": [{k: (None if isinstance(v, float) and math.isnan(v) else v)
                      for k, v in r.items()} for r in rows]}
