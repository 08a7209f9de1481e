"""Layer-level parity of `audfer_jax.models.convert` against PyTorch.

Each test builds a PyTorch layer with random weights, converts its weights with
the layer function under test, runs the Flax module configured as the models
use it (backbones.md section 4) on the same random input (channels-last), and
compares to 1e-5. Shapes are small except where the padding case needs the real
size (the 7x7/s2/p3 stem on 112x112).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from audfer_jax.models import convert

torch = pytest.importorskip("torch")
F = torch.nn.functional

TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    torch.set_num_threads(1)


def _np(t) -> np.ndarray:
    return t.detach().numpy()


def _apply(module: nn.Module, variables, x, **kwargs) -> np.ndarray:
    return np.asarray(module.apply(variables, jnp.asarray(x), **kwargs))


# --------------------------------------------------------------- convolutions


@pytest.mark.parametrize("cin,cout,k,s,p,size", [
    (3, 8, 7, 2, 3, 112),   # Former-DFER stem: 112 -> 56
    (4, 6, 3, 2, 1, 14),    # BasicBlock first conv of layers 2-4 on an even size
    (4, 6, 3, 1, 1, 7),
    (4, 6, 1, 2, 0, 14),    # downsample 1x1, stride 2
])
def test_conv2d_parity(cin, cout, k, s, p, size):
    layer = torch.nn.Conv2d(cin, cout, k, stride=s, padding=p, bias=False)
    x = torch.randn(2, cin, size, size)
    want = _np(layer(x))
    module = nn.Conv(cout, (k, k), strides=(s, s), padding=((p, p), (p, p)), use_bias=False)
    got = _apply(module, {"params": convert.conv(_np(layer.weight))},
                 convert.activations_to_flax(_np(x), "NCHW"))
    np.testing.assert_allclose(got, convert.activations_to_flax(want, "NCHW"), **TOL)


def test_same_padding_differs_from_pytorch_padding():
    """backbones.md section 4: 'SAME' pads (2,3) on the 7x7/s2 stem, not (3,3)."""
    layer = torch.nn.Conv2d(3, 4, 7, stride=2, padding=3, bias=False)
    x = torch.randn(1, 3, 112, 112)
    want = convert.activations_to_flax(_np(layer(x)), "NCHW")
    module = nn.Conv(4, (7, 7), strides=(2, 2), padding="SAME", use_bias=False)
    got = _apply(module, {"params": convert.conv(_np(layer.weight))},
                 convert.activations_to_flax(_np(x), "NCHW"))
    assert got.shape == want.shape
    assert np.abs(got - want).max() > 1e-2


def test_conv2d_with_bias():
    layer = torch.nn.Conv2d(3, 5, 3, padding=1, bias=True)
    x = torch.randn(2, 3, 8, 8)
    module = nn.Conv(5, (3, 3), padding=((1, 1), (1, 1)))
    got = _apply(module, {"params": convert.conv(_np(layer.weight), _np(layer.bias))},
                 convert.activations_to_flax(_np(x), "NCHW"))
    np.testing.assert_allclose(got, convert.activations_to_flax(_np(layer(x)), "NCHW"), **TOL)


@pytest.mark.parametrize("cin,cout,k,s,p,thw", [
    (3, 8, (3, 7, 7), (1, 2, 2), (1, 3, 3), (4, 28, 28)),   # R3D-18 stem
    (4, 6, (3, 3, 3), (2, 2, 2), (1, 1, 1), (4, 8, 8)),     # layer2-4 first conv (t 4 -> 2)
    (4, 6, (3, 3, 3), (2, 2, 2), (1, 1, 1), (2, 6, 6)),     # t 2 -> 1
    (4, 6, (1, 1, 1), (2, 2, 2), (0, 0, 0), (4, 8, 8)),     # downsample
])
def test_conv3d_parity(cin, cout, k, s, p, thw):
    layer = torch.nn.Conv3d(cin, cout, k, stride=s, padding=p, bias=False)
    x = torch.randn(2, cin, *thw)
    module = nn.Conv(cout, k, strides=s, padding=tuple((q, q) for q in p), use_bias=False)
    got = _apply(module, {"params": convert.conv(_np(layer.weight))},
                 convert.activations_to_flax(_np(x), "NCTHW"))
    np.testing.assert_allclose(got, convert.activations_to_flax(_np(layer(x)), "NCTHW"), **TOL)


def test_conv3d_patch_embedding_parity():
    """MAE-DFER patch embedding: kernel = stride = (2, 16, 16), bias, VALID."""
    layer = torch.nn.Conv3d(3, 8, (2, 16, 16), stride=(2, 16, 16))
    x = torch.randn(1, 3, 4, 32, 32)
    module = nn.Conv(8, (2, 16, 16), strides=(2, 16, 16), padding="VALID")
    got = _apply(module, {"params": convert.conv(_np(layer.weight), _np(layer.bias))},
                 convert.activations_to_flax(_np(x), "NCTHW"))
    want = _np(layer(x))
    np.testing.assert_allclose(got, convert.activations_to_flax(want, "NCTHW"), **TOL)
    # Token order t*H*W + h*W + w: PyTorch's flatten(2).transpose(1, 2).
    tokens_torch = want.reshape(1, 8, -1).transpose(0, 2, 1)
    np.testing.assert_allclose(got.reshape(1, -1, 8), tokens_torch, **TOL)


def test_conv1d_parity_m3dfel_pwconv():
    """M3DFEL `pwconv`: Conv1d(4 -> 1, k3, p1) with the 4 instances as channels."""
    layer = torch.nn.Conv1d(4, 1, 3, stride=1, padding=1)
    gated = torch.randn(2, 4, 32)          # [B, instances, features]
    want = _np(layer(gated))               # [B, 1, features]
    module = nn.Conv(1, (3,), padding=((1, 1),))
    got = _apply(module, {"params": convert.conv(_np(layer.weight), _np(layer.bias))},
                 convert.activations_to_flax(_np(gated), "NCL"))   # [B, features, 4]
    np.testing.assert_allclose(got[..., 0], want[:, 0], **TOL)


def test_conv_kernel_layouts():
    w = np.arange(2 * 3 * 4 * 5 * 6).reshape(2, 3, 4, 5, 6)
    k = convert.conv_kernel(w)
    assert k.shape == (4, 5, 6, 3, 2)
    assert k[1, 2, 3, 2, 1] == w[1, 2, 1, 2, 3]
    assert convert.conv_kernel(w[..., 0, 0]).shape == (4, 3, 2)
    with pytest.raises(ValueError, match="conv weight"):
        convert.conv_kernel(np.zeros((3, 4)))


def test_max_pool_padding_matches_pytorch():
    x = torch.randn(2, 3, 56, 56)
    want = convert.activations_to_flax(_np(F.max_pool2d(x, 3, 2, 1)), "NCHW")
    got = nn.max_pool(jnp.asarray(convert.activations_to_flax(_np(x), "NCHW")), (3, 3),
                      strides=(2, 2), padding=((1, 1), (1, 1)))
    np.testing.assert_allclose(np.asarray(got), want, **TOL)


# -------------------------------------------------------------- normalisation


def _random_bn(bn):
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
    return bn.eval()


@pytest.mark.parametrize("dims", [2, 3])
def test_batch_norm_eval_parity(dims):
    bn = _random_bn(torch.nn.BatchNorm2d(6) if dims == 2 else torch.nn.BatchNorm3d(6))
    x = torch.randn(2, 6, *([5] * dims)) * 3 + 1
    want = _np(bn(x))
    params, stats = convert.batch_norm(_np(bn.weight), _np(bn.bias), _np(bn.running_mean),
                                       _np(bn.running_var))
    module = nn.BatchNorm(use_running_average=True, momentum=0.9, epsilon=1e-5,
                          use_fast_variance=False)
    layout = "NCHW" if dims == 2 else "NCTHW"
    got = _apply(module, {"params": params, "batch_stats": stats},
                 convert.activations_to_flax(_np(x), layout))
    np.testing.assert_allclose(got, convert.activations_to_flax(want, layout), **TOL)


@pytest.mark.parametrize("eps", [1e-5, 1e-6])
def test_layer_norm_parity(eps):
    ln = torch.nn.LayerNorm(16, eps=eps)
    with torch.no_grad():
        ln.weight.normal_()
        ln.bias.normal_()
    # A common offset, where E[x^2] - E[x]^2 (use_fast_variance=True) loses digits.
    x = torch.randn(3, 5, 16) * 0.5 + 4.0
    module = nn.LayerNorm(epsilon=eps, use_fast_variance=False)
    got = _apply(module, {"params": convert.layer_norm(_np(ln.weight), _np(ln.bias))}, _np(x))
    np.testing.assert_allclose(got, _np(ln(x)), **TOL)


def test_linear_parity():
    layer = torch.nn.Linear(12, 7)
    x = torch.randn(4, 12)
    got = _apply(nn.Dense(7), {"params": convert.dense(_np(layer.weight), _np(layer.bias))},
                 _np(x))
    np.testing.assert_allclose(got, _np(layer(x)), **TOL)
    with pytest.raises(ValueError, match="linear weight"):
        convert.dense_kernel(np.zeros((2, 3, 4)))


# ------------------------------------------------------------------ attention


def _torch_packed_attention(x, to_qkv, to_out, heads):
    """Former-DFER `Attention.forward` (S_Former.py), written here from the spec."""
    b, n, _ = x.shape
    q, k, v = to_qkv(x).chunk(3, dim=-1)
    q, k, v = (t.reshape(b, n, heads, -1).transpose(1, 2) for t in (q, k, v))
    scale = q.shape[-1] ** -0.5
    attn = (q @ k.transpose(-1, -2) * scale).softmax(dim=-1)
    out = (attn @ v).transpose(1, 2).reshape(b, n, -1)
    return out if to_out is None else to_out(out)


class _SplitQKVAttention(nn.Module):
    """Flax attention with separate q/k/v Dense layers, head-major heads."""
    heads: int
    dim: int
    q_bias: bool = False
    k_bias: bool = False
    v_bias: bool = False
    out_proj: bool = True

    @nn.compact
    def __call__(self, x, ctx=None):
        ctx = x if ctx is None else ctx
        q = nn.Dense(self.dim, use_bias=self.q_bias, name="q")(x)
        k = nn.Dense(self.dim, use_bias=self.k_bias, name="k")(ctx)
        v = nn.Dense(self.dim, use_bias=self.v_bias, name="v")(ctx)
        split = lambda t: t.reshape(t.shape[:2] + (self.heads, -1))
        q, k, v = split(q), split(k), split(v)
        w = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q * q.shape[-1] ** -0.5, k), -1)
        out = jnp.einsum("bhqk,bkhd->bqhd", w, v).reshape(x.shape[:2] + (self.dim,))
        return nn.Dense(x.shape[-1], name="out")(out) if self.out_proj else out


@pytest.mark.parametrize("dim,heads,out_proj", [(32, 4, True), (48, 8, False)])
def test_packed_qkv_attention_parity(dim, heads, out_proj):
    to_qkv = torch.nn.Linear(dim, 3 * dim, bias=False)
    to_out = torch.nn.Linear(dim, dim) if out_proj else None
    x = torch.randn(2, 9, dim)
    want = _np(_torch_packed_attention(x, to_qkv, to_out, heads))
    q, k, v = convert.split_packed_qkv(_np(to_qkv.weight))
    params = {"q": {"kernel": q}, "k": {"kernel": k}, "v": {"kernel": v}}
    if out_proj:
        params["out"] = convert.dense(_np(to_out.weight), _np(to_out.bias))
    module = _SplitQKVAttention(heads, dim, out_proj=out_proj)
    np.testing.assert_allclose(_apply(module, {"params": params}, _np(x)), want, **TOL)


def test_packed_qkv_kernel_as_one_dense():
    """One Dense [D, 3hd] keeps PyTorch's row order: its output chunks are q, k, v."""
    to_qkv = torch.nn.Linear(16, 48, bias=False)
    x = torch.randn(3, 16)
    q, k, v = convert.split_packed_qkv(_np(to_qkv.weight))
    packed = convert.dense_kernel(_np(to_qkv.weight))
    np.testing.assert_array_equal(packed, np.concatenate([q, k, v], axis=1))
    want = [_np(t) for t in to_qkv(x).chunk(3, dim=-1)]
    for got, w in zip((_np(x) @ q, _np(x) @ k, _np(x) @ v), want):
        np.testing.assert_allclose(got, w, **TOL)


