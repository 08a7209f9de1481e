"""Tests of audfer_jax.models.mae_dfer (LGI-Former) against the spec and NumPy.

Expectations come from /work/shared/spec/backbones.md section 3 and
spec/state_dicts/mae_dfer.json (parameter counts, shapes, drop-path rates) and
from NumPy transcriptions of the original's formulas (sinusoid table, region
partition, GeneralAttention, LGBlock, head). The full-size model is only
traced with `jax.eval_shape`; numerics run on the tiny variant.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from audfer_jax.models import mae_dfer as md
from audfer_jax.models.base import ModelOutput

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


# --------------------------------------------------------------------------
# NumPy references (float64), written from backbones.md section 3.
# --------------------------------------------------------------------------

def np_layer_norm(x, p, eps=1e-6):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * p['scale'] + p['bias']


def np_softmax(x):
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def np_attention_torch(x, ctx, q_w, q_bias, kv_w, v_bias, proj_w, proj_b, heads):
    """GeneralAttention with PyTorch-layout weights (`[out, in]`, packed kv)."""
    b, t1, c = x.shape
    t2 = ctx.shape[1]
    hd = c // heads
    kv_bias = np.concatenate([np.zeros_like(v_bias), v_bias])
    q = x @ q_w.T + q_bias
    kv = ctx @ kv_w.T + kv_bias
    q = q.reshape(b, t1, heads, hd).transpose(0, 2, 1, 3) * hd ** -0.5
    kv = kv.reshape(b, t2, 2, heads, hd).transpose(2, 0, 3, 1, 4)
    k, v = kv[0], kv[1]
    attn = np_softmax(q @ k.transpose(0, 1, 3, 2))
    out = (attn @ v).transpose(0, 2, 1, 3).reshape(b, t1, c)
    return out @ proj_w.T + proj_b


def np_attention_flax(x, ctx, p, heads):
    """The same attention from Flax parameters, via the documented mapping."""
    return np_attention_torch(
        x, ctx, p['q']['kernel'].T, p['q']['bias'],
        np.concatenate([p['k']['kernel'].T, p['v']['kernel'].T], axis=0), p['v']['bias'],
        p['proj']['kernel'].T, p['proj']['bias'], heads)


def np_gelu_erf(x):
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def np_sinusoid(n, d):
    table = np.zeros((n, d))
    for p in range(n):
        for j in range(d):
            angle = p / 10000 ** (2 * (j // 2) / d)
            table[p, j] = math.sin(angle) if j % 2 == 0 else math.cos(angle)
    return table


def np_partition(x, grid, region):
    """Explicit per-token scatter: token (t,h,w) -> region (it, ih, iw), position (t', h', w')."""
    gt, gh, gw = grid
    rt, rh, rw = region
    nt, nh, nw = gt // rt, gh // rh, gw // rw
    out = np.zeros((x.shape[0], nt * nh * nw, rt * rh * rw, x.shape[-1]), x.dtype)
    for t in range(gt):
        for h in range(gh):
            for w in range(gw):
                r = (t // rt) * nh * nw + (h // rh) * nw + (w // rw)
                s = (t % rt) * rh * rw + (h % rh) * rw + (w % rw)
                out[:, r, s] = x[:, t * gh * gw + h * gw + w]
    return out


def np_forward(params, clips_uint8, model):
    """Eval-mode MAE-DFER forward in float64 NumPy (backbones.md section 3).

    `params` in the per-block layout (`blocks_k`, `md.per_block_layout`).
    """
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    x = (clips_uint8.astype(np.float64) / 255.0 - MEAN) / STD
    b, t, hh, ww, _ = x.shape
    pt, ps = model.tubelet_size, model.patch_size
    gt, gh, gw = t // pt, hh // ps, ww // ps
    c = model.embed_dim
    patches = x.reshape(b, gt, pt, gh, ps, gw, ps, 3).transpose(0, 1, 3, 5, 2, 4, 6, 7)
    patches = patches.reshape(b, gt * gh * gw, pt * ps * ps * 3)
    kernel = p['patch_embed']['proj']['kernel'].reshape(-1, c)
    tok = patches @ kernel + p['patch_embed']['proj']['bias']
    tok = tok + np_sinusoid(gt * gh * gw, c)[None]
    reg = np_partition(tok, (gt, gh, gw), model.region_size)
    n, s = reg.shape[1], reg.shape[2] + 1
    rt = np.broadcast_to(p['lg_region_tokens'][None, :, None], (b, n, 1, c))
    xr = np.concatenate([rt, reg], axis=2).reshape(b * n, s, c)
    heads = model.num_heads
    for k in range(model.depth):
        bp = p[f'blocks_{k}']
        xr = xr + np_attention_flax(np_layer_norm(xr, bp['first_attn_norm0']),
                                    np_layer_norm(xr, bp['first_attn_norm0']),
                                    bp['first_attn'], heads)
        m = xr[:, 0].reshape(b, n, c)
        mn = np_layer_norm(m, bp['second_attn_norm0'])
        m = m + np_attention_flax(mn, mn, bp['second_attn'], heads)
        loc = xr[:, 1:].reshape(b, n * (s - 1), c)
        loc = loc + np_attention_flax(np_layer_norm(loc, bp['third_attn_norm0']),
                                      np_layer_norm(m, bp['third_attn_norm1']),
                                      bp['third_attn'], heads)
        xr = np.concatenate([m.reshape(b * n, 1, c), loc.reshape(b * n, s - 1, c)], axis=1)
        hdn = np_layer_norm(xr, bp['norm2'])
        hdn = np_gelu_erf(hdn @ bp['mlp']['fc1']['kernel'] + bp['mlp']['fc1']['bias'])
        xr = xr + hdn @ bp['mlp']['fc2']['kernel'] + bp['mlp']['fc2']['bias']
    feat = np_layer_norm(xr[:, 0].reshape(b, n, c).mean(1), p['fc_norm'])
    logits = feat @ p['head']['kernel'] + p['head']['bias']
    au = feat @ p['au_head']['kernel'] + p['au_head']['bias']
    return logits, au, feat


# --------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------

def _random_params(shapes, seed, std=0.2):
    """Random float32 leaves shaped like `shapes`: 1-D around 1, others around 0.

    Every term of the forward pass is then non-trivial (no zero biases, no
    unit LayerNorm scales), and nothing is initialised eagerly (slow on CPU).
    """
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda a: jnp.asarray((1.0 if len(a.shape) == 1 else 0.0)
                              + std * rng.normal(size=a.shape), jnp.float32), shapes)


@pytest.fixture(scope='module')
def tiny():
    model = md.mae_dfer_tiny()
    clips = np.random.default_rng(1).integers(0, 256, (2, 8, 32, 32, 3)).astype(np.uint8)
    shapes = jax.eval_shape(lambda: model.init({'params': jax.random.key(0)}, clips,
                                               train=False))
    params = _random_params(shapes['params'], seed=2)
    return model, params, clips


LABELS = jnp.array([1, 5])
AU_TARGETS = jnp.asarray(np.random.default_rng(0).integers(0, 2, (2, 18)), jnp.float32)
STEP_KEY = 9


def _loss_fn(model, params, clips, rng):
    out = model.apply({'params': params}, clips, train=True, rngs={'dropout': rng})
    ce = optax.softmax_cross_entropy_with_integer_labels(out.logits, LABELS).mean()
    bce = optax.sigmoid_binary_cross_entropy(out.au_logits, AU_TARGETS).mean()
    return ce + bce


@pytest.fixture(scope='module')
def tiny_step(tiny):
    """One jitted AdamW step (decay masked by `weight_decay_mask`) on the tiny model.

    Returns `(new_params, loss, grads)`; shared by several tests because
    compiling is the slow part on CPU.
    """
    model, params, clips = tiny
    tx = optax.adamw(1e-3, weight_decay=0.05, mask=md.weight_decay_mask(params, model.depth))

    @jax.jit
    def step(params, opt_state, rng):
        loss, grads = jax.value_and_grad(lambda p: _loss_fn(model, p, clips, rng))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), loss, grads

    return step(params, tx.init(params), jax.random.key(STEP_KEY))


