"""MAE-DFER with `scan_blocks=True` against the unrolled model (tiny, depth 3).

The scanned model must compute the unrolled model's function with the same
parameter tree: blocks 0..1 under one `lax.scan` (2 iterations), block 2
(`region_tokens_only`) outside it. Expectations are the unrolled model's
values on the same weights, and for the drop-path rates a manual unrolled
run of the scanned blocks with the original per-block rates.
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

import _train_fakes as fakes  # noqa: E402
from model_testing import numpy_variables  # noqa: E402

from audfer_jax import config_lib  # noqa: E402
from audfer_jax import model_state  # noqa: E402
from audfer_jax import rng as rng_lib  # noqa: E402
from audfer_jax import train  # noqa: E402
from audfer_jax.benchmarks import train as train_bench  # noqa: E402
from audfer_jax.cli import bench_model as model_bench  # noqa: E402
from audfer_jax.cli import bench_train  # noqa: E402
from audfer_jax.models import mae_dfer as md  # noqa: E402

DEPTH = 3


def _clips(batch=2, seed=0):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.integers(0, 256, (batch, 8, 32, 32, 3), dtype=np.uint8))


def _models(**kw):
    plain = md.mae_dfer_tiny(depth=DEPTH, **kw)
    return plain, plain.clone(scan_blocks=True)


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
    for (path, a), b in zip(flat_w, jax.tree.leaves(g_got)):
        a, b = np.asarray(a), np.asarray(b)
        assert np.abs(a - b).max() <= rel * np.abs(a).max() + 1e-12, (
            jax.tree_util.keystr(path), np.abs(a - b).max(), np.abs(a).max())


def test_parameter_tree_is_the_unrolled_one():
    plain, scanned = _models()
    clips = _clips()
    shapes = [jax.eval_shape(lambda m=m: m.init({'params': jax.random.key(0)}, clips,
                                                 train=False)) for m in (plain, scanned)]
    assert jax.tree.structure(shapes[0]) == jax.tree.structure(shapes[1])
    assert ([(x.shape, x.dtype) for x in jax.tree.leaves(shapes[0])]
            == [(x.shape, x.dtype) for x in jax.tree.leaves(shapes[1])])
    assert sorted(k for k in shapes[1]['params'] if k.startswith('blocks')) == [
            f'blocks_{k}' for k in range(DEPTH)]


def test_missing_block_parameters_are_an_error():
    plain, scanned = _models()
    clips = _clips()
    params = dict(numpy_variables(plain, clips, train=False)['params'])
    del params['blocks_1']
    with pytest.raises(ValueError, match=r"params lack \['blocks_1'\]"):
        scanned.apply({'params': params}, clips, train=False)


def test_eval_forward_equals_unrolled():
    plain, scanned = _models()
    clips = _clips()
    variables = numpy_variables(plain, clips, train=False)
    want = jax.jit(lambda v: plain.apply(v, clips, train=False))(variables)
    got = jax.jit(lambda v: scanned.apply(v, clips, train=False))(variables)
    for name in ('logits', 'au_logits', 'features'):
        a, b = np.asarray(getattr(want, name)), np.asarray(getattr(got, name))
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6 * np.abs(a).max())


@pytest.mark.parametrize('train_mode', [False, True])
def test_gradients_equal_unrolled(train_mode):
    # drop_path_rate 0: the unrolled blocks draw nothing, the scanned ones keep
    # every row (keep = 1), so train mode is the same function too.
    plain, scanned = _models(drop_path_rate=0.0)
    clips = _clips()
    params = numpy_variables(plain, clips, train=False)['params']
    loss0, g0 = _loss_and_grads(plain, params, clips, train_mode)
    loss1, g1 = _loss_and_grads(scanned, params, clips, train_mode)
    np.testing.assert_allclose(float(loss1), float(loss0), rtol=1e-6)
    _assert_grads_close(g0, g1, rel=1e-5)
    # Every scanned block gets its own gradient (not the sum over blocks).
    assert np.abs(np.asarray(g1['blocks_0']['mlp']['fc1']['kernel'])
                  - np.asarray(g1['blocks_1']['mlp']['fc1']['kernel'])).max() > 0


def test_train_mode_uses_the_per_block_drop_path_rates(monkeypatch):
    """The scan gets drop_path_rates(...)[:-1]; its output is a manual unrolled
    run of the blocks with those Python-float rates and the scanned keys."""
    plain, scanned = _models(drop_path_rate=0.9)
    clips = _clips(batch=4)
    params = numpy_variables(plain, clips, train=False)['params']
    seen = {}
    real_scan = jax.lax.scan

    def spy(f, init, xs, **kw):
        seen.update(init=init, xs=xs)
        out = real_scan(f, init, xs, **kw)
        seen['out'] = out[0]
        return out

    monkeypatch.setattr(jax.lax, 'scan', spy)
    scanned.apply({'params': params}, clips, train=True,
                  rngs={'dropout': jax.random.PRNGKey(5)})
    monkeypatch.undo()
    rates = md.drop_path_rates(0.9, DEPTH)[:-1]
    assert rates[0] == 0.0 and rates[-1] > 0.4
    np.testing.assert_array_equal(np.asarray(seen['xs']['rate']), np.float32(rates))
    assert seen['xs']['key'].shape[0] == DEPTH - 1

    def manual(block_rates):
        x = seen['init']
        for k, rate in enumerate(block_rates):
            block = md.LGBlock(num_regions=scanned.num_regions, num_heads=scanned.num_heads,
                               drop_path=rate)
            x = block.apply({'params': params[f'blocks_{k}']}, x, True,
                            rngs={'dropout': seen['xs']['key'][k]})
        return np.asarray(x)

    got = np.asarray(seen['out'])
    want = manual(rates)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    # The rates matter: at 0.9 rows are dropped, so rate-0 blocks differ.
    assert np.abs(manual([0.0] * (DEPTH - 1)) - got).max() > 1e-3 * np.abs(want).max()


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
    _, scanned = _models()
    remat = scanned.clone(remat=True)
    clips = _clips()
    params = numpy_variables(scanned, clips, train=False)['params']
    # A typed rbg key, as config.rng_impl='rbg' gives the model (split per block).
    key = rng_lib.dropout_key(jax.random.PRNGKey(7), 'rbg')
    loss0, g0 = _loss_and_grads(scanned, params, clips, True, key)
    loss1, g1 = _loss_and_grads(remat, params, clips, True, key)
    np.testing.assert_allclose(float(loss1), float(loss0), rtol=1e-6)
    _assert_grads_close(g0, g1, rel=1e-5)


def test_bfloat16_scan_close_to_float32():
    plain, _ = _models()
    bf16 = plain.clone(dtype=jnp.bfloat16, scan_blocks=True)
    clips = _clips()
    variables = numpy_variables(plain, clips, train=False)
    want = jax.jit(lambda v: plain.apply(v, clips, train=False))(variables)
    got = jax.jit(lambda v: bf16.apply(v, clips, train=False))(variables)
    assert got.logits.dtype == jnp.float32
    # bfloat16 keeps 8 mantissa bits; same bound as test_models_accelerator.
    for a, b in ((want.logits, got.logits), (want.features, got.features)):
        a, b = np.asarray(a), np.asarray(b)
        assert np.abs(a - b).max() <= 0.1 * (np.abs(a).max() + 1e-3)
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.98


def test_build_model_passes_scan_blocks_and_rejects_other_models():
    config = config_lib.base_config()
    assert config.scan_blocks is False
    config.scan_blocks = True
    config.model = 'mae_dfer_tiny'
    model = model_state.build_model(config, 7)
    assert isinstance(model, md.MAEDFER) and model.scan_blocks
    config.model = 'former_dfer_tiny'
    with pytest.raises(ValueError, match=r'^config.scan_blocks=True: only mae_dfer scans its '
                                         r'blocks; former_dfer_tiny has no scan_blocks$'):
        model_state.build_model(config, 7)
    config.scan_blocks = False
    assert not hasattr(model_state.build_model(config, 7), 'scan_blocks')


def test_bench_model_rejects_scan_blocks_for_other_models(capsys):
    assert model_bench.main(['--model', 'former_dfer_tiny', '--scan-blocks']) == 1
    assert 'only mae_dfer scans its blocks' in capsys.readouterr().err


class _ScanningMicro(fakes.MicroModel):
    """The trainer's micro model, claiming to scan its blocks (wiring tests)."""
    scan_blocks: bool = True


NOT_COUNTED = ('FLOPs/MFU not counted because scan_blocks is on (XLA counts a scanned loop '
               'body once; set scan_blocks=False for the FLOPs/MFU report)')


def test_bench_train_says_flops_not_counted_with_scan_blocks():
    config = fakes.micro_config()
    r = train_bench.run_bench(config, batch=2, steps=1, warmup=0,
                              model=_ScanningMicro(num_classes=7), log=lambda m: None)
    assert r['flops_note'] == NOT_COUNTED
    assert r['flops_per_clip'] is None and r['flops_per_s'] is None and r['mfu'] is None
    text = bench_train.format_result(r)
    assert f'efficiency of the full step: {NOT_COUNTED}' in text.splitlines()
    assert 'FLOPs/clip' not in text


def test_training_log_says_flops_not_counted_with_scan_blocks(tmp_path, capsys):
    cfg = fakes.micro_config(num_epochs=1)
    train.train_and_evaluate(cfg, str(tmp_path / 'run'), data=fakes,
                             model=_ScanningMicro(num_classes=7))
    out = capsys.readouterr().out.splitlines()
    assert f'train step: {NOT_COUNTED}' in out
    assert not any('GFLOPs per clip' in line for line in out)