def _torch_mae_attention(x, ctx, q_w, kv_w, q_bias, v_bias, proj, heads):
    """MAE-DFER `GeneralAttention.forward` (modeling_finetune.py), from the spec."""
    b, n, c = x.shape
    q = F.linear(x, q_w, q_bias)
    kv = F.linear(ctx, kv_w, torch.cat([torch.zeros_like(v_bias), v_bias]))
    k, v = kv.chunk(2, dim=-1)
    q, k, v = (t.reshape(b, t.shape[1], heads, -1).transpose(1, 2) for t in (q, k, v))
    q = q * q.shape[-1] ** -0.5
    attn = (q @ k.transpose(-1, -2)).softmax(dim=-1)
    return proj((attn @ v).transpose(1, 2).reshape(b, n, c))


@pytest.mark.parametrize("n_ctx", [None, 3])   # self-attention; cross (third_attn)
def test_mae_q_kv_attention_parity(n_ctx):
    dim, heads = 32, 4
    q_w, kv_w = torch.randn(dim, dim) * 0.2, torch.randn(2 * dim, dim) * 0.2
    q_bias, v_bias = torch.randn(dim), torch.randn(dim)
    proj = torch.nn.Linear(dim, dim)
    x = torch.randn(2, 7, dim)
    ctx = x if n_ctx is None else torch.randn(2, n_ctx, dim)
    want = _np(_torch_mae_attention(x, ctx, q_w, kv_w, q_bias, v_bias, proj, heads))
    params = convert.mae_attention(_np(q_w), _np(kv_w), _np(q_bias), _np(v_bias))
    assert set(params["k"]) == {"kernel"}
    params["out"] = convert.dense(_np(proj.weight), _np(proj.bias))
    module = _SplitQKVAttention(heads, dim, q_bias=True, v_bias=True)
    got = _apply(module, {"params": params}, _np(x),
                 ctx=None if n_ctx is None else jnp.asarray(_np(ctx)))
    np.testing.assert_allclose(got, want, **TOL)
    packed = convert.mae_kv_packed(_np(kv_w), _np(v_bias))
    np.testing.assert_array_equal(packed["bias"][:dim], 0.0)
    np.testing.assert_allclose(_np(ctx) @ packed["kernel"] + packed["bias"],
                               _np(F.linear(ctx, kv_w, torch.cat([0 * v_bias, v_bias]))), **TOL)


