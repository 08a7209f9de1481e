"""M3DFEL in Flax (audfer_jax.models.m3dfel) and its LSTM, MHSA, DMIN and bag.

Expectations: parameter counts and intermediate shapes from backbones.md
section 2 and state_dicts/m3dfel.json, NumPy restatements of the DMIN and MHSA
formulas of the spec, the einops bag order written out by index, and
`torch.nn.LSTM` itself for the recurrent layer. The full-size model is only
traced with `jax.eval_shape`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.traverse_util import flatten_dict

from audfer_jax.models import layers, m3dfel
from audfer_jax.models.base import ModelOutput
from model_testing import abstract_variables, count, numpy_variables, tiny_clips


@pytest.fixture(scope="module")
def tiny():
    model = m3dfel.m3dfel_tiny(num_classes=7)
    return model, numpy_variables(model, tiny_clips(), train=False, seed=1)


def test_full_parameter_counts_match_the_original():
    # backbones.md: 46,823,384 with a 7-way fc, AU head fc_au (18,450) excluded.
    variables = abstract_variables(m3dfel.m3dfel(num_classes=7), (1, 16, 112, 112, 3))
    params = variables["params"]
    by_module = {k: count(v) for k, v in params.items()}
    assert by_module == {
        "features": 33_166_272,
        "lstm": 10_502_144,
        "to_qkv": 3_145_728,
        "norm": 2_052,
        "pwconv": 13,
        "fc": 7_175,
        "fc_au": 1024 * 18 + 18
    }
    assert count(params) - by_module["fc_au"] == 46_823_384
    flat = {"/".join(k): v.shape for k, v in flatten_dict(params).items()}
    assert flat["features/stem_conv/kernel"] == (3, 7, 7, 3, 64)
    assert flat["features/layer4_0/downsample_conv/kernel"] == (1, 1, 1, 256, 512)
    assert flat["lstm/l1/backward_rnn/cell/ig/kernel"] == (1024, 512)
    assert flat["lstm/l0/forward_rnn/cell/ho/bias"] == (512,)
    assert flat["to_qkv/kernel"] == (1024, 3072)
    assert "to_qkv/bias" not in flat
    assert flat["pwconv/kernel"] == (3, 4, 1)
    assert flat["norm/weight"] == (1024,) and flat["norm/mean_weight"] == (2,)


@pytest.mark.parametrize("batch", [1, 2])
def test_full_output_and_intermediate_shapes(batch):
    model = m3dfel.m3dfel(num_classes=7)
    variables = abstract_variables(model, (1, 16, 112, 112, 3))
    out, state = jax.eval_shape(
        lambda v, c: model.apply(
            v, c, train=False, capture_intermediates=True, mutable=["intermediates"]), variables,
        jax.ShapeDtypeStruct((batch, 16, 112, 112, 3), jnp.uint8))
    assert isinstance(out, ModelOutput)
    # No squeeze quirk: batch 1 gives [1, 7] (the original gives [7]).
    assert out.logits.shape == (batch, 7) and out.logits.dtype == jnp.float32
    assert out.au_logits.shape == (batch, 18) and out.au_logits.dtype == jnp.float32
    assert out.features.shape == (batch, 1024)
    inter = {
        k[:-1]: getattr(v[0], "shape", None)
        for k, v in flatten_dict(state["intermediates"]).items()
    }
    n = 4 * batch  # m3dfel.json intermediate_shapes, NCTHW -> NTHWC
    assert inter[("features", "stem_conv")] == (n, 4, 56, 56, 64)
    assert inter[("features", "layer1_1")] == (n, 4, 56, 56, 64)
    assert inter[("features", "layer2_1")] == (n, 2, 28, 28, 128)
    assert inter[("features", "layer3_1")] == (n, 1, 14, 14, 256)
    assert inter[("features", "layer4_1")] == (n, 1, 7, 7, 512)
    assert inter[("features",)] == (n, 512)
    assert inter[("lstm",)] == (batch, 4, 1024)
    assert inter[("to_qkv",)] == (batch, 4, 3072)
    assert inter[("norm",)] == (batch, 4, 1024)
    assert inter[("pwconv",)] == (batch, 1024, 1)


def test_bag_order_matches_the_einops_rearrange():
    # 'b (t1 t2) c h w -> (b t1) c t2 h w', t1 = 4 instances, t2 = 4 frames:
    # row b*4 + i holds frames 4i .. 4i+3 of clip b.
    b, t = 3, 16
    clips = np.zeros((b, t, 2, 2, 3), np.float32)
    for bi in range(b):
        for ti in range(t):
            clips[bi, ti] = 100 * bi + ti
    bag = np.asarray(m3dfel.make_bag(jnp.asarray(clips), 4))
    assert bag.shape == (12, 4, 2, 2, 3)
    for bi in range(b):
        for i in range(4):
            for j in range(4):
                assert np.all(bag[bi * 4 + i, j] == 100 * bi + 4 * i + j)
    with pytest.raises(ValueError, match="instances of 5"):
        m3dfel.make_bag(jnp.asarray(clips), 5)


def _np_dmin(a, weight, bias, mean_weight, var_weight, eps=1e-5):
    """backbones.md section 2 step 3, written per clip with explicit loops' sums."""
    a = np.asarray(a, np.float64)
    out = np.empty_like(a)
    sm = lambda z: np.exp(z) / np.exp(z).sum()  # noqa: E731
    wm, wv = sm(np.asarray(mean_weight, np.float64)), sm(np.asarray(var_weight, np.float64))
    n = a.shape[1]
    for b in range(a.shape[0]):
        mu_in = a[b].sum(0) / n
        var_in = ((a[b] - mu_in)**2).sum(0) / (n - 1)  # unbiased, divisor N-1
        mu_ln = mu_in.mean()
        var_ln = (var_in + mu_in**2).mean() - mu_ln**2
        mean = wm[0] * mu_in + wm[1] * mu_ln
        var = wv[0] * var_in + wv[1] * var_ln
        out[b] = (a[b] - mean) / np.sqrt(var + eps) * weight + bias
    return out


