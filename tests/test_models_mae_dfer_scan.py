"""MAE-DFER's stacked, scanned blocks (tiny, depth 3 or 4).

The model stores blocks 0 .. depth-2 stacked (`blocks`, leading layer axis)
and runs them as one `nn.scan`; `scan_blocks=False` runs the same parameters
as straight-line code. Expectations: the per-block model written out by hand
(each `LGBlock` applied to its row of the stacked parameters), the drop-path
rates of the original (`drop_path_rates`), and the layout maps
(`per_block_layout` / `stacked_layout`) being each other's inverse.
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

sys.path.insert(0, os.path.dirname(__file__))

from model_testing import numpy_variables  # noqa: E402

from audfer_jax import config_lib  # noqa: E402
from audfer_jax import model_state  # noqa: E402
from audfer_jax import rng as rng_lib  # noqa: E402
from audfer_jax.cli import bench_model as model_bench  # noqa: E402
from audfer_jax.models import mae_dfer as md  # noqa: E402

DEPTH = 3


def _clips(batch=2, seed=0):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.integers(0, 256, (batch, 8, 32, 32, 3), dtype=np.uint8))


def _models(**kw):
    scanned = md.mae_dfer_tiny(depth=DEPTH, **kw)
    return scanned, scanned.clone(scan_blocks=False)


def _loss_and_grads(model, params, clips, train_mode, key=jax.random.PRNGKey(7)):
    labels = jnp.asarray([1, 4])
    targets = jnp.asarray(np.random.default_rng(3).integers(0, 2, (2, 18)), jnp.float32)

    def loss_fn(p):
        rngs = {'dropout': key} if train_mode else None
        out = model.apply({'params': p}, clips, train=train_mode, rngs=rngs)
        ce = optax.softmax_cross_entropy_with_integer_labels(out.logits, labels).mean()
        return ce + optax.sigmoid_binary_cross_entropy(out.au_logits, targets).mean()

    return jax.jit(jax.value_and_grad(loss_fn))(params)


def _assert_grads_close(g_want, g_got, rel):
    assert jax.tree.structure(g_want) == jax.tree.structure(g_got)
    flat_w = jax.tree_util.tree_leaves_with_path(g_want)
    for (path, a), b in zip(flat_w, jax.tree.leaves(g_got), strict=True):
        a, b = np.asarray(a), np.asarray(b)
        assert np.abs(a - b).max() <= rel * np.abs(a).max() + 1e-12, (
            jax.tree_util.keystr(path), np.abs(a - b).max(), np.abs(a).max())


def _by_hand(model, params, clips):
    """Eval features with each block an `LGBlock` applied to its own (per-block)
    parameters, in a Python loop: the model's steps 1-6 (module docstring)."""
    per_block = md.per_block_layout(params)
    c, n, grid = model.embed_dim, model.num_regions, model.token_grid
    x = (jnp.asarray(clips, jnp.float32) / 255.0 - jnp.asarray(md.IMAGENET_MEAN)) / jnp.asarray(
            md.IMAGENET_STD)
    x = md.PatchEmbed(c, model.patch_size, model.tubelet_size).apply(
            {'params': params['patch_embed']}, x)
    x = md.partition_regions(x + md.sinusoid_table(int(np.prod(grid)), c), grid,
                             model.region_size)
    b = x.shape[0]
    tokens = jnp.broadcast_to(params['lg_region_tokens'][None, :, None], (b, n, 1, c))
    x = jnp.concatenate([tokens, x], axis=2).reshape(b * n, -1, c)
    kw = dict(num_regions=n, num_heads=model.num_heads)
    for k in range(model.depth):
        block = md.LGBlock(**kw, region_tokens_only=k == model.depth - 1)
        x = block.apply({'params': per_block[f'blocks_{k}']}, x, False)
    pooled = x[:, 0].reshape(b, n, c).mean(axis=1)
    return md.nn.LayerNorm(epsilon=1e-6, use_fast_variance=False).apply(
            {'params': params['fc_norm']}, pooled)