# ----------------------------------------------------------------------- LSTM


def _lstm_params(lstm, layer: int, reverse: bool):
    sfx = f"_l{layer}" + ("_reverse" if reverse else "")
    get = lambda name: _np(getattr(lstm, name + sfx))
    return convert.lstm_cell(get("weight_ih"), get("weight_hh"), get("bias_ih"),
                             get("bias_hh"))


def test_lstm_single_layer_parity():
    lstm = torch.nn.LSTM(6, 5, batch_first=True)
    x = torch.randn(3, 4, 6)
    out, (h, c) = lstm(x)
    rnn = nn.RNN(nn.LSTMCell(5), return_carry=True)
    (c_f, h_f), y = rnn.apply({"params": {"cell": _lstm_params(lstm, 0, False)}},
                              jnp.asarray(_np(x)))
    np.testing.assert_allclose(np.asarray(y), _np(out), **TOL)
    np.testing.assert_allclose(np.asarray(h_f), _np(h[0]), **TOL)
    np.testing.assert_allclose(np.asarray(c_f), _np(c[0]), **TOL)


class _BiLSTM(nn.Module):
    """Two stacked `nn.Bidirectional` LSTM layers (M3DFEL `lstm`, spec section 2)."""
    hidden: int
    layers: int = 2

    @nn.compact
    def __call__(self, x):
        for i in range(self.layers):
            # parent=None: the RNNs nest under the Bidirectional, not under self.
            rnn = lambda: nn.RNN(nn.LSTMCell(self.hidden, parent=None), parent=None)  # noqa: E731
            x = nn.Bidirectional(rnn(), rnn(), name=f"layer{i}")(x)
        return x


