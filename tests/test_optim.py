"""Tests of audfer_jax.optim against hand-computed values of backbones.md."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from audfer_jax import optim
from audfer_jax.models import mae_dfer


def _f(schedule, step):
    return float(schedule(jnp.asarray(step)))


def test_step_lr_former_dfer():
    # main_DFEW.py: 0.01 for epochs 0-39, 1e-3 for 40-79, 1e-4 for 80-99.
    s = optim.step_lr_schedule(0.01, steps_per_epoch=10, step_epochs=40, gamma=0.1)
    assert _f(s, 0) == pytest.approx(0.01)
    assert _f(s, 399) == pytest.approx(0.01)
    assert _f(s, 400) == pytest.approx(1e-3)
    assert _f(s, 799) == pytest.approx(1e-3)
    assert _f(s, 800) == pytest.approx(1e-4)
    assert _f(s, 999) == pytest.approx(1e-4)


def test_timm_cosine_m3dfel():
    # 10 iterations per epoch: T = 3000, W = 200; step k runs at f(max(k - 1, 0)).
    s = optim.timm_cosine_schedule(5e-4, steps_per_epoch=10, num_epochs=300,
                                   warmup_epochs=20, lr_min=5e-6)
    assert _f(s, 0) == 0.0
    assert _f(s, 1) == 0.0                     # "the first two steps run at lr 0"
    assert _f(s, 2) == pytest.approx(5e-4 / 200, rel=1e-6)
    assert _f(s, 200) == pytest.approx(5e-4 * 199 / 200, rel=1e-6)
    # t = 200: warmup_prefix False -> the cosine at its epoch-20 value, not base lr.
    expected = 5e-6 + 0.5 * (5e-4 - 5e-6) * (1 + math.cos(math.pi * 200 / 3000))
    assert _f(s, 201) == pytest.approx(expected, rel=1e-6)
    assert expected < 5e-4 * 0.99
    last = 5e-6 + 0.5 * (5e-4 - 5e-6) * (1 + math.cos(math.pi * 2998 / 3000))
    assert _f(s, 2999) == pytest.approx(last, rel=1e-5)


def test_warmup_cosine_mae_dfer_dfew_fold1():
    # DFEW fold 1: 97 iterations per epoch, batch 96: lr 3.75e-4, min 3.75e-7.
    cfg = ml_collections.ConfigDict(dict(lr=1e-3, min_lr=1e-6, lr_batch_base=256,
                                         schedule="warmup_cosine", warmup_epochs=5))
    s = optim.make_schedule(cfg, steps_per_epoch=97, num_epochs=100, global_batch_size=96)
    lr, lo = 3.75e-4, 3.75e-7
    warm = np.linspace(0, lr, 485)
    for k in (0, 1, 100, 484):
        assert _f(s, k) == pytest.approx(warm[k], rel=1e-5, abs=1e-12)
    n = 9700 - 485
    for i in (0, 1, 4000, n - 1):
        expected = lo + 0.5 * (lr - lo) * (1 + math.cos(math.pi * i / n))
        assert _f(s, 485 + i) == pytest.approx(expected, rel=1e-5)


def _params():
    """A depth-3 MAE-DFER-like tree in the stacked layout: blocks 0-1 under
    `blocks` (leading axis 2), block 2 as `last_block`."""
    return {
        "patch_embed": {"proj": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}},
        "lg_region_tokens": jnp.ones((4, 2)),
        "blocks": {"norm2": {"scale": jnp.ones((2, 2))},
                   "third_attn": {"q": {"kernel": jnp.ones((2, 2, 2))}},
                   "mlp": {"fc1": {"kernel": jnp.ones((2, 2, 2))}}},
        "last_block": {"norm2": {"scale": jnp.ones((2,))},
                       "third_attn": {"q": {"kernel": jnp.ones((2, 2))}},
                       "mlp": {"fc1": {"kernel": jnp.ones((2, 2))}}},
        "head": {"kernel": jnp.ones((2, 3))},
    }


def test_mae_dfer_masks_and_layer_scales():
    p = _params()
    mask = optim.decay_mask(p, "mae_dfer", num_layers=3)
    assert mask["patch_embed"]["proj"]["kernel"] and not mask["patch_embed"]["proj"]["bias"]
    assert not mask["lg_region_tokens"]
    # A stacked LayerNorm scale [2, C] is 1-D per block: no decay.
    assert not mask["blocks"]["norm2"]["scale"] and not mask["last_block"]["norm2"]["scale"]
    assert mask["blocks"]["mlp"]["fc1"]["kernel"] and mask["last_block"]["mlp"]["fc1"]["kernel"]
    # The last block's propagation step gets a zero gradient; torch's AdamW
    # still decays it (a zero .grad is not None): so do we.
    assert mask["last_block"]["third_attn"]["q"]["kernel"]
    scales = optim.layer_scales(p, 0.75, num_layers=3)
    assert scales["patch_embed"]["proj"]["kernel"] == pytest.approx(0.75 ** 4)
    # Block k has id k + 1: one scale per row of the stacked leaf, broadcasting.
    fc1 = scales["blocks"]["mlp"]["fc1"]["kernel"]
    assert fc1.shape == (2, 1, 1) and fc1.dtype == np.float32
    np.testing.assert_array_equal(fc1.ravel(), np.float32([0.75 ** 3, 0.75 ** 2]))
    assert scales["blocks"]["norm2"]["scale"].shape == (2, 1)
    assert scales["last_block"]["mlp"]["fc1"]["kernel"] == pytest.approx(0.75)
    assert scales["head"]["kernel"] == 1.0 and scales["lg_region_tokens"] == 1.0
    assert scales["last_block"]["third_attn"]["q"]["kernel"] == pytest.approx(0.75)
    frozen = optim.layer_scales(p, 0.75, num_layers=3, frozen=True)
    assert frozen["last_block"]["third_attn"]["q"]["kernel"] == 0.0
    np.testing.assert_array_equal(frozen["blocks"]["third_attn"]["q"]["kernel"],
                                  scales["blocks"]["third_attn"]["q"]["kernel"])


def _adamw_mae_dfer(lr=1e-2):
    return ml_collections.ConfigDict(dict(optimizer="adamw", lr=lr, b1=0.9, b2=0.999,
                                          eps=1e-8, weight_decay=0.05, decay_rule="mae_dfer",
                                          layer_decay=0.75, schedule="constant"))


def test_stacked_update_equals_the_per_block_update():
    """The recipe on the stacked tree moves every block as the same recipe on
    the per-block tree (`mae_dfer.per_block_layout`, the original's tensors)."""
    rng = np.random.default_rng(0)
    p = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), _params())
    grads = [jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), p)
             for _ in range(3)]
    results = []
    for layout in (lambda t: t, mae_dfer.per_block_layout):
        params = layout(p)
        tx, _ = optim.make_optimizer(_adamw_mae_dfer(), params, steps_per_epoch=1,
                                     num_epochs=1, global_batch_size=1, num_layers=3)
        state = tx.init(params)
        for g in grads:
            upd, state = tx.update(layout(g), state, params)
            params = optax.apply_updates(params, upd)
        results.append(params)
    stacked, per_block = results
    assert sorted(per_block) == ["blocks_0", "blocks_1", "blocks_2", "head",
                                 "lg_region_tokens", "patch_embed"]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                 mae_dfer.per_block_layout(stacked), per_block)
    moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), mae_dfer.per_block_layout(stacked),
                         mae_dfer.per_block_layout(p))
    # The layer scales differ per block, so equal gradients would move them differently.
    assert moved["blocks_0"]["mlp"]["fc1"]["kernel"] < moved["blocks_1"]["mlp"]["fc1"]["kernel"]