def _count(tree):
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


# --------------------------------------------------------------------------
# Full-size model: shapes and counts only (eval_shape, nothing materialised)
# --------------------------------------------------------------------------

@pytest.fixture(scope='module')
def full_shapes():
    model = md.mae_dfer()
    clips = jax.ShapeDtypeStruct((2, 16, 160, 160, 3), jnp.uint8)
    variables = jax.eval_shape(
        lambda x: model.init({'params': jax.random.key(0)}, x, train=False), clips)
    out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, clips)
    return model, variables, out


def test_full_model_output_shapes(full_shapes):
    _, variables, out = full_shapes
    assert set(variables) == {'params'}  # no buffers, no batch_stats
    assert isinstance(out, ModelOutput)
    assert out.logits.shape == (2, 7) and out.logits.dtype == jnp.float32
    assert out.au_logits.shape == (2, 18) and out.au_logits.dtype == jnp.float32
    assert out.features.shape == (2, 512)


def test_full_model_parameter_count(full_shapes):
    _, variables, _ = full_shapes
    params = dict(variables['params'])
    au = params.pop('au_head')
    assert _count(au) == 512 * 18 + 18
    assert _count(params) == 84_878_343
    # Stacked layout: blocks 0-14 under `blocks` (leading axis 15), block 15 apart.
    assert sorted(params) == ['blocks', 'fc_norm', 'head', 'last_block', 'lg_region_tokens',
                              'patch_embed']
    expected = {'patch_embed': 786_944, 'lg_region_tokens': 4_096, 'fc_norm': 1_024,
                'head': 3_591}
    assert {k: _count(params[k]) for k in expected} == expected
    assert _count([params['blocks'], params['last_block']]) == 84_082_688
    assert _count(params['blocks']) == 15 * 5_255_168
    assert all(leaf.shape[0] == 15 for leaf in jax.tree.leaves(params['blocks']))
    assert _count(params['last_block']) == 5_255_168
    last = params['last_block']
    assert _count([last['third_attn'], last['third_attn_norm0'],
                   last['third_attn_norm1']]) == 1_052_160
    per_block = md.per_block_layout(variables['params'])
    assert all(_count(per_block[f'blocks_{k}']) == 5_255_168 for k in range(16))
    for leaf in jax.tree.leaves(variables):
        assert leaf.dtype == jnp.float32