def test_bidirectional_two_layer_lstm_parity():
    hidden = 8
    lstm = torch.nn.LSTM(12, hidden, num_layers=2, batch_first=True, bidirectional=True)
    x = torch.randn(2, 4, 12)
    want = _np(lstm(x)[0])                          # [B, T, 2H], forward half first
    params = {f"layer{i}": {"forward_rnn": {"cell": _lstm_params(lstm, i, False)},
                            "backward_rnn": {"cell": _lstm_params(lstm, i, True)}}
              for i in range(2)}
    got = _apply(_BiLSTM(hidden), {"params": params}, _np(x))
    assert got.shape == want.shape == (2, 4, 2 * hidden)
    np.testing.assert_allclose(got, want, **TOL)


def test_model_bilstm_with_both_biases_parity():
    """The M3DFEL model's `layers.BiLSTM` (TorchLSTMCell keeps bias_ih and bias_hh)."""
    layers = pytest.importorskip("audfer_jax.models.layers")
    hidden = 6
    lstm = torch.nn.LSTM(10, hidden, num_layers=2, batch_first=True, bidirectional=True)
    x = torch.randn(2, 4, 10)
    sfx = lambda i, rev: f"_l{i}" + ("_reverse" if rev else "")  # noqa: E731
    cell = lambda i, rev: convert.lstm_cell_torch_biases(  # noqa: E731
        *(_np(getattr(lstm, n + sfx(i, rev))) for n in ("weight_ih", "weight_hh", "bias_ih",
                                                         "bias_hh")))
    params = {f"l{i}": {"forward_rnn": {"cell": cell(i, False)},
                        "backward_rnn": {"cell": cell(i, True)}} for i in range(2)}
    got = _apply(layers.BiLSTM(hidden, 2), {"params": params}, _np(x))
    np.testing.assert_allclose(got, _np(lstm(x)[0]), **TOL)