def test_dmin_matches_the_spec_formula():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 4, 10)) * 2 + 0.5
    weight, bias = rng.standard_normal(10), rng.standard_normal(10)
    mean_weight, var_weight = np.array([0.3, -1.2]), np.array([1.5, 0.1])
    got = m3dfel.dmin(jnp.asarray(a, jnp.float32), jnp.asarray(weight, jnp.float32),
                      jnp.asarray(bias, jnp.float32), jnp.asarray(mean_weight, jnp.float32),
                      jnp.asarray(var_weight, jnp.float32))
    np.testing.assert_allclose(np.asarray(got),
                               _np_dmin(a, weight, bias, mean_weight, var_weight),
                               rtol=1e-4,
                               atol=1e-5)
    # The module holds the same four parameters, initialised ones / zeros / ones.
    module = m3dfel.DMIN()
    params = module.init(jax.random.key(0), jnp.asarray(a, jnp.float32))["params"]
    assert {
        k: v.shape for k, v in params.items()
    } == {
        "weight": (10,),
        "bias": (10,),
        "mean_weight": (2,),
        "var_weight": (2,)
    }
    np.testing.assert_array_equal(np.asarray(params["mean_weight"]), [1.0, 1.0])
    want = _np_dmin(a, np.ones(10), np.zeros(10), np.ones(2), np.ones(2))
    np.testing.assert_allclose(np.asarray(
        module.apply({"params": params}, jnp.asarray(a, jnp.float32))),
                               want,
                               rtol=1e-4,
                               atol=1e-5)


def test_mhsa_splits_packed_qkv_head_major():
    # M3DFEL MIL: qkv = to_qkv(h) chunked in three; 'b n (h d) -> b h n d';
    # softmax(q k^T d^-0.5) v; 'b h n d -> b n (h d)'; no output projection.
    rng = np.random.default_rng(1)
    heads, d, width, n = 4, 5, 12, 4
    x = rng.standard_normal((2, n, width))
    w_torch = rng.standard_normal((3 * heads * d, width)) / np.sqrt(width)  # [3hd, D]
    q, k, v = (
        np.einsum("bnc,oc->bno", x, w_torch[i * heads * d:(i + 1) * heads * d]) for i in range(3))
    qh, kh, vh = (t.reshape(2, n, heads, d).transpose(0, 2, 1, 3) for t in (q, k, v))
    logits = np.einsum("bhid,bhjd->bhij", qh, kh) * d**-0.5
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    want = np.einsum("bhij,bhjd->bhid", p, vh).transpose(0, 2, 1, 3).reshape(2, n, heads * d)
    qkv = jnp.asarray(x, jnp.float32) @ jnp.asarray(w_torch.T, jnp.float32)  # kernel = weight.T
    got = layers.multi_head_attention(*layers.split_qkv(qkv), heads=heads)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)