def test_full_model_block_leaf_shapes_match_state_dict(full_shapes):
    """Every Flax leaf of a block maps onto a mae_dfer.json entry (Linear transposed)."""
    _, variables, _ = full_shapes
    stacked = traverse_util.flatten_dict(variables['params']['blocks'], sep='/')
    last = traverse_util.flatten_dict(variables['params']['last_block'], sep='/')
    expected = {}
    for name in ('first_attn_norm0', 'second_attn_norm0', 'third_attn_norm0',
                 'third_attn_norm1', 'norm2'):
        expected[f'{name}/scale'] = (512,)
        expected[f'{name}/bias'] = (512,)
    for att in ('first_attn', 'second_attn', 'third_attn'):
        # q.weight [512,512] + q_bias; kv.weight [1024,512] split in two; v_bias; proj.
        expected.update({f'{att}/q/kernel': (512, 512), f'{att}/q/bias': (512,),
                         f'{att}/k/kernel': (512, 512), f'{att}/v/kernel': (512, 512),
                         f'{att}/v/bias': (512,), f'{att}/proj/kernel': (512, 512),
                         f'{att}/proj/bias': (512,)})
    expected.update({'mlp/fc1/kernel': (512, 2048), 'mlp/fc1/bias': (2048,),
                     'mlp/fc2/kernel': (2048, 512), 'mlp/fc2/bias': (512,)})
    assert {k: tuple(v.shape) for k, v in stacked.items()} == {
            k: (15,) + v for k, v in expected.items()}
    assert {k: tuple(v.shape) for k, v in last.items()} == expected
    top = variables['params']
    assert top['patch_embed']['proj']['kernel'].shape == (2, 16, 16, 3, 512)
    assert top['lg_region_tokens'].shape == (8, 512)
    assert top['head']['kernel'].shape == (512, 7)


