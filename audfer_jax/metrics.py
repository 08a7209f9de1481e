"""DFER metrics: confusion matrix, UAR, WAR, per-class recall, per-AU F1.

Definitions (datasets.md section 8): WAR (weighted average recall) = correct /
total, i.e. accuracy; UAR (unweighted average recall) = mean over classes of
per-class recall. The confusion-matrix and AU-count functions are pure and
jittable, so they can be summed across devices and steps; the ratios are then
taken once, on the totals (never a mean of per-batch means).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def _preds(logits_or_preds: Array) -> Array:
    x = jnp.asarray(logits_or_preds)
    return jnp.argmax(x, axis=-1) if x.ndim == 2 else x.astype(jnp.int32)


def confusion_matrix(logits_or_preds: Array, labels: Array, num_classes: int,
                     mask: Optional[Array] = None) -> Array:
    """Masked confusion matrix, jittable.

    Args:
      logits_or_preds: `[B, C]` logits/probabilities (argmax taken) or `[B] int`
        predicted classes.
      labels: `[B] int` true classes in `[0, num_classes)`.
      num_classes: C.
      mask: optional `[B]`, 0 for padded clips (they count nowhere).

    Returns:
      `[C, C] int32`, rows = true class, columns = predicted class.
    """
    preds = _preds(logits_or_preds)
    labels = jnp.asarray(labels, jnp.int32)
    m = (jnp.ones(labels.shape, jnp.int32) if mask is None
         else (jnp.asarray(mask) > 0).astype(jnp.int32))
    cm = jnp.zeros((num_classes, num_classes), jnp.int32)
    return cm.at[labels, preds].add(m, mode="drop")


def per_class_recall(cm) -> np.ndarray:
    """Recall of each class, `[C] float64`, from a `[C, C]` confusion matrix.

    Raises:
      ValueError: when a class has no clip (its recall, and UAR, are undefined;
        datasets.md section 8 makes that an error).
    """
    cm = np.asarray(cm, np.float64)
    support = cm.sum(1)
    if (support == 0).any():
        raise ValueError(f"class(es) {np.flatnonzero(support == 0).tolist()} have "
                         "no clip in the evaluated set; UAR is undefined")
    return np.diag(cm) / support


def uar(cm) -> float:
    """Unweighted average recall (mean per-class recall) in [0, 1]."""
    return float(per_class_recall(cm).mean())


def war(cm) -> float:
    """Weighted average recall (accuracy) in [0, 1]."""
    cm = np.asarray(cm, np.float64)
    total = cm.sum()
    if total == 0:
        raise ValueError("empty confusion matrix: no clip was evaluated")
    return float(np.trace(cm) / total)


def au_counts(au_logits: Array, au_targets: Array, mask: Optional[Array] = None,
              threshold: float = 0.0) -> Array:
    """Per-AU true positives, false positives and false negatives, jittable.

    Args:
      au_logits: `[B, A]` AU logits; predicted present where logit > `threshold`
        (0 = probability 0.5).
      au_targets: `[B, A]` AU presence in {0, 1}.
      mask: optional `[B]`, 0 for clips without AU labels or padding.

    Returns:
      `[A, 3] int32`: columns tp, fp, fn.
    """
    pred = jnp.asarray(au_logits) > threshold
    true = jnp.asarray(au_targets) > 0.5
    m = (jnp.ones(pred.shape[:1], bool) if mask is None
         else jnp.asarray(mask) > 0)[:, None]
    tp = jnp.sum(pred & true & m, axis=0)
    fp = jnp.sum(pred & ~true & m, axis=0)
    fn = jnp.sum(~pred & true & m, axis=0)
    return jnp.stack([tp, fp, fn], axis=-1).astype(jnp.int32)


def au_f1(counts) -> np.ndarray:
    """Per-AU F1 = 2tp / (2tp + fp + fn), `[A] float64`, from `au_counts` totals.

    An AU that is neither present nor predicted anywhere gets 0 (scikit-learn's
    `zero_division=0`).
    """
    c = np.asarray(counts, np.float64)
    tp, fp, fn = c[:, 0], c[:, 1], c[:, 2]
    den = 2 * tp + fp + fn
    return np.where(den > 0, 2 * tp / np.where(den > 0, den, 1), 0.0)


def summarize(cm, class_names, au_count_totals=None, au_names=None) -> dict:
    """All figures of one evaluation as a JSON-ready dict.

    Args:
      cm: `[C, C]` confusion matrix totals.
      class_names: C names, stored with the figures (datasets.md section 4).
      au_count_totals: optional `[A, 3]` totals of `au_counts`.
      au_names: A names for the AU F1 entries.

    Returns:
      {"uar", "war" (in %), "per_class_recall" {name: %}, "confusion_matrix"
      (list of lists), "class_names", and with AU counts "au_f1" {name: %} and
      "au_f1_mean"}.
    """
    cm = np.asarray(cm)
    recall = per_class_recall(cm)
    out = {
        "uar": 100.0 * float(recall.mean()),
        "war": 100.0 * war(cm),
        "per_class_recall": {n: 100.0 * float(r) for n, r in zip(class_names, recall)},
        "confusion_matrix": cm.astype(int).tolist(),
        "class_names": list(class_names),
        "num_clips": int(cm.sum()),
    }
    if au_count_totals is not None:
        f1 = au_f1(au_count_totals)
        names = au_names or [f"AU{i}" for i in range(len(f1))]
        out["au_f1"] = {n: 100.0 * float(v) for n, v in zip(names, f1)}
        out["au_f1_mean"] = 100.0 * float(f1.mean())
    return out


BEST_METRICS = ("war+uar", "uar", "war", "au_f1_mean")


def criterion(summary: Mapping[str, Any], name: str) -> float:
    """The best-epoch criterion value of an evaluation summary (higher is better).

    'war+uar' (default; the reference's "WAR+UAR at one epoch", datasets.md
    section 8), 'uar', 'war', 'au_f1_mean'.
    """
    if name == "war+uar":
        return float(summary["war"] + summary["uar"])
    if name in ("uar", "war", "au_f1_mean"):
        return float(summary[name])
    raise ValueError(f"unknown config.best_metric {name!r}; expected one of {BEST_METRICS}")
