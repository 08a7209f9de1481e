"""Statistics over folds: sample spread and the paired comparison of two variants.

Cross-validation folds pair naturally: fold k of a variant and fold k of the
baseline train and test on the same clips, so the comparison uses the
per-fold differences (fold-to-fold spread on DFEW is often larger than the
effect being measured). The test is Student's paired t-test
(`scipy.stats.ttest_rel`, two-sided): t = mean(d) / (std(d, ddof=1) / sqrt(n))
with n - 1 degrees of freedom. With five folds it has little power: a true
mean difference equal to the std of the differences reaches p < 0.05 in about
40 % of experiments (noncentral t, 4 degrees of freedom, noncentrality sqrt(5);
about 18 % with three folds). The folds' train sets overlap, so the differences are not
independent either (Bouckaert & Frank 2004; Nadeau & Bengio 2003): read p as
a guide, not a verdict.
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np

TEST_NAME = "paired t-test (scipy.stats.ttest_rel, two-sided)"


def sample_std(values: Sequence[float]) -> float:
    """Sample standard deviation (ddof = 1, divisor n - 1); NaN for n < 2."""
    x = np.asarray(values, np.float64)
    return float(np.std(x, ddof=1)) if x.size >= 2 else float("nan")


def paired_comparison(baseline: Sequence[float], variant: Sequence[float]) -> dict:
    """Per-fold differences `variant - baseline` and the paired t-test over folds.

    Args:
        baseline: `[n]` per-fold values of the baseline (e.g. UAR in %), float.
        variant: `[n]` the same folds of the variant, same order and units.

    Returns:
        `{"diffs": [n] list, "mean_diff", "std_diff" (sample, ddof = 1; NaN for
        n < 2), "improved" (folds with a difference > 0), "n", "t", "p"
        (two-sided; NaN for n < 2 or when every difference is equal, where t is
        undefined or infinite), "test": TEST_NAME}`; figures in the units of
        the inputs.

    Raises:
        ValueError: the two have different lengths or are empty.
    """
    a = np.asarray(baseline, np.float64)
    b = np.asarray(variant, np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired comparison needs two equal, non-empty fold lists; got "
                         f"{a.shape} and {b.shape}")
    d = b - a
    t = p = float("nan")
    if d.size >= 2 and np.ptp(d) > 0:
        from scipy import stats as sp_stats  # SciPy ships with JAX; imported on use
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            res = sp_stats.ttest_rel(b, a)
        t, p = float(res.statistic), float(res.pvalue)
        if not (math.isfinite(t) and math.isfinite(p)):
            t = p = float("nan")
    return {"diffs": [float(x) for x in d], "mean_diff": float(d.mean()),
            "std_diff": sample_std(d), "improved": int(np.sum(d > 0)), "n": int(d.size),
            "t": t, "p": p, "test": TEST_NAME}