def test_full_model_region_geometry():
    model = md.mae_dfer()
    assert model.token_grid == (8, 10, 10)
    assert model.num_regions == 8


def test_drop_path_rates_match_original():
    rates = md.drop_path_rates(0.1, 16)
    # torch.linspace(0, 0.1, 16) values from spec/state_dicts/mae_dfer.json.
    assert rates[0] == 0.0
    assert rates[1] == pytest.approx(0.006666666828095913, abs=1e-9)
    assert rates[8] == pytest.approx(0.0533333346247673, abs=1e-9)
    assert rates[15] == pytest.approx(0.10000000149011612, abs=1e-9)
    assert md.drop_path_rates(0.1, 1) == [0.0]


# --------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------

def test_sinusoid_table_matches_formula():
    got = md.sinusoid_table(40, 512)
    assert got.shape == (1, 40, 512) and got.dtype == np.float32
    np.testing.assert_allclose(got[0], np_sinusoid(40, 512).astype(np.float32), atol=1e-7)
    full = md.sinusoid_table(800, 512)
    for pos in (1, 399, 799):
        row = [math.sin(pos / 10000 ** (2 * (j // 2) / 512)) if j % 2 == 0
               else math.cos(pos / 10000 ** (2 * (j // 2) / 512)) for j in range(512)]
        np.testing.assert_allclose(full[0, pos], np.float32(row), atol=1e-7)


def test_sinusoid_table_is_not_a_parameter(tiny):
    model, params, _ = tiny
    assert 'pos_embed' not in params
    assert set(params) == {'patch_embed', 'lg_region_tokens', 'blocks', 'last_block',
                           'fc_norm', 'head', 'au_head'}


@pytest.mark.parametrize('grid,region', [((8, 10, 10), (2, 5, 10)), ((4, 4, 4), (2, 2, 4)),
                                         ((4, 6, 6), (2, 3, 2))])
def test_region_partition_matches_index_formula(grid, region):
    n = int(np.prod(grid))
    x = np.random.default_rng(0).normal(size=(2, n, 3)).astype(np.float32)
    got = np.asarray(md.partition_regions(jnp.asarray(x), grid, region))
    np.testing.assert_array_equal(got, np_partition(x, grid, region))
    back = np.asarray(md.merge_regions(jnp.asarray(got), grid, region))
    np.testing.assert_array_equal(back, x)


def test_region_partition_full_size_spec_formula():
    """Token (t,h,w) -> region 2*(t//2) + h//5 at position 50*(t%2) + 10*(h%5) + w."""
    ids = np.arange(800, dtype=np.float32).reshape(1, 800, 1)
    got = np.asarray(md.partition_regions(jnp.asarray(ids), (8, 10, 10), (2, 5, 10)))[0, ..., 0]
    assert got.shape == (8, 100)
    for t in range(8):
        for h in range(10):
            for w in range(10):
                assert got[2 * (t // 2) + h // 5, 50 * (t % 2) + 10 * (h % 5) + w] == (
                    t * 100 + h * 10 + w)


def test_region_partition_matches_einops():
    einops = pytest.importorskip('einops')
    x = np.random.default_rng(1).normal(size=(2, 800, 4)).astype(np.float32)
    ref = einops.rearrange(x, 'b (nt t nh h nw w) c -> b (nt nh nw) (t h w) c',
                           nt=4, t=2, nh=2, h=5, nw=1, w=10)
    got = np.asarray(md.partition_regions(jnp.asarray(x), (8, 10, 10), (2, 5, 10)))
    np.testing.assert_array_equal(got, ref)
    inv = einops.rearrange(ref, 'b (nt nh nw) (t h w) c -> b (nt t nh h nw w) c',
                           nt=4, t=2, nh=2, h=5, nw=1, w=10)
    np.testing.assert_array_equal(
        np.asarray(md.merge_regions(jnp.asarray(ref), (8, 10, 10), (2, 5, 10))), inv)


@pytest.mark.parametrize('cross', [False, True])
def test_attention_matches_numpy(cross):
    rng = np.random.default_rng(3)
    c, heads = 32, 4
    x = rng.normal(size=(3, 7, c)).astype(np.float32)
    ctx = rng.normal(size=(3, 5, c)).astype(np.float32) if cross else x
    att = md.GeneralAttention(num_heads=heads)
    params = jax.eval_shape(att.init, jax.random.key(0), x, ctx if cross else None)['params']
    assert set(params['k']) == {'kernel'}  # no k bias
    assert set(params['q']) == {'kernel', 'bias'} and set(params['v']) == {'kernel', 'bias'}
    # PyTorch-layout weights, mapped to Flax as the module docstring says.
    q_w = rng.normal(size=(c, c)) * 0.3
    kv_w = rng.normal(size=(2 * c, c)) * 0.3
    proj_w = rng.normal(size=(c, c)) * 0.3
    q_bias, v_bias, proj_b = (rng.normal(size=c) for _ in range(3))
    flax_params = {'q': {'kernel': q_w.T, 'bias': q_bias}, 'k': {'kernel': kv_w[:c].T},
                   'v': {'kernel': kv_w[c:].T, 'bias': v_bias},
                   'proj': {'kernel': proj_w.T, 'bias': proj_b}}
    flax_params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), flax_params)
    got = att.apply({'params': flax_params}, x, ctx if cross else None)
    ref = np_attention_torch(x.astype(np.float64), ctx.astype(np.float64), q_w, q_bias, kv_w,
                             v_bias, proj_w, proj_b, heads)
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-4, atol=1e-4)


def test_drop_path_rows_and_scaling():
    dp = md.DropPath(rate=0.25)
    x = jnp.ones((4000, 3, 2))
    y, state = dp.apply({}, x, False, rngs={'dropout': jax.random.key(5)},
                        mutable=['intermediates'])
    y = np.asarray(y)
    per_row = y.reshape(4000, -1)
    assert np.all((per_row == 0.0) | np.isclose(per_row, 1 / 0.75))
    assert np.all(per_row.min(1) == per_row.max(1))  # whole rows
    assert abs((per_row[:, 0] > 0).mean() - 0.75) < 0.03
    (mask,) = state['intermediates']['keep_mask']
    np.testing.assert_array_equal(np.asarray(mask) > 0, per_row[:, 0] > 0)
    np.testing.assert_array_equal(np.asarray(dp.apply({}, x, True)), np.asarray(x))


# --------------------------------------------------------------------------
# Tiny model numerics
# --------------------------------------------------------------------------

def test_tiny_forward_matches_numpy_reference(tiny):
    model, params, clips = tiny
    out = model.apply({'params': params}, clips, train=False)
    assert isinstance(out, ModelOutput)
    assert out.logits.shape == (2, 7) and out.logits.dtype == jnp.float32
    assert out.au_logits.shape == (2, 18) and out.au_logits.dtype == jnp.float32
    assert out.features.shape == (2, 64)
    logits, au, feat = np_forward(md.per_block_layout(params), clips, model)
    np.testing.assert_allclose(np.asarray(out.features), feat, rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(np.asarray(out.logits), logits, rtol=2e-4, atol=5e-4)
    np.testing.assert_allclose(np.asarray(out.au_logits), au, rtol=2e-4, atol=5e-4)


def test_float_input_equals_uint8_over_255(tiny):
    model, params, clips = tiny
    a = model.apply({'params': params}, clips, train=False)
    b = model.apply({'params': params}, clips.astype(np.float32) / 255.0, train=False)
    np.testing.assert_allclose(np.asarray(a.logits), np.asarray(b.logits), atol=1e-5)


def test_bad_input_raises(tiny):
    model, params, clips = tiny
    with pytest.raises(ValueError, match=r'\[B, 8, 32, 32, 3\]'):
        model.apply({'params': params}, clips[:, :4], train=False)
    with pytest.raises(ValueError, match='dtype bool'):
        model.apply({'params': params}, clips > 0, train=False)
    with pytest.raises(ValueError, match='region_size'):
        jax.eval_shape(lambda: md.mae_dfer_tiny(region_size=(3, 2, 4)).init(
            jax.random.key(0), clips, train=False))
    with pytest.raises(TypeError, match='no attribute'):
        md.mae_dfer_tiny(depht=3)


def test_init_follows_original(tiny):
    _, _, clips = tiny
    model = md.mae_dfer_tiny(depth=3)
    params = md.per_block_layout(jax.jit(lambda k: model.init({'params': k}, clips, train=False))(
        jax.random.key(7))['params'])
    head = np.asarray(params['head']['kernel'])
    assert 0.5e-5 < head.std() < 4e-5  # trunc-normal 0.02 x init_scale 0.001
    assert np.all(np.asarray(params['head']['bias']) == 0)
    for dense in (params['au_head'], params['blocks_0']['mlp']['fc1'],
                  params['blocks_1']['first_attn']['q'], params['blocks_2']['mlp']['fc2']):
        assert 0.015 < np.asarray(dense['kernel']).std() < 0.025  # trunc-normal 0.02
        assert np.all(np.asarray(dense['bias']) == 0)
    # Each stacked block has its own draw.
    for name in ('blocks_1', 'blocks_2'):
        assert not np.array_equal(params['blocks_0']['mlp']['fc1']['kernel'],
                                  params[name]['mlp']['fc1']['kernel'])
    assert 0.015 < np.asarray(params['lg_region_tokens']).std() < 0.025
    conv = np.asarray(params['patch_embed']['proj']['kernel'])
    bound = 1 / math.sqrt(2 * 8 * 8 * 3)  # PyTorch Conv3d default U(+-1/sqrt(fan_in))
    assert np.abs(conv).max() <= bound and np.abs(conv).max() > 0.9 * bound
    assert np.all(np.asarray(params['blocks_0']['norm2']['scale']) == 1)
    assert np.all(np.asarray(params['fc_norm']['bias']) == 0)


def test_eval_is_deterministic_and_ignores_drop_path(tiny):
    model, params, clips = tiny
    v = {'params': params}
    e1 = model.apply(v, clips, train=False).features
    e2 = model.apply(v, clips, train=False).features  # no rng needed in eval
    np.testing.assert_array_equal(np.asarray(e1), np.asarray(e2))
    heavy = md.mae_dfer_tiny(drop_path_rate=0.9)
    np.testing.assert_array_equal(
        np.asarray(heavy.apply(v, clips, train=False).features), np.asarray(e1))


def test_drop_path_in_train_fresh_noise_per_use(tiny):
    model, params, clips = tiny
    heavy = md.mae_dfer_tiny(drop_path_rate=0.5)
    run = jax.jit(lambda key: heavy.apply({'params': params}, clips, train=True,
                                          rngs={'dropout': key}, mutable=['intermediates']))
    (out1, state1), (out2, state2), (out1b, _) = (run(jax.random.key(k)) for k in (3, 4, 3))
    f1, f2, f1b = (np.asarray(o.features) for o in (out1, out2, out1b))
    ev = np.asarray(model.apply({'params': params}, clips, train=False).features)
    assert not np.allclose(f1, f2) and not np.allclose(f1, ev)
    np.testing.assert_array_equal(f1, f1b)
    inter = state1['intermediates']
    b, n = clips.shape[0], heavy.num_regions
    # The stacked blocks (here block 0 alone) have rate 0: no drop path at all.
    assert 'blocks' not in inter
    masks = [np.asarray(m) for m in inter['last_block']['drop_path']['keep_mask']]
    # Steps 1 and 4 per region row, steps 2 and 3 per clip.
    assert [m.shape for m in masks] == [(b * n,), (b,), (b,), (b * n,)]
    masks2 = [np.asarray(m)
              for m in state2['intermediates']['last_block']['drop_path']['keep_mask']]
    assert any(not np.array_equal(a, c) for a, c in zip(masks, masks2))
    # Steps 1 and 4 draw separately (8 rows each; with this key they differ).
    assert not np.array_equal(masks[0], masks[3])


def test_bfloat16_activations(tiny):
    model, params, clips = tiny
    bf = md.mae_dfer_tiny(dtype=jnp.bfloat16)
    # Jitted: compiling once is cheaper than eager bfloat16 op by op.
    out = jax.jit(lambda p: bf.apply({'params': p}, clips, train=False))(params)
    ref = model.apply({'params': params}, clips, train=False)
    assert out.logits.dtype == jnp.float32 and out.au_logits.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out.features), np.asarray(ref.features),
                               atol=0.25, rtol=0.1)
    init = jax.eval_shape(lambda: bf.init(jax.random.key(0), clips, train=False))
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(init))


def test_tiny_jit_train_step(tiny, tiny_step):
    _, params, _ = tiny
    new, loss, grads = tiny_step
    assert np.isfinite(float(loss))
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads))
    moved = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), new, params)
    assert moved['blocks']['first_attn']['q']['kernel']
    assert moved['last_block']['first_attn']['q']['kernel']
    assert moved['lg_region_tokens'] and moved['head']['kernel']
    # Frozen-by-design leaves: zero gradient and masked decay -> unchanged.
    assert not moved['last_block']['third_attn']['q']['kernel']
    assert not moved['last_block']['third_attn_norm0']['scale']


