"""Tests of audfer_jax.losses against NumPy versions of the PyTorch losses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from audfer_jax import au, losses


def torch_bce_with_logits_mean(x, y, weight, pos_weight):
    """NumPy transcription of PyTorch's BCEWithLogitsLoss(weight, pos_weight,
    reduction='mean') formula (aten binary_cross_entropy_with_logits), in
    float64: (1 - y) x + (1 + (pw - 1) y) (log1p(exp(-|x|)) + max(-x, 0))."""
    x, y = np.float64(x), np.float64(y)
    pw = np.ones_like(x) if pos_weight is None else np.broadcast_to(pos_weight, x.shape)
    log_weight = (pw - 1.0) * y + 1.0
    loss = (1.0 - y) * x + log_weight * (np.log1p(np.exp(-np.abs(x))) + np.maximum(-x, 0.0))
    return np.mean(loss * weight)


def torch_cross_entropy_mean(logits, labels, smoothing=0.0):
    """NumPy version of PyTorch's CrossEntropyLoss(label_smoothing) mean."""
    logits = np.float64(logits)
    logp = logits - logits.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    c = logits.shape[1]
    nll = -logp[np.arange(len(labels)), labels]
    smooth = -logp.mean(1)
    return np.mean((1 - smoothing) * nll + smoothing * smooth)


def batch(seed, b=12, c=7, a=18):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(b, c)).astype(np.float32) * 3
    au_logits = rng.normal(size=(b, a)).astype(np.float32) * 3
    labels = rng.integers(0, c, b).astype(np.int32)
    au_targets = (rng.random((b, a)) < 0.3).astype(np.float32)
    return logits, au_logits, labels, au_targets


@pytest.mark.parametrize("option", ["none", "global", "distinct", "minor"])
@pytest.mark.parametrize("dataset", ["dfew", "ferv39k"])
def test_au_bce_equals_torch_formula(option, dataset):
    _, z, y, a = batch(0)
    prior = au.prior(dataset)
    table = au.pos_weight(dataset, option)
    weight = 5.0 * prior[y]
    if option == "global":  # the reference passes the [18] vector
        pw_ref = np.float64(table[0])
        pw_ours = table[0]
    else:
        pw_ref = None if table is None else np.float64(table[y])
        pw_ours = table
    want = torch_bce_with_logits_mean(z, a, weight, pw_ref)
    got = losses.au_weighted_bce(z, a, y, prior, pw_ours)
    np.testing.assert_allclose(float(got), want, rtol=1e-6)
    # The [C, A] form of the global table indexes to the same rows.
    if option == "global":
        got2 = losses.au_weighted_bce(z, a, y, prior, table)
        np.testing.assert_allclose(float(got2), want, rtol=1e-6)


def test_cross_entropy_equals_torch_formula():
    logits, _, y, _ = batch(1)
    for eps in (0.0, 0.1):
        np.testing.assert_allclose(float(losses.cross_entropy(logits, y, eps)),
                                   torch_cross_entropy_mean(logits, y, eps), rtol=1e-6)


def test_one_hot_soft_label_equals_hard_label():
    logits, z, y, a = batch(2)
    prior, pw = au.prior("dfew"), au.pos_weight("dfew", "distinct")
    q = jax.nn.one_hot(y, 7)
    hard = losses.audfer_loss(logits, z, y, a, prior, pw, label_smoothing=0.1)
    soft = losses.audfer_loss(logits, z, q, a, prior, pw, label_smoothing=0.1)
    for k in hard[1]:
        assert float(hard[1][k]) == float(soft[1][k])


def test_soft_label_weights_are_expectations():
    _, z, y, a = batch(3)
    prior, pw = au.prior("dfew"), au.pos_weight("dfew", "distinct")
    rng = np.random.default_rng(3)
    q = rng.dirichlet(np.ones(7), size=len(y)).astype(np.float32)
    want = torch_bce_with_logits_mean(z, a, 5.0 * (np.float64(q) @ prior),
                                      np.float64(q) @ pw)
    got = losses.au_weighted_bce(z, a, q, prior, pw)
    np.testing.assert_allclose(float(got), want, rtol=1e-6)


def test_combination_and_lambda():
    logits, z, y, a = batch(4)
    prior = au.prior("dfew")
    loss, parts = losses.audfer_loss(logits, z, y, a, prior, lam=0.25)
    np.testing.assert_allclose(float(loss), 0.75 * float(parts["ce"]) + 0.25 * float(parts["au_bce"]),
                               rtol=1e-6)
    ce_only, _ = losses.audfer_loss(logits, z, y, a, prior, lam=0.0)
    np.testing.assert_allclose(float(ce_only), torch_cross_entropy_mean(logits, y), rtol=1e-6)
    g = jax.grad(lambda u: losses.audfer_loss(logits, u, y, a, prior, lam=0.0)[0])(z)
    assert float(jnp.abs(g).max()) == 0.0