def test_parameter_tree_is_stacked_and_maps_to_the_per_block_one():
    scanned, unrolled = _models()
    clips = _clips()
    shapes = [jax.eval_shape(lambda m=m: m.init({'params': jax.random.key(0)}, clips,
                                                 train=False)) for m in (scanned, unrolled)]
    assert jax.tree.structure(shapes[0]) == jax.tree.structure(shapes[1])
    params = shapes[0]['params']
    assert all(x.shape[0] == DEPTH - 1 for x in jax.tree.leaves(params['blocks']))
    per_block = md.per_block_layout(params)
    assert sorted(k for k in per_block if k.startswith('blocks')) == [
            f'blocks_{k}' for k in range(DEPTH)]
    assert jax.tree.structure(per_block['blocks_0']) == jax.tree.structure(params['last_block'])
    back = md.stacked_layout(per_block)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    assert ([x.shape for x in jax.tree.leaves(back)]
            == [x.shape for x in jax.tree.leaves(params)])
    assert md.has_per_block_layout(per_block) and not md.has_per_block_layout(params)


def test_layout_maps_move_values_row_by_row():
    scanned, _ = _models()
    params = numpy_variables(scanned, _clips(), train=False)['params']
    numpy_tree = jax.tree.map(np.asarray, params)
    per_block = md.per_block_layout(numpy_tree)
    for k in range(DEPTH - 1):
        np.testing.assert_array_equal(per_block[f'blocks_{k}']['mlp']['fc1']['kernel'],
                                      numpy_tree['blocks']['mlp']['fc1']['kernel'][k])
    np.testing.assert_array_equal(per_block[f'blocks_{DEPTH - 1}']['norm2']['bias'],
                                  numpy_tree['last_block']['norm2']['bias'])
    back = md.stacked_layout(per_block)
    jax.tree.map(np.testing.assert_array_equal, back, numpy_tree)
    # Jittable, and any pytree holding such dicts (here an Adam state) maps too.
    state = optax.adam(1e-3).init(params)
    mapped = jax.jit(md.stacked_layout)(md.per_block_layout(state))
    assert jax.tree.structure(mapped) == jax.tree.structure(state)
    with pytest.raises(ValueError, match=r'expected blocks_0 .. blocks_1, got blocks \[0, 2\]'):
        md.stacked_layout({'lg_region_tokens': 0, 'blocks_0': {}, 'blocks_2': {}})


def test_eval_forward_equals_blocks_applied_one_by_one():
    scanned, unrolled = _models()
    clips = _clips()
    variables = numpy_variables(scanned, clips, train=False)
    want = np.asarray(_by_hand(scanned, variables['params'], clips))
    for model in (scanned, unrolled):
        out = jax.jit(lambda v, m=model: m.apply(v, clips, train=False))(variables)
        np.testing.assert_allclose(np.asarray(out.features), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('train_mode', [False, True])
def test_scanned_gradients_equal_unrolled(train_mode):
    # Drop path on (0.5): both forms split the dropout key the same way, so
    # they are the same function in train mode too.
    scanned, unrolled = _models(drop_path_rate=0.5)
    clips = _clips()
    params = numpy_variables(scanned, clips, train=False)['params']
    loss0, g0 = _loss_and_grads(unrolled, params, clips, train_mode)
    loss1, g1 = _loss_and_grads(scanned, params, clips, train_mode)
    np.testing.assert_allclose(float(loss1), float(loss0), rtol=1e-6)
    _assert_grads_close(g0, g1, rel=1e-5)
    # Every stacked block gets its own gradient (not the sum over blocks).
    fc1 = np.asarray(g1['blocks']['mlp']['fc1']['kernel'])
    assert np.abs(fc1[0] - fc1[1]).max() > 0


def test_train_mode_uses_the_per_block_drop_path_rates():
    """Block k keeps a row with probability 1 - rate_k (`drop_path_rates`), read
    off the sown keep masks of the stacked blocks."""
    depth = 4
    model = md.mae_dfer_tiny(depth=depth, drop_path_rate=0.9)
    clips = _clips(batch=16)
    params = numpy_variables(model, clips, train=False)['params']
    run = jax.jit(lambda key: model.apply({'params': params}, clips, train=True,
                                          rngs={'dropout': key}, mutable=['intermediates'])[1])
    kept = np.zeros(depth - 1)
    draws = 0
    for seed in range(6):
        masks = run(jax.random.PRNGKey(seed))['intermediates']['blocks']['drop_path']['keep_mask']
        for m in masks:                     # 4 uses per block, each [depth - 1, rows]
            m = np.asarray(m)
            assert m.shape[0] == depth - 1
            kept += m.sum(axis=1)
            draws += m.shape[1]
    rates = md.drop_path_rates(0.9, depth)[:-1]     # 0, 0.3, 0.6
    np.testing.assert_allclose(kept / draws, 1.0 - np.asarray(rates), atol=0.08)
    assert kept[0] == draws                          # rate 0: every row kept


def test_traced_drop_path_rate_matches_python_float():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((64, 3, 5)), jnp.float32)
    key = jax.random.PRNGKey(2)

    def run(rate):
        return md.DropPath(rate).apply({}, x, False, rngs={'dropout': key})

    want = run(0.3)
    got = jax.jit(lambda r: run(r))(jnp.float32(0.3))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    rows = np.abs(np.asarray(want)).reshape(64, -1).max(axis=1)
    assert 0 < (rows == 0).sum() < 64            # some rows dropped, some kept
    # A traced rate of 0 keeps every row unscaled (the Python 0.0 draws nothing).
    np.testing.assert_array_equal(jax.jit(lambda r: run(r))(jnp.float32(0.0)), x)
    np.testing.assert_array_equal(run(0.0), x)