def test_last_block_third_attention_gets_no_gradient(tiny, tiny_step):
    model, _, _ = tiny
    _, _, grads = tiny_step
    flat = traverse_util.flatten_dict(grads)
    for path, g in flat.items():
        zero = not np.any(np.asarray(g))
        expect_zero = path[0] == 'last_block' and path[1] in (
            'third_attn', 'third_attn_norm0', 'third_attn_norm1')
        assert zero == expect_zero, path
        assert md.frozen_by_design(path, model.depth) == expect_zero, path
    # The same leaves in the per-block layout (the original's tensor names).
    for path in traverse_util.flatten_dict(md.per_block_layout(grads)):
        expect = path[0] == f'blocks_{model.depth - 1}' and path[1].startswith('third_attn')
        assert md.frozen_by_design(path, model.depth) == expect, path


@pytest.mark.parametrize('policy', ['full', 'dots_with_no_batch_dims_saveable'])
def test_remat_matches_plain(tiny, tiny_step, policy):
    _, params, clips = tiny
    _, _, g1 = tiny_step
    rem = md.mae_dfer_tiny(remat_policy=policy)
    g2 = jax.jit(jax.grad(lambda p: _loss_fn(rem, p, clips, jax.random.key(STEP_KEY))))(params)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-5)


def test_remat_policy_names():
    assert md.mae_dfer_tiny(remat_policy='full').remat_policy == 'full'
    with pytest.raises(ValueError, match='remat_policy must be one of none, full, '):
        jax.eval_shape(lambda: md.mae_dfer_tiny(remat_policy='dots').init(
            jax.random.key(0), jnp.zeros((1, 8, 32, 32, 3), jnp.uint8), train=False))