def _loss_fn(prior, pw):
    def f(logits, z, y, a, mask, au_mask):
        return losses.audfer_loss(logits, z, y, a, prior, pw, mask=mask, au_mask=au_mask,
                                  label_smoothing=0.1)[0]
    return f


def test_padding_changes_neither_loss_nor_gradients():
    logits, z, y, a = batch(5, b=8)
    prior, pw = au.prior("dfew"), au.pos_weight("dfew", "distinct")
    f = _loss_fn(prior, pw)
    ones = np.ones(8, np.float32)
    au_mask = ones.copy()
    au_mask[2] = 0  # a clip without AU labels
    base = f(logits, z, y, a, ones, au_mask)
    gbase = jax.grad(f, argnums=(0, 1))(logits, z, y, a, ones, au_mask)
    rng = np.random.default_rng(5)
    pad = lambda x, fill: np.concatenate([x, fill], 0)
    lp = pad(logits, rng.normal(size=(4, 7)).astype(np.float32) * 50)
    zp = pad(z, rng.normal(size=(4, 18)).astype(np.float32) * 50)
    yp = pad(y, np.zeros(4, np.int32))
    ap = pad(a, np.ones((4, 18), np.float32))
    mp = pad(ones, np.zeros(4, np.float32))
    amp = pad(au_mask, np.ones(4, np.float32))
    padded = f(lp, zp, yp, ap, mp, amp)
    gpad = jax.grad(f, argnums=(0, 1))(lp, zp, yp, ap, mp, amp)
    np.testing.assert_allclose(float(padded), float(base), rtol=1e-6)
    for g0, g1 in zip(gbase, gpad):
        np.testing.assert_allclose(np.asarray(g1[:8]), np.asarray(g0), rtol=1e-5, atol=1e-8)
        assert float(jnp.abs(g1[8:]).max()) == 0.0
    # The clip without AU labels gets no AU gradient.
    assert float(jnp.abs(gbase[1][2]).max()) == 0.0
    # Its AU term equals the loss of the batch without it.
    keep = np.arange(8) != 2
    np.testing.assert_allclose(
        float(losses.au_weighted_bce(z, a, y, prior, pw, mask=au_mask)),
        float(losses.au_weighted_bce(z[keep], a[keep], y[keep], prior, pw)), rtol=1e-6)


def test_all_masked_batch_is_zero_not_nan():
    logits, z, y, a = batch(6, b=4)
    f = _loss_fn(au.prior("dfew"), None)
    zeros = np.zeros(4, np.float32)
    assert float(f(logits, z, y, a, zeros, zeros)) == 0.0
    g = jax.grad(f, argnums=(0, 1))(logits, z, y, a, zeros, zeros)
    assert all(np.isfinite(np.asarray(x)).all() for x in g)


def test_jit_equals_eager():
    logits, z, y, a = batch(7)
    f = _loss_fn(au.prior("dfew"), au.pos_weight("dfew", "minor"))
    ones = np.ones(len(y), np.float32)
    eager = f(logits, z, y, a, ones, ones)
    jitted = jax.jit(f)(logits, z, y, a, ones, ones)
    np.testing.assert_allclose(float(jitted), float(eager), rtol=1e-6)


def test_finite_for_extreme_logits():
    logits, z, y, a = batch(8)
    f = _loss_fn(au.prior("dfew"), au.pos_weight("dfew", "global"))
    ones = np.ones(len(y), np.float32)
    big_logits = np.sign(logits) * 1e4
    big_z = np.sign(z + 1e-3) * 1e4
    val = f(big_logits, big_z, y, a, ones, ones)
    grads = jax.grad(f, argnums=(0, 1))(big_logits, big_z, y, a, ones, ones)
    assert np.isfinite(float(val))
    assert all(np.isfinite(np.asarray(g)).all() for g in grads)
    # A confidently wrong AU logit costs about w * p * |z|, not inf.
    one = losses.au_weighted_bce(np.array([[-1e4] + [0.0] * 17], np.float32),
                                 np.array([[1.0] + [0.0] * 17], np.float32),
                                 np.array([0]), au.prior("dfew"))
    w = 5.0 * au.prior("dfew")[0, 0]
    expected = (w * 1e4 + 5.0 * au.prior("dfew")[0, 1:].sum() * np.log(2)) / 18
    np.testing.assert_allclose(float(one), expected, rtol=1e-5)


def test_shape_errors():
    logits, z, y, a = batch(9)
    with pytest.raises(ValueError, match="prior must be"):
        losses.au_weighted_bce(z, a, y, np.ones((7, 17)))
    with pytest.raises(ValueError, match="mask must be"):
        losses.cross_entropy(logits, y, mask=np.ones(3))
