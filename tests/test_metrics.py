"""Tests of audfer_jax.metrics on hand-computed confusion matrices."""

import jax
import numpy as np
import pytest

from audfer_jax import metrics


def test_confusion_matrix_by_hand():
    # 3 classes; true/pred pairs written out, last two rows are padding.
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 1, 0])
    preds = np.array([0, 1, 0, 1, 2, 2, 2, 0, 2, 0, 2])
    mask = np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0])
    cm = jax.jit(metrics.confusion_matrix, static_argnums=2)(preds, labels, 3, mask)
    want = np.array([[2, 1, 0],
                     [0, 1, 1],
                     [1, 0, 3]])
    np.testing.assert_array_equal(np.asarray(cm), want)
    # Class recalls 2/3, 1/2, 3/4 -> UAR = (2/3 + 1/2 + 3/4) / 3; WAR = 6/9.
    assert metrics.uar(want) == pytest.approx((2 / 3 + 1 / 2 + 3 / 4) / 3)
    assert metrics.war(want) == pytest.approx(6 / 9)
    np.testing.assert_allclose(metrics.per_class_recall(want), [2 / 3, 1 / 2, 3 / 4])


def test_confusion_from_logits_and_summary():
    logits = np.array([[3.0, 0.0], [0.0, 1.0], [2.0, 1.0], [0.0, 5.0]])
    labels = np.array([0, 1, 1, 1])
    cm = metrics.confusion_matrix(logits, labels, 2)
    np.testing.assert_array_equal(np.asarray(cm), [[1, 0], [1, 2]])
    s = metrics.summarize(cm, ["a", "b"])
    assert s["uar"] == pytest.approx(100 * (1 + 2 / 3) / 2)
    assert s["war"] == pytest.approx(75.0)
    assert s["per_class_recall"] == pytest.approx({"a": 100.0, "b": 200 / 3})
    assert s["class_names"] == ["a", "b"] and s["num_clips"] == 4


def test_uar_rejects_class_without_clips():
    with pytest.raises(ValueError, match=r"class\(es\) \[1\]"):
        metrics.uar(np.array([[3, 0], [0, 0]]))


def test_au_f1_by_hand():
    # AU0: tp 2, fp 1, fn 1 -> F1 = 4/6; AU1: never present nor predicted -> 0;
    # AU2: tp 0, fp 0, fn 2 -> 0. Row 4 is masked out.
    logits = np.array([[1, -1, -1], [1, -1, -1], [1, -1, -1], [-1, -1, -1], [5, 5, 5.]])
    targets = np.array([[1, 0, 1], [1, 0, 0], [0, 0, 1], [1, 0, 0], [0, 0, 0.]])
    mask = np.array([1, 1, 1, 1, 0])
    counts = metrics.au_counts(logits, targets, mask)
    np.testing.assert_array_equal(np.asarray(counts), [[2, 1, 1], [0, 0, 0], [0, 0, 2]])
    np.testing.assert_allclose(metrics.au_f1(counts), [4 / 6, 0.0, 0.0])
