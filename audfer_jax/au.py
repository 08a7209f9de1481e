"""AU knowledge of AU-DFER: the 18 AUs, the prior matrices and pos_weight tables.

The constants ship as package data (`au_data/au_prior.json`) and come from the
reference code of AU-DFER (F. Liu et al., arXiv 2507.07678;
github.com/Cross-Innovation-Lab/AU-DFER, files `Former-DFER_AU/main_DFEW.py`,
`Former-DFER_AU/main_FERV39K.py`, `M3DFEL_AU/solver_with_AU_weighted.py`,
`MAE-DFER_AU/engine_for_finetuning.py`), where they are pasted into each loss.
How the paper derived them is not public; they are data here. Rows of every
table follow `CLASS_ORDER` (DFEW's official labels 1..7 minus 1), columns
follow `AU_NAMES`.

Known defects of the reference that are NOT replicated here (listed in the
JSON under `known_reference_defects`):
  * the reference "minor" option takes the fear row from the wrong table; here
    every minor class uses its own dataset's "distinct" row;
  * the reference FERV39k "global" pos_weight is a copy of its "distinct"
    surprise row; it is shipped as found, and `estimate_pos_weight` (the
    library's `from_data` option) recomputes it from the training labels;
  * the reference MAE-DFER path applies the DFEW matrix to FERV39k; here the
    prior is chosen by name.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Optional

import numpy as np

try:  # Python >= 3.9 has importlib.resources.files; the backport is a dependency.
    from importlib.resources import files as _files
except ImportError:  # pragma: no cover
    from importlib_resources import files as _files

# The 18 OpenFace 2.0 presence AUs (`AUxx_c` columns), in OpenFace's order.
# Source: OpenFace 2.0 FeatureExtraction output; datasets.md section 6a.
AU_NAMES = ("AU01", "AU02", "AU04", "AU05", "AU06", "AU07", "AU09", "AU10",
            "AU12", "AU14", "AU15", "AU17", "AU20", "AU23", "AU25", "AU26",
            "AU28", "AU45")
NUM_AUS = len(AU_NAMES)

# FACS names of the AUs above. Source: P. Ekman, W. V. Friesen & J. C. Hager,
# Facial Action Coding System: the Manual (2002; first edition Ekman &
# Friesen 1978), table of single action units.
FACS_NAMES = {
        "AU01": "inner brow raiser", "AU02": "outer brow raiser", "AU04": "brow lowerer",
        "AU05": "upper lid raiser", "AU06": "cheek raiser", "AU07": "lid tightener",
        "AU09": "nose wrinkler", "AU10": "upper lip raiser", "AU12": "lip corner puller",
        "AU14": "dimpler", "AU15": "lip corner depressor", "AU17": "chin raiser",
        "AU20": "lip stretcher", "AU23": "lip tightener", "AU25": "lips part",
        "AU26": "jaw drop", "AU28": "lip suck", "AU45": "blink"}


def au_label(name: str) -> str:
    """`"AU01"` -> `"AU1 inner brow raiser"` (FACS number and name, `FACS_NAMES`)."""
    number = f"AU{int(name[2:])}" if name[:2] == "AU" and name[2:].isdigit() else name
    facs = FACS_NAMES.get(name)
    return f"{number} {facs}" if facs else number

# Row order of every matrix: DFEW's official labels 1..7 minus 1.
CLASS_ORDER = ("happy", "sad", "neutral", "angry", "surprise", "disgust", "fear")

# The reference multiplies the prior by 5 inside the loss (`weight = 5 * W[y]`).
REFERENCE_SCALE = 5.0
# The only lambda of the reference code: (1 - 0.25) * CE + 0.25 * L_AU.
REFERENCE_LAMBDA = 0.25
# Default minor classes of the "minor" pos_weight option (reference code).
DEFAULT_MINOR_CLASSES = ("surprise", "disgust", "fear")

PRIOR_NAMES = ("dfew", "dfew_v1", "ferv39k", "uniform")
POS_WEIGHT_OPTIONS = ("none", "global", "distinct", "minor")


@functools.lru_cache(maxsize=1)
def _table() -> dict:
    text = _files("audfer_jax").joinpath("au_data", "au_prior.json").read_text()
    data = json.loads(text)
    if tuple(data["au_order"]) != AU_NAMES or tuple(data["class_order"]) != CLASS_ORDER:
        raise RuntimeError("au_prior.json: AU or class order differs from the "
                           "library's; the package data is corrupt")
    return data


def _rows(values: dict) -> np.ndarray:
    return np.asarray([values[c] for c in CLASS_ORDER], dtype=np.float32)


def prior(name: str) -> np.ndarray:
    """The AU-expression prior matrix W, before the reference's x5 scale.

    Args:
      name: `dfew` (the final DFEW matrix, default for DFEW), `dfew_v1` (an
        earlier DFEW matrix, for ablations), `ferv39k` (its AU28 and AU45
        columns are a constant fill value in the reference), or `uniform` (all
        ones: every AU weighs the same, an ablation baseline).

    Returns:
      `[7, 18] float32`, rows in `CLASS_ORDER`, columns in `AU_NAMES`. For MAFW
      (11 classes) there is no published matrix: use `estimate_prior`.

    Raises:
      ValueError: for an unknown name.
    """
    if name == "uniform":
        return np.ones((len(CLASS_ORDER), NUM_AUS), np.float32)
    priors = _table()["prior"]
    if name not in priors:
        raise ValueError(f"unknown prior {name!r}; expected one of {PRIOR_NAMES} "
                         "(or estimate one from AU labels with estimate_prior)")
    return _rows(priors[name]["values"])


def pos_weight(dataset: str, option: str,
               minor_classes: Sequence[str] = DEFAULT_MINOR_CLASSES
               ) -> Optional[np.ndarray]:
    """The reference's BCE pos_weight table for `dataset`, as a per-class table.

    The loss indexes the table by the true (or soft) expression label, so every
    option is returned as `[7, 18] float32` (rows `CLASS_ORDER`):
      * `none`: None (no pos_weight, i.e. 1 everywhere);
      * `global`: the dataset's per-AU negative/positive ratio, the same in every
        row;
      * `distinct`: one ratio row per expression class;
      * `minor`: the `distinct` row for `minor_classes`, 1 for the other classes.
        The reference takes the fear row from the wrong table; here every
        minor class uses its own dataset's row (au_prior.json,
        known_reference_defects).

    Args:
      dataset: `dfew` or `ferv39k` (`demo` reads as `dfew`). Other datasets have
        no published table: use `estimate_pos_weight`.
      option: one of `POS_WEIGHT_OPTIONS`.
      minor_classes: class names of `CLASS_ORDER` for the `minor` option.

    Raises:
      ValueError: for an unknown dataset, option or class name.
    """
    if option not in POS_WEIGHT_OPTIONS:
        raise ValueError(f"unknown pos_weight option {option!r}; expected one of "
                         f"{POS_WEIGHT_OPTIONS} (or 'from_data' via "
                         "estimate_pos_weight)")
    if option == "none":
        return None
    key = "dfew" if dataset.lower() == "demo" else dataset.lower()
    tables = _table()["pos_weight"]
    if key not in tables:
        raise ValueError(f"no published pos_weight for dataset {dataset!r} (have "
                         f"{sorted(tables)}); estimate one from the training AU "
                         "labels with estimate_pos_weight")
    table = tables[key]
    if option == "global":
        row = np.asarray(table["global"], np.float32)
        return np.tile(row[None], (len(CLASS_ORDER), 1))
    distinct = _rows(table["distinct"])
    if option == "distinct":
        return distinct
    unknown = [c for c in minor_classes if c not in CLASS_ORDER]
    if unknown:
        raise ValueError(f"unknown minor class(es) {unknown}; expected names of "
                         f"{CLASS_ORDER}")
    out = np.ones_like(distinct)
    for c in minor_classes:
        i = CLASS_ORDER.index(c)
        out[i] = distinct[i]
    return out


def _check_labels(au_targets, labels, num_classes, au_mask):
    au_targets = np.asarray(au_targets, np.float64)
    labels = np.asarray(labels)
    if au_targets.ndim != 2 or au_targets.shape[1] != NUM_AUS:
        raise ValueError(f"au_targets must be [N, {NUM_AUS}], got {au_targets.shape}")
    if labels.shape != (au_targets.shape[0],):
        raise ValueError(f"labels must be [N] = [{au_targets.shape[0]}], got "
                         f"{labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got "
                         f"[{labels.min()}, {labels.max()}]")
    m = (np.ones(labels.shape) if au_mask is None
         else np.asarray(au_mask, np.float64).reshape(labels.shape))
    return au_targets, labels.astype(np.int64), m


def _per_class(values, labels, num_classes, m, class_names):
    """Sums of `values [N, A]` over the clips of each class, and clip counts."""
    onehot = np.eye(num_classes)[labels] * m[:, None]          # [N, C]
    counts = onehot.sum(0)                                      # [C]
    empty = [class_names[c] if class_names else c
             for c in range(num_classes) if counts[c] == 0]
    if empty:
        raise ValueError(f"class(es) {empty} have no clip with AU labels; a "
                         "per-class estimate needs at least one clip per class")
    return onehot.T @ values, counts


def estimate_prior(au_targets, labels, num_classes: int, *, au_mask=None,
                   rescale: str = "none",
                   class_names: Optional[Sequence[str]] = None) -> np.ndarray:
    """Estimates an AU-expression matrix as P(AU present | expression).

    This is the library's `prior = "from_data"` (au_dfer_method.md section 4):
    it gives MAFW and user datasets a prior where none is published.

    Args:
      au_targets: `[N, 18]` clip-level AU presence in {0, 1}.
      labels: `[N] int` expression labels in `[0, num_classes)`.
      num_classes: C.
      au_mask: optional `[N]`, 1 where the clip has AU labels.
      rescale: `none`, or `reference`: map the estimate affinely onto the value
        range of the reference `dfew` matrix (about 0.11 .. 0.89), so that the
        reference's x5 scale and lambda keep their meaning.
      class_names: optional names used in error messages.

    Returns:
      `[C, 18] float32`.

    Raises:
      ValueError: on bad shapes, labels out of range, or a class without clips.
    """
    au_targets, labels, m = _check_labels(au_targets, labels, num_classes, au_mask)
    sums, counts = _per_class(au_targets, labels, num_classes, m, class_names)
    est = sums / counts[:, None]
    if rescale == "reference":
        ref = prior("dfew")
        lo, hi = est.min(), est.max()
        span = hi - lo if hi > lo else 1.0
        est = ref.min() + (est - lo) / span * (ref.max() - ref.min())
    elif rescale != "none":
        raise ValueError(f"unknown rescale {rescale!r}; expected 'none' or 'reference'")
    return est.astype(np.float32)


def estimate_pos_weight(au_targets, labels, num_classes: int, *,
                        per_class: bool = False, au_mask=None,
                        class_names: Optional[Sequence[str]] = None) -> np.ndarray:
    """Estimates BCE pos_weight as the negative/positive clip ratio of each AU.

    This is the library's `pos_weight = "from_data"` (au_dfer_method.md
    section 4), the same statistic as the reference's tables; an AU with no
    positive clip counts one positive, so its ratio stays finite.

    Args:
      au_targets: `[N, 18]` clip-level AU presence in {0, 1}.
      labels: `[N] int` expression labels in `[0, num_classes)`.
      num_classes: C.
      per_class: False for one global ratio per AU, True for one per class.
      au_mask: optional `[N]`, 1 where the clip has AU labels.
      class_names: optional names used in error messages.

    Returns:
      `[C, 18] float32`: the global row repeated C times, or the per-class rows.

    Raises:
      ValueError: on bad shapes, labels out of range, or (per class, and
        globally when no clip has AU labels) a class without clips.
    """
    au_targets, labels, m = _check_labels(au_targets, labels, num_classes, au_mask)
    if per_class:
        pos, counts = _per_class(au_targets, labels, num_classes, m, class_names)
        neg = counts[:, None] - pos
    else:
        if m.sum() == 0:
            raise ValueError("no clip has AU labels; cannot estimate pos_weight")
        pos = (au_targets * m[:, None]).sum(0, keepdims=True)
        neg = m.sum() - pos
        pos, neg = (np.repeat(x, num_classes, 0) for x in (pos, neg))
    return (neg / np.maximum(pos, 1.0)).astype(np.float32)