def test_remat_with_scan_gives_the_same_loss_and_gradients():
    scanned, _ = _models()
    remat = scanned.clone(remat_policy='full')
    clips = _clips()
    params = numpy_variables(scanned, clips, train=False)['params']
    # A typed rbg key, as config.rng_impl='rbg' gives the model (split per block).
    key = rng_lib.dropout_key(jax.random.PRNGKey(7), 'rbg')
    loss0, g0 = _loss_and_grads(scanned, params, clips, True, key)
    loss1, g1 = _loss_and_grads(remat, params, clips, True, key)
    np.testing.assert_allclose(float(loss1), float(loss0), rtol=1e-6)
    _assert_grads_close(g0, g1, rel=1e-5)


def test_bfloat16_scan_close_to_float32():
    scanned, _ = _models()
    bf16 = scanned.clone(dtype=jnp.bfloat16)
    clips = _clips()
    variables = numpy_variables(scanned, clips, train=False)
    want = jax.jit(lambda v: scanned.apply(v, clips, train=False))(variables)
    got = jax.jit(lambda v: bf16.apply(v, clips, train=False))(variables)
    assert got.logits.dtype == jnp.float32
    # bfloat16 keeps 8 mantissa bits; same bound as test_models_accelerator.
    for a, b in ((want.logits, got.logits), (want.features, got.features)):
        a, b = np.asarray(a), np.asarray(b)
        assert np.abs(a - b).max() <= 0.1 * (np.abs(a).max() + 1e-3)
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.98


def test_build_model_passes_scan_blocks_and_remat_policy():
    config = config_lib.base_config()
    assert config.scan_blocks is True and config.remat_policy == 'none'
    assert 'remat' not in config
    config.model = 'mae_dfer_tiny'
    model = model_state.build_model(config, 7)
    assert isinstance(model, md.MAEDFER) and model.scan_blocks and model.remat_policy == 'none'
    config.scan_blocks = False
    config.remat_policy = 'dots_with_no_batch_dims_saveable'
    model = model_state.build_model(config, 7)
    assert not model.scan_blocks and model.remat_policy == 'dots_with_no_batch_dims_saveable'
    # Other backbones have no stacked blocks: scan_blocks leaves them as they are.
    config.model = 'former_dfer_tiny'
    model = model_state.build_model(config, 7)
    assert not hasattr(model, 'scan_blocks') and model.remat_policy == config.remat_policy
    config.remat_policy = 'some_policy'
    with pytest.raises(ValueError, match="remat_policy must be one of none, full, "
                                         "dots_with_no_batch_dims_saveable, dots_saveable; "
                                         "got 'some_policy'"):
        model_state.build_model(config, 7)


@pytest.mark.parametrize('old,policy', [(True, 'full'), (False, 'none')])
def test_run_configs_with_the_old_remat_switch_still_build(old, policy):
    """A run's config.json from before `remat_policy`: `remat` true/false."""
    config = config_lib.base_config()
    config.model = 'm3dfel_tiny'
    del config['remat_policy']
    config.remat = old
    assert model_state.remat_policy_of(config) == policy
    assert model_state.build_model(config, 7).remat_policy == policy


def test_bench_model_rejects_scan_blocks_for_other_models(capsys):
    assert model_bench.main(['--model', 'former_dfer_tiny', '--scan-blocks']) == 1
    assert 'only mae_dfer scans its blocks' in capsys.readouterr().err
