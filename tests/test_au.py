"""Tests of audfer_jax.au against the spec's constants and NumPy loops."""

import json
from pathlib import Path

import numpy as np
import pytest

from audfer_jax import au

SPEC = json.loads((Path(au.__file__).parent / "au_data" / "au_prior.json").read_text())


def test_orders_match_spec():
    assert au.AU_NAMES == tuple(SPEC["au_order"])
    assert au.NUM_AUS == 18
    assert au.CLASS_ORDER == ("happy", "sad", "neutral", "angry", "surprise",
                              "disgust", "fear")
    assert au.REFERENCE_SCALE == SPEC["scale_in_reference_loss"] == 5.0
    assert au.REFERENCE_LAMBDA == SPEC["default_lambda"] == 0.25


@pytest.mark.parametrize("name", ["dfew", "dfew_v1", "ferv39k"])
def test_prior_rows_follow_class_order(name):
    w = au.prior(name)
    assert w.shape == (7, 18) and w.dtype == np.float32
    for i, c in enumerate(au.CLASS_ORDER):
        np.testing.assert_array_equal(w[i], np.float32(SPEC["prior"][name]["values"][c]))


def test_prior_spot_values():
    # Happy / AU12 (lip corner puller) dominates the happy row of the DFEW prior.
    w = au.prior("dfew")
    assert w[0, au.AU_NAMES.index("AU12")] == pytest.approx(0.8882934142237333)
    assert w[0].argmax() == au.AU_NAMES.index("AU12")
    np.testing.assert_array_equal(au.prior("uniform"), np.ones((7, 18)))
    with pytest.raises(ValueError, match="unknown prior"):
        au.prior("mafw")


@pytest.mark.parametrize("dataset", ["dfew", "ferv39k"])
def test_pos_weight_options(dataset):
    table = SPEC["pos_weight"][dataset]
    assert au.pos_weight(dataset, "none") is None
    g = au.pos_weight(dataset, "global")
    assert g.shape == (7, 18)
    for row in g:
        np.testing.assert_array_equal(row, np.float32(table["global"]))
    d = au.pos_weight(dataset, "distinct")
    for i, c in enumerate(au.CLASS_ORDER):
        np.testing.assert_array_equal(d[i], np.float32(table["distinct"][c]))
    m = au.pos_weight(dataset, "minor")
    for i, c in enumerate(au.CLASS_ORDER):
        # Every minor class uses its own dataset's distinct row, fear included
        # (the reference took fear from the wrong table).
        want = d[i] if c in ("surprise", "disgust", "fear") else np.ones(18)
        np.testing.assert_array_equal(m[i], want)
    m2 = au.pos_weight(dataset, "minor", minor_classes=("disgust",))
    assert (m2[au.CLASS_ORDER.index("fear")] == 1).all()


def test_pos_weight_errors():
    with pytest.raises(ValueError, match="no published pos_weight"):
        au.pos_weight("mafw", "global")
    with pytest.raises(ValueError, match="unknown pos_weight option"):
        au.pos_weight("dfew", "from_data")
    with pytest.raises(ValueError, match="unknown minor"):
        au.pos_weight("dfew", "minor", minor_classes=("contempt",))


def _random_labels(seed, n=200, c=7):
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.arange(c), rng.integers(0, c, n - c)])
    targets = (rng.random((n, 18)) < rng.random(18)).astype(np.float32)
    return targets, labels


def test_estimate_prior_against_loop():
    targets, labels = _random_labels(0)
    est = au.estimate_prior(targets, labels, 7)
    for c in range(7):
        rows = [targets[i] for i in range(len(labels)) if labels[i] == c]
        np.testing.assert_allclose(est[c], np.mean(rows, axis=0), rtol=1e-6)
    ref = au.prior("dfew")
    resc = au.estimate_prior(targets, labels, 7, rescale="reference")
    assert resc.min() == pytest.approx(ref.min(), rel=1e-6)
    assert resc.max() == pytest.approx(ref.max(), rel=1e-6)


def test_estimate_pos_weight_against_loop():
    targets, labels = _random_labels(1)
    mask = np.ones(len(labels))
    mask[:20] = 0  # these clips have no AU labels: they count nowhere
    g = au.estimate_pos_weight(targets, labels, 7, au_mask=mask)
    t = targets[20:]
    want = (len(t) - t.sum(0)) / np.maximum(t.sum(0), 1)
    for row in g:
        np.testing.assert_allclose(row, want, rtol=1e-6)
    per = au.estimate_pos_weight(targets, labels, 7, per_class=True)
    for c in range(7):
        tc = targets[labels == c]
        np.testing.assert_allclose(per[c], (len(tc) - tc.sum(0)) / np.maximum(tc.sum(0), 1),
                                   rtol=1e-6)


def test_estimators_reject_class_without_clips():
    targets, labels = _random_labels(2)
    labels = np.where(labels == 5, 0, labels)  # no disgust clip
    with pytest.raises(ValueError, match="disgust"):
        au.estimate_prior(targets, labels, 7, class_names=au.CLASS_ORDER)
    with pytest.raises(ValueError, match="no clip"):
        au.estimate_pos_weight(targets, labels, 7, per_class=True)
    with pytest.raises(ValueError, match=r"\[0, 7\)"):
        au.estimate_prior(targets, labels + 1, 7)