def test_sgd_matches_torch_update_rule():
    # torch.optim.SGD(lr, momentum=0.9, weight_decay=1e-4), written out in NumPy.
    cfg = ml_collections.ConfigDict(dict(optimizer="sgd", lr=0.01, momentum=0.9,
                                         weight_decay=1e-4, schedule="constant"))
    p = {"w": jnp.array([1.0, -2.0, 3.0])}
    tx, _ = optim.make_optimizer(cfg, p, steps_per_epoch=1, num_epochs=1, global_batch_size=1)
    state = tx.init(p)
    w, buf = np.array([1.0, -2.0, 3.0]), np.zeros(3)
    rng = np.random.default_rng(0)
    for _ in range(3):
        g = rng.normal(size=3)
        upd, state = tx.update({"w": jnp.asarray(g, jnp.float32)}, state, p)
        p = optax.apply_updates(p, upd)
        d = g + 1e-4 * w
        buf = 0.9 * buf + d
        w = w - 0.01 * buf
    np.testing.assert_allclose(np.asarray(p["w"]), w, rtol=1e-5)


def test_adamw_with_layer_decay_matches_torch_rule():
    # torch AdamW per group: p -= lr*s * (m_hat / (sqrt(v_hat) + eps) + wd * p),
    # with the group lr scaled by the layer scale s and wd 0 for no-decay leaves.
    p = _params()
    tx, _ = optim.make_optimizer(_adamw_mae_dfer(), p, steps_per_epoch=1, num_epochs=1,
                                 global_batch_size=1, num_layers=3)
    state = tx.init(p)
    g = jax.tree.map(lambda x: 0.3 * jnp.ones_like(x), p)
    upd, state = tx.update(g, state, p)
    # After one step m_hat = g, v_hat = g^2: adam step = g / (|g| + eps) ~ 1.
    step = 0.3 / (0.3 + 1e-8)
    k = upd["patch_embed"]["proj"]["kernel"]
    np.testing.assert_allclose(k, -1e-2 * 0.75 ** 4 * (step + 0.05 * 1.0), rtol=3e-5)
    b = upd["patch_embed"]["proj"]["bias"]
    np.testing.assert_allclose(b, -1e-2 * 0.75 ** 4 * step, rtol=3e-5)
    np.testing.assert_allclose(upd["head"]["kernel"], -1e-2 * (step + 0.05), rtol=3e-5)
    # Stacked rows: block 0 at 0.75^3, block 1 at 0.75^2; a stacked 1-D leaf undecayed.
    fc1 = np.asarray(upd["blocks"]["mlp"]["fc1"]["kernel"])
    np.testing.assert_allclose(fc1[0], -1e-2 * 0.75 ** 3 * (step + 0.05), rtol=3e-5)
    np.testing.assert_allclose(fc1[1], -1e-2 * 0.75 ** 2 * (step + 0.05), rtol=3e-5)
    norm = np.asarray(upd["blocks"]["norm2"]["scale"])
    np.testing.assert_allclose(norm[1], -1e-2 * 0.75 ** 2 * step, rtol=3e-5)
    # A zero gradient (the last block's propagation step): no Adam step, the decay only.
    g0 = dict(g, last_block={**g["last_block"],
                             "third_attn": {"q": {"kernel": jnp.zeros((2, 2))}}})
    upd0, _ = tx.update(g0, tx.init(p), p)
    np.testing.assert_allclose(upd0["last_block"]["third_attn"]["q"]["kernel"],
                               -1e-2 * 0.75 * 0.05, rtol=1e-6)


def test_gradient_clipping_and_errors():
    cfg = ml_collections.ConfigDict(dict(optimizer="sgd", lr=1.0, momentum=0.0,
                                         weight_decay=0.0, schedule="constant",
                                         grad_clip_norm=1.0))
    p = {"w": jnp.zeros(2)}
    tx, _ = optim.make_optimizer(cfg, p, steps_per_epoch=1, num_epochs=1, global_batch_size=1)
    upd, _ = tx.update({"w": jnp.array([3.0, 4.0])}, tx.init(p), p)
    np.testing.assert_allclose(upd["w"], [-0.6, -0.8], rtol=3e-5)
    cfg.optimizer = "lamb"
    with pytest.raises(ValueError, match="unknown optimizer"):
        optim.make_optimizer(cfg, p, steps_per_epoch=1, num_epochs=1, global_batch_size=1)
    cfg.optimizer, cfg.schedule = "sgd", "poly"
    with pytest.raises(ValueError, match="unknown lr schedule"):
        optim.make_optimizer(cfg, p, steps_per_epoch=1, num_epochs=1, global_batch_size=1)
