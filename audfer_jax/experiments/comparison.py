"""The comparison tables of a grid sweep: every variant against a baseline, fold by fold.

One table per metric and epoch choice (UAR and WAR; last epoch and best epoch,
never mixed): per variant the per-fold values, their mean and sample std
(ddof = 1), and against the baseline the per-fold differences, their mean and
sample std, the number of folds improved and a paired t-test over folds
(`stats.paired_comparison`). Where the config is a paper recipe on a paper
dataset, the original paper's figure is a reference row (`published`), never
part of any statistic. Rendered as Markdown, CSV (one row per table x
variant) and a JSON-able dict; figures in %.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any, Mapping, Optional, Sequence

from audfer_jax.experiments import stats

EPOCH_CHOICES = ("last", "best")
METRICS = ("uar", "war")
HEADERS = {"uar": "UAR", "war": "WAR"}


def build_tables(per_variant: Mapping[str, Mapping[int, Mapping]],
                 labels: Mapping[str, str], baseline: Optional[str],
                 published: Optional[Mapping[str, Any]] = None) -> list[dict]:
    """The four comparison tables.

    Args:
        per_variant: `{variant name: {fold: folds.fold_record(...)}}`, in the
            order the tables list the variants; every variant has the same folds.
        labels: `{variant name: "loss=au, au.lam=0.25"}`.
        baseline: the baseline's variant name, or None (no comparison columns).
        published: `published.for_config(...)` or None.

    Returns:
        `[{"epoch": "last"|"best", "metric": "uar"|"war", "folds": [k...],
        "rows": [{"variant", "label", "baseline": bool, "values": [per fold],
        "mean", "std", "vs_baseline": stats.paired_comparison(...) | None}],
        "published": {"label", "value", "folds"?, "source", "selection"} | None}]`.

    Raises:
        ValueError: variants with different folds, or an unknown baseline.
    """
    names = list(per_variant)
    if not names:
        raise ValueError("no variant to compare")
    folds = sorted(per_variant[names[0]])
    for n in names:
        if sorted(per_variant[n]) != folds:
            raise ValueError(f"variant {n} has folds {sorted(per_variant[n])}, "
                             f"{names[0]} has {folds}: a paired comparison needs the same folds")
    if baseline is not None and baseline not in per_variant:
        raise ValueError(f"baseline {baseline!r} is not among the variants")
    tables = []
    for epoch in EPOCH_CHOICES:
        for metric in METRICS:
            values = {n: [float(per_variant[n][k][epoch][metric]) for k in folds]
                      for n in names}
            rows = []
            for n in names:
                vs = None
                if baseline is not None and n != baseline:
                    vs = stats.paired_comparison(values[baseline], values[n])
                rows.append({"variant": n, "label": labels.get(n, n),
                             "baseline": n == baseline, "values": values[n],
                             "mean": sum(values[n]) / len(values[n]),
                             "std": stats.sample_std(values[n]), "vs_baseline": vs})
            pub = None
            if published:
                idx = METRICS.index(metric)
                pub_folds = {int(k): v[idx] for k, v in (published.get("folds") or {}).items()}
                pub = {"label": published["label"], "value": float(published[metric]),
                       "folds": [pub_folds.get(k) for k in folds] if pub_folds else None,
                       "source": published["source"], "selection": published.get("selection")}
            tables.append({"epoch": epoch, "metric": metric, "folds": folds, "rows": rows,
                           "published": pub})
    return tables


def _f(x: Optional[float], signed: bool = False, digits: int = 2) -> str:
    if x is None:
        return ""
    if isinstance(x, float) and math.isnan(x):
        return "n/a"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def _p(p: float) -> str:
    if math.isnan(p):
        return "n/a"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def to_markdown(tables: Sequence[dict], *, title: str = "", baseline_label: str = "",
                criterion: str = "", merged: Sequence[str] = ()) -> str:
    """Markdown: a note on the statistics, then one table per epoch x metric."""
    n = len(tables[0]["folds"]) if tables else 0
    out = [f"# {title}", ""] if title else []
    out += ["Figures in %. Mean = mean of the per-fold values (predictions are never pooled "
            "across folds); std = sample standard deviation across folds (ddof=1). "
            f"d = variant - baseline on the same fold (baseline: {baseline_label or 'none'}); "
            "improved = folds with d > 0; t, p = paired t-test over folds "
            f"(scipy.stats.ttest_rel, two-sided, {max(n - 1, 0)} degrees of freedom). "
            f"With {n} folds the test has little power: a real effect of the size of the "
            "fold-to-fold spread of d is often not significant, and the folds' training "
            "sets overlap, so read p as a guide. Best epoch = one epoch per fold chosen on "
            "the test split (no validation split exists), hence optimistic.", ""]
    for m in merged:
        out += [f"- merged: {m}"]
    if merged:
        out.append("")
    for t in tables:
        folds = t["folds"]
        heading = f"## {HEADERS[t['metric']]}, {t['epoch']} epoch"
        if t["epoch"] == "best" and criterion:
            heading += f" (criterion: {criterion})"
        cols = ["variant"] + [f"fold {k}" for k in folds] + [
                "mean", "std (ddof=1)", "d per fold", "mean d", "std d (ddof=1)",
                "improved", "t", "p (paired t)"]
        out += [heading, "", "| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
        for r in t["rows"]:
            name = r["label"] + (" **(baseline)**" if r["baseline"] else "")
            cells = [name] + [_f(v) for v in r["values"]] + [_f(r["mean"]), _f(r["std"])]
            vs = r["vs_baseline"]
            if vs is None:
                cells += ["", "", "", "", "", ""]
            else:
                cells += [" / ".join(_f(d, signed=True) for d in vs["diffs"]),
                          _f(vs["mean_diff"], signed=True), _f(vs["std_diff"]),
                          f"{vs['improved']}/{vs['n']}", _f(vs["t"]), _p(vs["p"])]
            out.append("| " + " | ".join(cells) + " |")
        pub = t["published"]
        if pub:
            fold_cells = [_f(v) for v in pub["folds"]] if pub["folds"] else [""] * len(folds)
            out.append("| " + " | ".join([f"*{pub['label']}* [1]"] + fold_cells
                                         + [_f(pub["value"])] + [""] * 7) + " |")
        out.append("")
    pub = next((t["published"] for t in tables if t["published"]), None)
    if pub:
        out += [f"[1] Reference only, not a run of this library and in no statistic. "
                f"Source: {pub['source']}."
                + (f" Epoch selection of the source: {pub['selection']}." if pub["selection"]
                   else ""), ""]
    return "\n".join(out)


def to_csv(tables: Sequence[dict]) -> str:
    """CSV, one row per table x variant (plus the published row).

    Columns: epoch, metric, variant, label, baseline, fold_<k>..., mean,
    std_sample_ddof1, diff_fold_<k>..., diff_mean, diff_std_sample_ddof1,
    folds_improved, n_folds, t, p_two_sided, test, source. NaN and absent
    values are empty cells.
    """
    folds = tables[0]["folds"] if tables else []
    cols = (["epoch", "metric", "variant", "label", "baseline"]
            + [f"fold_{k}" for k in folds] + ["mean", "std_sample_ddof1"]
            + [f"diff_fold_{k}" for k in folds]
            + ["diff_mean", "diff_std_sample_ddof1", "folds_improved", "n_folds", "t",
               "p_two_sided", "test", "source"])

    def cell(v):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        return repr(round(v, 6)) if isinstance(v, float) else v

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for t in tables:
        for r in t["rows"]:
            vs = r["vs_baseline"] or {}
            diffs = vs.get("diffs") or [None] * len(folds)
            w.writerow([cell(x) for x in [t["epoch"], t["metric"], r["variant"], r["label"],
                                          int(r["baseline"]), *r["values"], r["mean"], r["std"],
                                          *diffs, vs.get("mean_diff"), vs.get("std_diff"),
                                          vs.get("improved"), vs.get("n"), vs.get("t"),
                                          vs.get("p"), vs.get("test"), None]])
        pub = t["published"]
        if pub:
            pf = pub["folds"] or [None] * len(folds)
            w.writerow([cell(x) for x in [t["epoch"], t["metric"], "published", pub["label"], 0,
                                          *pf, pub["value"], None, *([None] * len(folds)),
                                          None, None, None, None, None, None, None,
                                          pub["source"]]])
    return buf.getvalue()


def to_json(tables: Sequence[dict]) -> list[dict]:
    """`tables` with NaN as None (JSON has no NaN)."""
    def clean(x):
        if isinstance(x, float) and math.isnan(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list):
            return [clean(v) for v in x]
        return x
    return [clean(t) for t in tables]


def console_summary(tables: Sequence[dict]) -> str:
    """A few lines per table: mean +- std per variant and, against the baseline,
    mean d +- std d, folds improved and p."""
    lines = []
    for t in tables:
        lines.append(f"{HEADERS[t['metric']]} {t['epoch']} epoch (mean +- sample std over "
                     f"{len(t['folds'])} folds):")
        width = max(len(r["label"]) for r in t["rows"])
        for r in t["rows"]:
            s = f"  {r['label']:<{width}}  {_f(r['mean'])} +- {_f(r['std'])}"
            vs = r["vs_baseline"]
            if r["baseline"]:
                s += "  (baseline)"
            elif vs is not None:
                s += (f"  d {_f(vs['mean_diff'], signed=True)} +- {_f(vs['std_diff'])}, "
                      f"improved {vs['improved']}/{vs['n']}, paired t p={_p(vs['p'])}")
            lines.append(s)
        if t["published"]:
            lines.append(f"  {t['published']['label']}: {_f(t['published']['value'])}")
    return "\n".join(lines)