# --------------------------------------------------------------------------
# Optimiser helpers
# --------------------------------------------------------------------------

def test_lr_layer_id_and_scale():
    assert md.lr_layer_id(('params', 'patch_embed', 'proj', 'kernel'), 16) == 0
    assert md.lr_layer_id(('blocks_0', 'mlp', 'fc1', 'bias'), 16) == 1
    assert md.lr_layer_id(('params', 'blocks_15', 'third_attn', 'k', 'kernel'), 16) == 16
    for top in ('lg_region_tokens', 'fc_norm', 'head', 'au_head'):
        assert md.lr_layer_id(('params', top), 16) == 17
    assert md.lr_scale(('patch_embed', 'proj', 'kernel'), 16) == pytest.approx(0.75 ** 17)
    assert md.lr_scale(('blocks_15', 'norm2', 'scale'), 16) == pytest.approx(0.75)
    assert md.lr_scale(('head', 'kernel'), 16) == 1.0
    key_path = (jax.tree_util.DictKey('params'), jax.tree_util.DictKey('blocks_4'))
    assert md.lr_layer_id(key_path, 16) == 5
    # Stacked layout: one id / scale per row of the leading block axis.
    np.testing.assert_array_equal(md.lr_layer_id(('params', 'blocks', 'mlp', 'fc1', 'bias'), 16),
                                  np.arange(1, 16))
    assert md.lr_layer_id(('params', 'last_block', 'norm2', 'scale'), 16) == 16
    np.testing.assert_allclose(md.lr_scale(('blocks', 'first_attn', 'q', 'kernel'), 16),
                               [0.75 ** (16 - k) for k in range(15)], rtol=1e-15)
    assert md.lr_scale(('last_block', 'mlp', 'fc2', 'kernel'), 16) == pytest.approx(0.75)


