"""`results.png` of a grid sweep: per variant the mean, the fold values and the std.

One panel per table of `comparison.build_tables` (UAR and WAR, last and best
epoch: a 2 x 2 grid, rows = epoch choice, columns = metric). In each panel a
variant is a wide mark at its mean with the sample std (ddof = 1) as an error
bar and its per-fold values as points (folds side by side in fold order); the
baseline sits on a shaded band and its tick label says "(baseline)"; a
paper's published figure, where there is one, is a dashed horizontal line.
"""

from __future__ import annotations

import math
import textwrap
from typing import Sequence

import numpy as np
from matplotlib import figure as mpl_figure

from audfer_jax import figures  # noqa: F401  (sets the Agg backend)

_BASE = "#fdae6b"
_POINT = "#08306b"


def results_figure(tables: Sequence[dict], *, title: str = "") -> mpl_figure.Figure:
    """Draws the comparison tables.

    Args:
        tables: `comparison.build_tables(...)` (figures in %).
        title: the figure's suptitle.

    Returns:
        The figure: axes in table order; in each, the line labelled
        "mean +- std" holds the n variants' means (y data), a `PathCollection`
        the fold points, a `LineCollection` the error bars (mean -+ std), a
        patch labelled "baseline" the baseline's band, and a dashed line
        (label "published") the published figure.
    """
    n_var = len(tables[0]["rows"]) if tables else 0
    ncols = 2
    nrows = max(1, math.ceil(len(tables) / ncols))
    width = max(8.0, 1.1 * n_var * ncols + 2.0)
    fig = mpl_figure.Figure(figsize=(width, 3.4 * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, t in zip(axes, tables):
        rows = t["rows"]
        x = np.arange(len(rows), dtype=np.float64)
        means = np.array([r["mean"] for r in rows])
        stds = np.array([0.0 if math.isnan(r["std"]) else r["std"] for r in rows])
        # Means as marks, not bars: the axis does not start at 0, and bars on a
        # cut axis exaggerate differences.
        for xi, r in zip(x, rows):
            if r["baseline"]:
                ax.axvspan(xi - 0.4, xi + 0.4, color=_BASE, alpha=0.35, zorder=0,
                           label="baseline")
        ax.errorbar(x, means, yerr=stds, fmt="none", ecolor="black", elinewidth=1.2,
                    capsize=5, zorder=2)
        ax.plot(x, means, linestyle="none", marker="_", markersize=28, markeredgewidth=2.5,
                color="black", zorder=2, label="mean +- std")
        k = len(t["folds"])
        offsets = (np.arange(k) - (k - 1) / 2) * (0.4 / max(k, 1))
        px = np.concatenate([xi + offsets for xi in x]) if k else np.zeros(0)
        py = np.concatenate([np.asarray(r["values"], np.float64) for r in rows]) if k \
            else np.zeros(0)
        ax.scatter(px, py, s=14, color=_POINT, zorder=3, label="folds")
        if t.get("published"):
            ax.axhline(t["published"]["value"], color="tab:red", linestyle="--",
                       linewidth=1.0, label="published", zorder=0)
        ax.set_xticks(x, [r["label"] + ("\n(baseline)" if r["baseline"] else "")
                          for r in rows], fontsize=8, rotation=15 if n_var > 3 else 0)
        metric = {"uar": "UAR", "war": "WAR"}[t["metric"]]
        ax.set_title(f"{metric}, {t['epoch']} epoch", fontsize=10)
        ax.set_ylabel(f"{metric} (%)")
        lo = float(np.nanmin(np.concatenate([py, means - stds]))) if len(py) else 0.0
        hi = float(np.nanmax(np.concatenate([py, means + stds]))) if len(py) else 100.0
        if t.get("published"):
            lo, hi = min(lo, t["published"]["value"]), max(hi, t["published"]["value"])
        pad = max(2.0, 0.15 * (hi - lo))
        ax.set_ylim(max(0.0, lo - pad), min(100.0, hi + pad))
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="best", framealpha=0.6)
    for ax in axes[len(tables):]:
        ax.set_visible(False)
    if title:
        # Wrapped to the figure width (about 11 characters per inch at 9 pt).
        title = "\n".join(textwrap.wrap(title, int(11 * width)))
        fig.suptitle(f"{title}\nwide marks: mean over folds; error bars: sample std (ddof=1); "
                     "points: folds", fontsize=9)
    return fig
