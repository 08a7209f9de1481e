"""Former-DFER in Flax (audfer_jax.models.former_dfer) and the shared layers it uses.

Expectations come from the spec (backbones.md section 1 and
state_dicts/former_dfer.json: parameter counts, intermediate shapes), from NumPy
re-statements of the attention formula, and from PyTorch's own convolution (the
padding rules of backbones.md section 4). The full-size model is only traced
with `jax.eval_shape`; everything that runs uses the tiny variant.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.traverse_util import flatten_dict

from audfer_jax.models import former_dfer, layers
from audfer_jax.models.base import ModelOutput
from model_testing import count as _count
from model_testing import abstract_variables, numpy_variables, tiny_clips


@pytest.fixture(scope="module")
def tiny():
    model = former_dfer.former_dfer_tiny(num_classes=7)
    return model, numpy_variables(model, tiny_clips(), train=False, seed=1)


def test_full_parameter_counts_match_the_original():
    # backbones.md table: 18,031,943 with a 7-way fc, AU head (9,234) excluded.
    variables = abstract_variables(former_dfer.former_dfer(num_classes=7), (1, 16, 112, 112, 3))
    params = variables["params"]
    by_module = {k: _count(v) for k, v in params.items()}
    assert by_module == {
        "s_former": 11_715_392,
        "t_former": 6_312_960,
        "fc": 3_591,
        "AU_fc": 512 * 18 + 18
    }
    assert _count(params) - by_module["AU_fc"] == 18_031_943
    # Running statistics: one mean and one var per BatchNorm channel.
    n_bn_channels = 64 + 4 * 64 + 4 * 128 + 128 + 4 * 256 + 256 + 4 * 512 + 512
    assert _count(variables["batch_stats"]) == 2 * n_bn_channels


def test_full_parameter_shapes_match_the_state_dict():
    # Every PyTorch parameter has a Flax leaf with the same number of elements;
    # spot-check the layouts of backbones.md section 4.
    params = flatten_dict(abstract_variables(former_dfer.former_dfer(),
                                              (1, 16, 112, 112, 3))["params"],
                          sep="/")
    shapes = {k: tuple(v.shape) for k, v in params.items()}
    assert shapes["s_former/pos_embedding"] == (1, 49, 256)
    assert shapes["s_former/conv1/kernel"] == (7, 7, 3, 64)
    assert shapes["s_former/layer4_0/downsample_conv/kernel"] == (1, 1, 256, 512)
    assert shapes["s_former/spatial_transformer/layers_0/attn/to_qkv/kernel"] == (256, 768)
    assert shapes["t_former/cls_token"] == (1, 1, 512)
    assert shapes["t_former/pos_embedding"] == (1, 17, 512)
    assert shapes["t_former/spatial_transformer/layers_2/ff/net_0/kernel"] == (512, 1024)
    assert "t_former/spatial_transformer/layers_3/attn/to_qkv/kernel" not in shapes
    assert shapes["fc/kernel"] == (512, 7)
    # former_dfer.json lists 169 state_dict entries: 20 BatchNorms x 3 buffers
    # (running mean/var, num_batches_tracked) and 109 parameters; Flax has the
    # 109 plus the AU head's kernel and bias.
    assert len(shapes) == 109 + 2


def test_full_output_and_intermediate_shapes():
    model = former_dfer.former_dfer(num_classes=7)
    variables = abstract_variables(model, (1, 16, 112, 112, 3))

    def run(v, c):
        return model.apply(v, c, train=False, capture_intermediates=True, mutable=["intermediates"])

    out, state = jax.eval_shape(run, variables, jax.ShapeDtypeStruct((2, 16, 112, 112, 3),
                                                                     jnp.uint8))
    assert isinstance(out, ModelOutput)
    assert out.logits.shape == (2, 7) and out.logits.dtype == jnp.float32
    assert out.au_logits.shape == (2, 18) and out.au_logits.dtype == jnp.float32
    assert out.features.shape == (2, 512)
    inter = {
        k[:-1]: getattr(v[0], "shape", None)
        for k, v in flatten_dict(state["intermediates"]).items()
    }
    # former_dfer.json intermediate_shapes, batch 2 -> 32 frames, NCHW -> NHWC.
    assert inter[("s_former", "conv1")] == (32, 56, 56, 64)
    assert inter[("s_former", "layer1_1")] == (32, 28, 28, 64)
    assert inter[("s_former", "layer2_1")] == (32, 14, 14, 128)
    assert inter[("s_former", "layer3_1")] == (32, 7, 7, 256)
    assert inter[("s_former", "spatial_transformer")] == (32, 49, 256)
    assert inter[("s_former", "layer4_1")] == (32, 4, 4, 512)
    assert inter[("s_former",)] == (32, 512)
    assert inter[("t_former", "spatial_transformer")] == (2, 17, 512)
    assert inter[("t_former",)] == (2, 512)


def test_bfloat16_keeps_float32_params_and_outputs():
    model = former_dfer.former_dfer_tiny(dtype=jnp.bfloat16)
    variables = abstract_variables(model, (2, 8, 32, 32, 3))
    assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    out = jax.eval_shape(lambda v, c: model.apply(v, c, train=False), variables,
                         jax.ShapeDtypeStruct((2, 8, 32, 32, 3), jnp.uint8))
    assert out.logits.dtype == jnp.float32 and out.au_logits.dtype == jnp.float32
    inter = jax.eval_shape(
        lambda v, c: model.apply(
            v, c, train=False, capture_intermediates=True, mutable=["intermediates"])[1], variables,
        jax.ShapeDtypeStruct((2, 8, 32, 32, 3), jnp.uint8))
    assert inter["intermediates"]["s_former"]["conv1"]["__call__"][0].dtype == jnp.bfloat16


def test_wrong_clip_shape_raises():
    model = former_dfer.former_dfer_tiny()
    with pytest.raises(ValueError, match=r"\[B, 8, 32, 32, 3\]"):
        abstract_variables(model, (2, 16, 32, 32, 3))


def test_tiny_eval_is_deterministic_and_uint8_equals_scaled_float(tiny):
    model, variables = tiny
    clips = tiny_clips(seed=3)
    apply = jax.jit(lambda v, c: model.apply(v, c, train=False))
    a, b = apply(variables, clips), apply(variables, clips)
    assert a.logits.shape == (2, 7) and a.au_logits.shape == (2, 18)
    assert a.features.shape == (2, 64)
    np.testing.assert_array_equal(np.asarray(a.logits), np.asarray(b.logits))
    # Normalisation is /255 inside the model (backbones.md section 1).
    c = apply(variables, clips.astype(jnp.float32) / 255.0)
    np.testing.assert_allclose(np.asarray(c.logits), np.asarray(a.logits), rtol=1e-5, atol=1e-5)
    # The AU head reads the same pooled feature as fc.
    au = a.features @ variables["params"]["AU_fc"]["kernel"] + variables["params"]["AU_fc"]["bias"]
    np.testing.assert_allclose(np.asarray(a.au_logits), np.asarray(au), rtol=1e-5, atol=1e-5)


def test_tiny_train_step_updates_params_and_batch_stats(tiny):
    model, variables = tiny
    clips = tiny_clips(seed=4)
    labels = jnp.array([1, 5])
    tx = optax.sgd(0.01, momentum=0.9)
    params, stats = variables["params"], variables["batch_stats"]
    opt_state = tx.init(params)

    @jax.jit
    def step(params, stats, opt_state):

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
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_stats, opt_state, loss, grads

    new_params, new_stats, _, loss, grads = step(params, stats, opt_state)
    assert np.isfinite(float(loss))
    # Every parameter receives a gradient (backbones.md: backward reaches all).
    zero = [k for k, g in flatten_dict(grads, sep="/").items() if not np.any(np.asarray(g))]
    assert zero == []
    assert not np.allclose(np.asarray(new_params["fc"]["kernel"]), np.asarray(
        params["fc"]["kernel"]))
    # Train mode updates the running statistics with momentum 0.1 (PyTorch).
    old_mean = np.asarray(stats["s_former"]["bn1"]["mean"])
    new_mean = np.asarray(new_stats["s_former"]["bn1"]["mean"])
    assert np.all(old_mean == 0) and np.any(new_mean != 0)


def _np_attention(x, w_qkv, heads):
    """NumPy restatement of Former-DFER's Attention core: PyTorch weight rows
    [0:hd] q, [hd:2hd] k, [2hd:3hd] v, each `(h d)` head-major."""
    w = w_qkv.T  # PyTorch to_qkv.weight [3hd, D]
    inner = w.shape[0] // 3
    d = inner // heads
    q, k, v = (x @ w[i * inner:(i + 1) * inner].T for i in range(3))
    out = np.zeros(q.shape)
    for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        logits = np.einsum("bnd,bmd->bnm", q[..., sl], k[..., sl]) / np.sqrt(d)
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        out[..., sl] = p @ v[..., sl]
    return out


def test_attention_packed_qkv_is_head_major():
    attn = layers.Attention(heads=4, dim_head=6)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 12)).astype(np.float32)
    params = numpy_variables(attn, jnp.asarray(x))["params"]
    got = np.asarray(attn.apply({"params": params}, jnp.asarray(x)))
    core = _np_attention(x.astype(np.float64),
                         np.asarray(params["to_qkv"]["kernel"], np.float64),
                         heads=4)
    want = core @ np.asarray(params["to_out"]["kernel"]) + np.asarray(params["to_out"]["bias"])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_transformer_layer_is_pre_norm_with_tanh_gelu():
    layer = layers.TransformerLayer(heads=2, dim_head=4, mlp_dim=16)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 4, 8)).astype(np.float32)
    params = numpy_variables(layer, jnp.asarray(x))["params"]
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)

    def ln(y, s):
        mu = y.mean(-1, keepdims=True)
        var = ((y - mu)**2).mean(-1, keepdims=True)
        return (y - mu) / np.sqrt(var + 1e-5) * s["scale"] + s["bias"]

    def gelu_tanh(y):
        return 0.5 * y * (1 + np.tanh(np.sqrt(2 / np.pi) * (y + 0.044715 * y**3)))

    y = x.astype(np.float64)
    a = _np_attention(ln(y, p["attn_norm"]), p["attn"]["to_qkv"]["kernel"], heads=2)
    y = y + a @ p["attn"]["to_out"]["kernel"] + p["attn"]["to_out"]["bias"]
    h = gelu_tanh(ln(y, p["ff_norm"]) @ p["ff"]["net_0"]["kernel"] + p["ff"]["net_0"]["bias"])
    y = y + h @ p["ff"]["net_3"]["kernel"] + p["ff"]["net_3"]["bias"]
    got = np.asarray(layer.apply({"params": params}, jnp.asarray(x)))
    np.testing.assert_allclose(got, y, rtol=1e-4, atol=1e-5)


def test_basic_block_2d_pads_like_pytorch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    block = layers.BasicBlock(8, (2, 2))
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 10, 10, 4)).astype(np.float32)
    variables = numpy_variables(block, jnp.asarray(x), train=False)
    p = variables["params"]
    got = np.asarray(block.apply(variables, jnp.asarray(x), train=False))

    def w(name):  # Flax [kh, kw, I, O] -> PyTorch [O, I, kh, kw]
        return torch.from_numpy(np.asarray(p[name]["kernel"]).transpose(3, 2, 0, 1).copy())

    bn = 1.0 / np.sqrt(1.0 + 1e-5)  # fresh statistics: mean 0, var 1, scale 1, bias 0
    tx = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    y = F.relu(F.conv2d(tx, w("conv1"), stride=2, padding=1) * bn)
    y = F.conv2d(y, w("conv2"), padding=1) * bn
    y = F.relu(y + F.conv2d(tx, w("downsample_conv"), stride=2) * bn)
    np.testing.assert_allclose(got, y.numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-5)


def test_drop_path_drops_whole_rows_and_rescales():
    dp = layers.DropPath(0.5)
    x = jnp.ones((64, 3, 5))
    y = np.asarray(dp.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)}))
    per_row = y.reshape(64, -1)
    assert set(np.unique(per_row)) <= {0.0, 2.0}
    assert np.all(per_row.min(1) == per_row.max(1))  # a row is dropped or kept whole
    assert 0 < (per_row[:, 0] == 0).sum() < 64
    np.testing.assert_array_equal(np.asarray(dp.apply({}, x, deterministic=True)), np.asarray(x))