def test_lstm_cell_gate_order_and_bias_sum():
    h, i = 3, 2
    w_ih = np.arange(4 * h * i, dtype=np.float32).reshape(4 * h, i)
    w_hh = np.arange(4 * h * h, dtype=np.float32).reshape(4 * h, h)
    b_ih, b_hh = np.arange(4 * h, dtype=np.float32), np.full(4 * h, 100.0, np.float32)
    p = convert.lstm_cell(w_ih, w_hh, b_ih, b_hh)
    # PyTorch row blocks: i = rows 0..h-1, f = h..2h-1, g = 2h..3h-1, o = 3h..4h-1.
    np.testing.assert_array_equal(p["ig"]["kernel"], w_ih[2 * h:3 * h].T)
    np.testing.assert_array_equal(p["ho"]["bias"], b_ih[3 * h:] + 100.0)
    assert "bias" not in p["if"]
    with pytest.raises(ValueError, match="LSTM shapes"):
        convert.lstm_cell(w_ih, w_hh[:, :2], b_ih, b_hh)


# ------------------------------------------------------------- misc layouts


def test_dmin_reshape():
    w = np.random.default_rng(0).normal(size=(1, 10, 1)).astype(np.float32)
    p = convert.dmin(w, w + 1, np.ones(2), np.zeros(2))
    np.testing.assert_array_equal(p["weight"], w[0, :, 0])
    np.testing.assert_array_equal(p["bias"], w[0, :, 0] + 1)
    assert p["mean_weight"].shape == p["var_weight"].shape == (2,)


def test_token_order_of_channels_last_flatten():
    """A [N, C, H, W] -> [N, HW, C] flatten equals a channels-last reshape."""
    x = np.random.default_rng(1).normal(size=(2, 5, 3, 4))
    torch_tokens = x.reshape(2, 5, -1).transpose(0, 2, 1)   # flatten(2).transpose(1, 2)
    flax_tokens = convert.activations_to_flax(x, "NCHW").reshape(2, -1, 5)
    np.testing.assert_array_equal(flax_tokens, torch_tokens)
    clip = np.random.default_rng(2).normal(size=(1, 4, 3, 6, 6))   # [B, T, C, H, W]
    np.testing.assert_array_equal(convert.activations_to_flax(clip, "NTCHW")[0, 2, 1, 5],
                                  clip[0, 2, :, 1, 5])
    with pytest.raises(ValueError, match="layout"):
        convert.activations_to_flax(x, "NHWC")


def test_gelu_variants():
    """Former-DFER uses tanh GELU (Flax default), MAE-DFER exact erf GELU."""
    x = torch.linspace(-4, 4, 101)
    np.testing.assert_allclose(np.asarray(nn.gelu(jnp.asarray(_np(x)), approximate=True)),
                               _np(F.gelu(x, approximate="tanh")), **TOL)
    np.testing.assert_allclose(np.asarray(nn.gelu(jnp.asarray(_np(x)), approximate=False)),
                               _np(F.gelu(x)), **TOL)