def test_bilstm_matches_torch_lstm():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    hidden, feat, length = 6, 5, 4
    ref = torch.nn.LSTM(input_size=feat,
                        hidden_size=hidden,
                        num_layers=2,
                        batch_first=True,
                        bidirectional=True)
    x = np.random.default_rng(2).standard_normal((3, length, feat)).astype(np.float32)
    with torch.no_grad():
        want = ref(torch.from_numpy(x))[0].numpy()
    sd = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    # The mapping documented in layers.TorchLSTMCell / BiLSTM.
    params = {}
    for layer in range(2):
        for suffix, direction in (("", "forward_rnn"), ("_reverse", "backward_rnn")):
            cell = {}
            for src, prefix in (("ih", "i"), ("hh", "h")):
                w = np.split(sd[f"weight_{src}_l{layer}{suffix}"], 4)
                b = np.split(sd[f"bias_{src}_l{layer}{suffix}"], 4)
                for gate, wg, bg in zip("ifgo", w, b):
                    cell[prefix + gate] = {"kernel": jnp.asarray(wg.T), "bias": jnp.asarray(bg)}
            params.setdefault(f"l{layer}", {})[direction] = {"cell": cell}
    module = layers.BiLSTM(hidden, num_layers=2)
    abstract = jax.eval_shape(lambda a: module.init(jax.random.key(0), a), jnp.asarray(x))
    assert (jax.tree.map(lambda a: a.shape,
                         abstract["params"]) == jax.tree.map(lambda a: a.shape, params))
    got = np.asarray(module.apply({"params": params}, jnp.asarray(x)))
    assert got.shape == (3, length, 2 * hidden)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_basic_block_3d_pads_like_pytorch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    block = layers.BasicBlock(6, (2, 2, 2))
    # T = 2 -> 1 and H, W = 5 -> 3: odd and tiny sizes where asymmetric padding
    # would change the result.
    x = np.random.default_rng(3).standard_normal((2, 2, 5, 5, 3)).astype(np.float32)
    variables = numpy_variables(block, jnp.asarray(x), train=False)
    p = variables["params"]
    got = np.asarray(block.apply(variables, jnp.asarray(x), train=False))

    def w(name):  # Flax [kt, kh, kw, I, O] -> PyTorch [O, I, kt, kh, kw]
        return torch.from_numpy(np.asarray(p[name]["kernel"]).transpose(4, 3, 0, 1, 2).copy())

    bn = 1.0 / np.sqrt(1.0 + 1e-5)
    tx = torch.from_numpy(x.transpose(0, 4, 1, 2, 3).copy())
    y = F.relu(F.conv3d(tx, w("conv1"), stride=2, padding=1) * bn)
    y = F.conv3d(y, w("conv2"), padding=1) * bn
    y = F.relu(y + F.conv3d(tx, w("downsample_conv"), stride=2) * bn)
    np.testing.assert_allclose(got, y.numpy().transpose(0, 2, 3, 4, 1), rtol=1e-4, atol=1e-5)


def test_tiny_eval_is_deterministic_and_gated_pooling(tiny):
    model, variables = tiny
    clips = tiny_clips(seed=5)
    apply = jax.jit(lambda v, c: model.apply(
        v, c, train=False, capture_intermediates=True, mutable=["intermediates"]))
    (a, state), (b, _) = apply(variables, clips), apply(variables, clips)
    assert a.logits.shape == (2, 7) and a.au_logits.shape == (2, 18)
    assert a.features.shape == (2, 32)
    np.testing.assert_array_equal(np.asarray(a.logits), np.asarray(b.logits))
    # Pooling restated: g = h * sigmoid(DMIN(a)); Conv1d with the 4 instances as
    # channels over the features, kernel 3, padding 1.
    inter = state["intermediates"]
    h = np.asarray(inter["lstm"]["__call__"][0], np.float64)
    g = h / (1 + np.exp(-np.asarray(inter["norm"]["__call__"][0], np.float64)))
    kernel = np.asarray(variables["params"]["pwconv"]["kernel"], np.float64)[:, :, 0]  # [3, 4]
    padded = np.pad(g, ((0, 0), (0, 0), (1, 1)))  # [B, 4, F + 2]
    f = g.shape[-1]
    pooled = np.stack([
        np.einsum("bkn,kn->b", padded[:, :, j:j + 3].transpose(0, 2, 1), kernel) for j in range(f)
    ],
                      axis=1) + float(variables["params"]["pwconv"]["bias"][0])
    np.testing.assert_allclose(np.asarray(a.features), pooled, rtol=1e-4, atol=1e-5)


def test_tiny_train_step_updates_params_and_batch_stats(tiny):
    model, variables = tiny
    clips = tiny_clips(seed=6)
    labels = jnp.array([0, 6])
    tx = optax.sgd(0.01)
    params, stats = variables["params"], variables["batch_stats"]

    @jax.jit
    def step(params, stats):

        def loss_fn(p):
            out, new = model.apply({
                "params": p,
                "batch_stats": stats
            },
                                   clips,
                                   train=True,
                                   mutable=["batch_stats"])
            loss = optax.softmax_cross_entropy_with_integer_labels(out.logits, labels).mean()
            loss += optax.sigmoid_binary_cross_entropy(out.au_logits, 0.5).mean()
            return loss, new["batch_stats"]

        (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, _ = tx.update(grads, tx.init(params), params)
        return optax.apply_updates(params, updates), new_stats, loss, grads

    new_params, new_stats, loss, grads = step(params, stats)
    assert np.isfinite(float(loss))
    zero = [k for k, g in flatten_dict(grads, sep="/").items() if not np.any(np.asarray(g))]
    assert zero == []  # backbones.md: the backward pass reaches every parameter
    assert not np.allclose(np.asarray(new_params["to_qkv"]["kernel"]),
                           np.asarray(params["to_qkv"]["kernel"]))
    old = np.asarray(stats["features"]["stem_bn"]["var"])
    new = np.asarray(new_stats["features"]["stem_bn"]["var"])
    assert np.all(old == 1) and np.any(new != 1)