def test_no_weight_decay_and_mask(tiny):
    model, params, _ = tiny
    assert md.no_weight_decay(('params', 'lg_region_tokens'))
    assert md.no_weight_decay(('blocks_0', 'first_attn', 'q', 'bias'))
    assert md.no_weight_decay(('blocks_0', 'norm2', 'scale'))
    assert not md.no_weight_decay(('blocks_0', 'first_attn', 'k', 'kernel'))
    assert not md.no_weight_decay(('head', 'kernel'))
    # A stacked leaf counts as its rows: a stacked 1-D leaf is 2-D.
    assert md.no_weight_decay(('blocks', 'mlp', 'fc1', 'weird'), (15, 512))
    assert not md.no_weight_decay(('blocks', 'mlp', 'fc1', 'kernel'), (15, 512, 2048))
    mask = traverse_util.flatten_dict(md.weight_decay_mask(params, model.depth))
    flat = traverse_util.flatten_dict(params)
    for path, leaf in flat.items():
        rank = leaf.ndim - (path[0] == 'blocks')
        expected = (rank >= 2 and path[0] != 'lg_region_tokens'
                    and not (path[0] == 'last_block' and path[1].startswith('third_attn')))
        assert mask[path] == expected, path


def test_last_block_returns_what_the_full_block_returns_for_region_tokens(tiny):
    # The last block skips step 3 and the MLP of the local tokens; its region
    # tokens, the drop-path draws (train mode, heavy rate) and the gradients
    # must equal those of the full block run on the same input.
    model, params, clips = tiny
    heavy = md.mae_dfer_tiny(drop_path_rate=0.5)
    n = heavy.num_regions
    b = clips.shape[0]
    s = 1 + int(np.prod(heavy.token_grid)) // n
    x = jax.random.normal(jax.random.key(5), (b * n, s, heavy.embed_dim))
    block_params = {'params': params['last_block']}
    kwargs = dict(num_regions=n, num_heads=heavy.num_heads, drop_path=0.5)
    full = md.LGBlock(**kwargs)
    short = md.LGBlock(region_tokens_only=True, **kwargs)

    def run(block, p, inputs):
        return block.apply(p, inputs, True, rngs={'dropout': jax.random.key(6)},
                           mutable=['intermediates'])

    (y_full, st_full), (y_short, st_short) = run(full, block_params, x), run(short, block_params, x)
    assert y_short.shape == (b * n, 1, heavy.embed_dim)
    # Equal up to float32 rounding (the MLP's matrix product has 8 rows instead of 8*S).
    np.testing.assert_allclose(np.asarray(y_short[:, 0]), np.asarray(y_full[:, 0]),
                               rtol=1e-4, atol=1e-4)
    masks = lambda st: [np.asarray(m) for m in st['intermediates']['drop_path']['keep_mask']]
    for a, c in zip(masks(st_full), masks(st_short), strict=True):
        np.testing.assert_array_equal(a, c)
    loss = lambda block: (lambda p, xx: jnp.sum(run(block, p, xx)[0][:, 0] ** 2))
    g_full = jax.grad(loss(full), argnums=(0, 1))(block_params, x)
    g_short = jax.grad(loss(short), argnums=(0, 1))(block_params, x)
    for a, c in zip(jax.tree.leaves(g_full), jax.tree.leaves(g_short), strict=True):
        np.testing.assert_allclose(np.asarray(c), np.asarray(a), rtol=1e-4,
                                   atol=1e-4 * max(1.0, float(np.abs(np.asarray(a)).max())))
    # The model uses it for its last block only, and init still creates the
    # complete parameter tree (third_attn* of the last block included).
    assert set(params['last_block']) == set(params['blocks'])
