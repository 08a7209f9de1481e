"""Whole-model checkpoint conversion (`audfer_jax.models.convert`).

The state_dicts here are built from the key lists and shapes of
tests/fixtures/state_dicts/*.json (copied verbatim from the spec; read from the
original PyTorch code) with random values, so every test runs without any
downloaded weight. Full-size models are only ever abstract (`jax.eval_shape`);
the random values come from one shared float16 pool (cast to float32) to keep
memory and time modest. The expectations (which PyTorch key feeds which Flax
leaf, and how it is transposed) are written here independently of the
converter's rule tables, from the module docstrings and backbones.md section 4.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from audfer_jax.cli import convert as convert_cli
from audfer_jax.models import convert, default_input_shape, get_model, mae_dfer

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "state_dicts"
_POOL = np.random.default_rng(0).standard_normal(1 << 20).astype(np.float16)


def _fixture(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def _random_state_dict(entries, prefix: str = "") -> dict[str, np.ndarray]:
    """Arrays of the listed shapes, filled from the random pool at distinct offsets."""
    out = {}
    offset = 0
    for key, shape, dtype, _ in entries:
        n = int(np.prod(shape, dtype=np.int64))
        if dtype == "int64":
            out[prefix + key] = np.array(7, np.int64).reshape(shape)
            continue
        offset = (offset + 7919) % _POOL.size
        flat = np.resize(np.roll(_POOL, -offset), n)   # np.resize repeats the pool
        out[prefix + key] = flat.reshape(shape).astype(np.float32)
    return out


@functools.lru_cache(maxsize=None)
def _template(name: str, num_classes: int = 7):
    model = get_model(name, num_classes=num_classes)
    t, h, w = default_input_shape(name)
    return jax.eval_shape(
        lambda: model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)},
                           jnp.zeros((1, t, h, w, 3), jnp.uint8), train=False))


def _leaves(tree, prefix=()):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _leaves(v, prefix + (k,))
        else:
            yield "/".join(prefix + (k,)), v


# ------------------------------------------- independent expectations (tests)

_LEAF_TO_MEMBER = {"kernel": "weight", "scale": "weight", "bias": "bias",
                   "mean": "running_mean", "var": "running_var"}


def _former_dfer_key(path: str) -> str:
    """Flax leaf -> PyTorch key, from the former_dfer.py docstring table."""
    coll, *mod, leaf = path.split("/")
    m = "/".join(mod)
    if leaf in ("pos_embedding", "cls_token"):
        return ".".join(mod + [leaf])
    subs = [(r"layer(\d)_(\d)/downsample_conv", r"layer\1.\2.downsample.0"),
            (r"layer(\d)_(\d)/downsample_bn", r"layer\1.\2.downsample.1"),
            (r"layer(\d)_(\d)", r"layer\1.\2"),
            (r"layers_(\d+)/attn_norm", r"layers.\1.0.fn.norm"),
            (r"layers_(\d+)/attn/to_qkv", r"layers.\1.0.fn.fn.to_qkv"),
            (r"layers_(\d+)/attn/to_out", r"layers.\1.0.fn.fn.to_out.0"),
            (r"layers_(\d+)/ff_norm", r"layers.\1.1.fn.norm"),
            (r"layers_(\d+)/ff/net_(\d)", r"layers.\1.1.fn.fn.net.\2")]
    for pat, rep in subs:
        m = re.sub(pat, rep, m)
    return m.replace("/", ".") + "." + _LEAF_TO_MEMBER[leaf]


def _m3dfel_key(path: str) -> str:
    """Flax leaf -> PyTorch key (LSTM leaves: the key holding its rows)."""
    coll, *mod, leaf = path.split("/")
    m = "/".join(mod)
    lstm = re.fullmatch(r"lstm/l(\d)/(forward|backward)_rnn/cell/([ih])[ifgo]", m)
    if lstm:
        kind = {"i": "ih", "h": "hh"}[lstm.group(3)]
        sfx = "_reverse" if lstm.group(2) == "backward" else ""
        return f"lstm.{'weight' if leaf == 'kernel' else 'bias'}_{kind}_l{lstm.group(1)}{sfx}"
    if m == "norm":
        return "norm." + leaf
    subs = [(r"features/stem_conv", "features.0.0"), (r"features/stem_bn", "features.0.1"),
            (r"features/layer(\d)_(\d)/conv(\d)", r"features.\1.\2.conv\3.0"),
            (r"features/layer(\d)_(\d)/bn(\d)", r"features.\1.\2.conv\3.1"),
            (r"features/layer(\d)_(\d)/downsample_conv", r"features.\1.\2.downsample.0"),
            (r"features/layer(\d)_(\d)/downsample_bn", r"features.\1.\2.downsample.1")]
    for pat, rep in subs:
        m = re.sub(pat, rep, m)
    return m.replace("/", ".") + "." + _LEAF_TO_MEMBER[leaf]


def _mae_key(path: str) -> str:
    coll, *mod, leaf = path.split("/")
    m = re.sub(r"blocks_(\d+)", r"blocks.\1", "/".join(mod))
    if m == "lg_region_tokens" or leaf == "lg_region_tokens":
        return "lg_region_tokens"
    attn = re.fullmatch(r"(blocks\.\d+/\w+_attn)/([qkv])", m)
    if attn:
        base = attn.group(1).replace("/", ".")
        if leaf == "bias":
            return f"{base}.{attn.group(2)}_bias"
        return f"{base}.{'q' if attn.group(2) == 'q' else 'kv'}.weight"
    return m.replace("/", ".") + "." + _LEAF_TO_MEMBER[leaf]


def _expected_value(path: str, key: str, src: np.ndarray) -> np.ndarray:
    """The Flax leaf `path` from its PyTorch source array (backbones.md section 4)."""
    leaf = path.rsplit("/", 1)[1]
    mod = path.rsplit("/", 2)[1]
    lstm_gate = re.search(r"/cell/([ih])([ifgo])/", path)
    if lstm_gate:
        h = src.shape[0] // 4
        start = "ifgo".index(lstm_gate.group(2)) * h
        rows = src[start:start + h]
        return rows.T if leaf == "kernel" else rows
    if re.search(r"_attn/[kv]/kernel$", path):
        d = src.shape[0] // 2
        return (src[:d] if mod == "k" else src[d:]).T
    if leaf == "kernel":
        nd = src.ndim
        return np.transpose(src, tuple(range(2, nd)) + (1, 0)) if nd > 2 else src.T
    if key.startswith("norm.") and leaf in ("weight", "bias"):   # DMIN [1, F, 1]
        return src.reshape(-1)
    return src


_KEY_FUNCS = {"former_dfer": _former_dfer_key, "m3dfel": _m3dfel_key, "mae_dfer": _mae_key}


def _check_round_trip(family: str, sd: dict, variables, report, rename=lambda k: k):
    """Every loaded leaf equals its transposed source; each source key is named
    by the report for exactly the leaves the docstring tables give it."""
    keyfunc = _KEY_FUNCS[family]
    # MAE-DFER's stacked blocks, seen block by block (the report's paths).
    variables = mae_dfer.per_block_layout(variables)
    loaded = dict(report.loaded)
    for path, value in _leaves(variables):
        if path not in loaded:
            continue
        key = rename(keyfunc(path))
        assert key in loaded[path], (path, key, loaded[path])
        np.testing.assert_array_equal(np.asarray(value), _expected_value(path, key, sd[key]),
                                      err_msg=path)
        assert value.dtype == np.float32
    assert len(report.loaded) + len(report.fresh) == len(list(_leaves(variables))), \
        "a Flax leaf is neither loaded nor fresh"
    used = {k for keys in loaded.values() for k in keys}
    dropped = {k for k, _ in report.dropped}
    assert used | dropped == set(sd), "a key is neither loaded nor dropped"
    assert not used & dropped


def _fresh_modules(report) -> set[str]:
    return {"/".join(p.split("/")[1:-1]) for p, _ in report.fresh}


# --------------------------------------------------------- full-size round trips


def test_former_dfer_round_trip():
    entries = _fixture("former_dfer")["state_dict"]
    sd = _random_state_dict(entries, prefix="module.")
    variables, report = convert.convert_state_dict("former_dfer", sd, _template("former_dfer"))
    assert report.source == "former_dfer"
    unprefixed = {k[len("module."):]: v for k, v in sd.items()}
    # Reported keys are unprefixed; the report says it stripped them.
    assert any("module." in n for n in report.notes)
    _check_round_trip("former_dfer", unprefixed, variables, report)
    assert {k for k, _ in report.dropped} == {k for k, *_ in entries
                                              if k.endswith("num_batches_tracked")}
    assert _fresh_modules(report) == {"AU_fc"}
    # Every Flax leaf is loaded or fresh; the loaded ones hold the 7-class count.
    n_loaded = sum(int(np.prod(v.shape)) for p, v in _leaves(variables)
                   if p.startswith("params/") and p in dict(report.loaded))
    assert n_loaded == _fixture("former_dfer")["num_params"]   # 18,031,943
    assert len(report.loaded) + len(report.fresh) == len(list(_leaves(_template("former_dfer"))))


def test_m3dfel_round_trip():
    fx = _fixture("m3dfel")
    sd = _random_state_dict(fx["state_dict"], prefix="module.")
    variables, report = convert.convert_state_dict("m3dfel", sd, _template("m3dfel"))
    assert report.source == "m3dfel"
    unprefixed = {k[len("module."):]: v for k, v in sd.items()}
    _check_round_trip("m3dfel", unprefixed, variables, report)
    assert _fresh_modules(report) == {"fc_au"}
    # LSTM: layers.TorchLSTMCell keeps bias_ih on `i*` and bias_hh on `h*`.
    cell = variables["params"]["lstm"]["l1"]["backward_rnn"]["cell"]
    f_rows = slice(512, 1024)   # gate f = row block 1 of [i | f | g | o]
    np.testing.assert_array_equal(cell["if"]["bias"], unprefixed["lstm.bias_ih_l1_reverse"][f_rows])
    np.testing.assert_array_equal(cell["hf"]["bias"], unprefixed["lstm.bias_hh_l1_reverse"][f_rows])


def test_r3d18_kinetics_round_trip():
    fx = _fixture("m3dfel")
    sd = _random_state_dict(fx["torchvision_r3d_18_state_dict"])
    variables, report = convert.convert_state_dict("m3dfel", sd, _template("m3dfel"))
    assert report.source == "r3d18_kinetics"

    def rename(key):   # m3dfel.json torchvision_r3d_18.key_map_to_m3dfel, reversed
        key = re.sub(r"^features\.0\.", "stem.", key)
        return re.sub(r"^features\.(\d)\.", r"layer\1.", key)

    _check_round_trip("m3dfel", sd, variables, report, rename)
    assert {k for k, _ in report.dropped} == (
        {"fc.weight", "fc.bias"} | {k for k in sd if k.endswith("num_batches_tracked")})
    assert {m.split("/")[0] for m in _fresh_modules(report)} == {
        "lstm", "to_qkv", "norm", "pwconv", "fc", "fc_au"}
    n_loaded = sum(int(np.prod(v.shape)) for p, v in _leaves(variables)
                   if p.startswith("params/") and p in dict(report.loaded))
    assert n_loaded == fx["params_by_module"]["features"]   # 33,166,272
    # Fresh leaves stay as the template gave them (abstract here).
    assert isinstance(variables["params"]["fc"]["kernel"], jax.ShapeDtypeStruct)


def test_mae_dfer_finetuned_round_trip():
    fx = _fixture("mae_dfer")
    sd = _random_state_dict(fx["state_dict"])
    variables, report = convert.convert_state_dict("mae_dfer", sd, _template("mae_dfer"))
    assert report.source == "mae_dfer"
    _check_round_trip("mae_dfer", sd, variables, report)
    assert report.dropped == []
    assert _fresh_modules(report) == {"au_head"}
    # No k bias in PyTorch: the Flax k Dense has none either.
    assert "bias" not in variables["params"]["blocks"]["third_attn"]["k"]
    # Stacked: blocks.0-14 are the rows of `blocks`, blocks.15 is `last_block`.
    stacked = variables["params"]["blocks"]["mlp"]["fc1"]["kernel"]
    assert stacked.shape == (15, 512, 2048)
    np.testing.assert_array_equal(stacked[14], sd["blocks.14.mlp.fc1.weight"].T)
    np.testing.assert_array_equal(variables["params"]["last_block"]["norm2"]["bias"],
                                  sd["blocks.15.norm2.bias"])
    n_loaded = sum(int(np.prod(v.shape)) for p, v in _leaves(mae_dfer.per_block_layout(variables))
                   if p.startswith("params/") and p in dict(report.loaded))
    assert n_loaded == fx["num_params"]   # 84,878,343


def test_mae_dfer_pretrain_round_trip():
    fx = _fixture("mae_dfer_pretrain")
    sd = _random_state_dict(fx["state_dict"])
    variables, report = convert.convert_state_dict("mae_dfer", sd, _template("mae_dfer"))
    assert report.source == "mae_dfer_pretrain"
    _check_round_trip("mae_dfer", sd, variables, report, rename=lambda k: "encoder." + k)
    dropped = {k for k, _ in report.dropped}
    assert dropped == {k for k in sd if k.startswith(("decoder.", "encoder.norm."))} | {
        "encoder_to_decoder.weight", "mask_token"}
    assert _fresh_modules(report) == {"fc_norm", "head", "au_head"}
    n_loaded = sum(int(np.prod(v.shape)) for p, v in _leaves(mae_dfer.per_block_layout(variables))
                   if p.startswith("params/") and p in dict(report.loaded))
    assert n_loaded == fx["encoder_num_params"] - fx["encoder_params_by_module"]["norm"]


# ------------------------------------------------------------- heads, errors


@pytest.fixture(scope="module")
def former_sd() -> dict[str, np.ndarray]:
    return _random_state_dict(_fixture("former_dfer")["state_dict"], prefix="module.")


def test_au_heads_are_loaded_when_present(former_sd):
    rng = np.random.default_rng(3)
    sd = dict(former_sd, **{"module.AU_fc.weight": rng.normal(size=(18, 512)).astype(np.float32),
                            "module.AU_fc.bias": rng.normal(size=18).astype(np.float32)})
    variables, report = convert.convert_state_dict("former_dfer", sd, _template("former_dfer"))
    assert report.fresh == []
    np.testing.assert_array_equal(variables["params"]["AU_fc"]["kernel"],
                                  sd["module.AU_fc.weight"].T)
    # M3DFEL's AU head is `fc_au`; MAE-DFER accepts either name.
    mae = _random_state_dict(_fixture("mae_dfer")["state_dict"])
    mae["fc_au.weight"], mae["fc_au.bias"] = sd["module.AU_fc.weight"], sd["module.AU_fc.bias"]
    variables, report = convert.convert_state_dict("mae_dfer", mae, _template("mae_dfer"))
    assert report.fresh == []
    np.testing.assert_array_equal(variables["params"]["au_head"]["bias"], mae["fc_au.bias"])


def test_head_of_another_class_count(former_sd):
    template = _template("former_dfer", num_classes=11)   # MAFW head, 7-class checkpoint
    variables, report = convert.convert_state_dict("former_dfer", former_sd, template)
    assert {k for k, _ in report.dropped} >= {"fc.weight", "fc.bias"}
    assert any("(7, 512)" in why for k, why in report.dropped if k == "fc.weight")
    assert _fresh_modules(report) == {"fc", "AU_fc"}
    with pytest.raises(convert.ConversionError, match=r"fc\.weight \(7, 512\)"):
        convert.convert_state_dict("former_dfer", former_sd, template, strict=True)


def test_unknown_key_is_an_error(former_sd):
    sd = dict(former_sd, **{"module.s_former.extra.weight": np.zeros((3, 3), np.float32)})
    with pytest.raises(convert.ConversionError, match=r"unknown key 's_former\.extra\.weight'"):
        convert.convert_state_dict("former_dfer", sd, _template("former_dfer"))
    # A known module name that the Flax model lacks (a 4th T-Former layer).
    sd = dict(former_sd, **{"module.t_former.spatial_transformer.layers.3.0.fn.norm.weight":
                            np.zeros(512, np.float32)})
    with pytest.raises(convert.ConversionError, match=r"layers\.3\.0\.fn\.norm\.weight"):
        convert.convert_state_dict("former_dfer", sd, _template("former_dfer"))


def test_missing_key_is_an_error(former_sd):
    sd = {k: v for k, v in former_sd.items()
          if k not in ("module.s_former.conv1.weight", "module.s_former.layer2.0.bn1.running_var")}
    with pytest.raises(convert.ConversionError) as e:
        convert.convert_state_dict("former_dfer", sd, _template("former_dfer"))
    errors = e.value.report.errors
    assert any("missing key 's_former.conv1.weight'" in x for x in errors)
    assert any("missing key 's_former.layer2.0.bn1.running_var'" in x for x in errors)
    assert len(errors) == 2


def test_mis_shaped_key_is_an_error_naming_both_shapes(former_sd):
    sd = dict(former_sd)
    sd["module.s_former.conv1.weight"] = np.zeros((64, 3, 5, 5), np.float32)
    with pytest.raises(convert.ConversionError) as e:
        convert.convert_state_dict("former_dfer", sd, _template("former_dfer"))
    msg = str(e.value)
    assert "s_former.conv1.weight (64, 3, 5, 5)" in msg
    assert "(7, 7, 3, 64)" in msg and "(5, 5, 3, 64)" in msg


def test_wrong_model_for_checkpoint_fails_loudly(former_sd):
    with pytest.raises(convert.ConversionError, match="unknown key"):
        convert.convert_state_dict("m3dfel", former_sd, _template("m3dfel"))
    with pytest.raises(ValueError, match="does not fit"):
        convert.convert_state_dict("former_dfer", former_sd, _template("former_dfer"),
                                   source="m3dfel")


def test_report_lists_by_name(former_sd):
    _, report = convert.convert_state_dict("former_dfer", former_sd, _template("former_dfer"))
    text = report.summary()
    assert "dropped s_former.layer4.1.bn2.num_batches_tracked" in text
    assert "fresh params/AU_fc" in text
    json.dumps(report.to_dict())


# ------------------------------------------------------- tiny models, numerics


def _torch_layout(path: str, value: np.ndarray) -> np.ndarray:
    """Inverse of `_expected_value` for a leaf that is a whole PyTorch tensor."""
    leaf = path.rsplit("/", 1)[1]
    if leaf == "kernel":
        nd = value.ndim
        return np.transpose(value, (nd - 1, nd - 2) + tuple(range(nd - 2))) if nd > 2 else value.T
    if re.search(r"(^|/)norm/(weight|bias)$", path):    # M3DFEL DMIN [F] -> [1, F, 1]
        return value.reshape(1, -1, 1)
    return value


def _part_order(path: str) -> int:
    """Row-block order of leaves sharing one PyTorch tensor: LSTM gates i, f, g, o;
    MAE-DFER k before v in `kv.weight`."""
    gate = re.search(r"/cell/[ih]([ifgo])/", path)
    return "ifgo".index(gate.group(1)) if gate else "kv".index(path.split("/")[-2])


def _tiny_state_dict(name: str, seed: int = 0) -> tuple[dict[str, np.ndarray], dict]:
    """A PyTorch-named state_dict for a `_tiny` model with random values, built
    from its Flax template through the inverse of the layout rules."""
    rng = np.random.default_rng(seed)
    keyfunc = _KEY_FUNCS[name[:-len("_tiny")]]
    parts: dict[str, dict[str, np.ndarray]] = {}
    for path, leaf in _leaves(mae_dfer.per_block_layout(_template(name))):
        value = rng.normal(size=leaf.shape).astype(np.float32) * 0.3
        if path.endswith("/var"):
            value = rng.uniform(0.5, 1.5, size=leaf.shape).astype(np.float32)
        parts.setdefault(keyfunc(path), {})[path] = value
    sd = {}
    for key, leaves in parts.items():
        if len(leaves) == 1:
            (path, value), = leaves.items()
            sd[key] = _torch_layout(path, value)
        else:
            ordered = sorted(leaves.items(), key=lambda kv: _part_order(kv[0]))
            sd[key] = np.concatenate([v.T for _, v in ordered], axis=0)
    return sd, _template(name)


def _torch_former_dfer(sd, clips, cfg):
    """Former-DFER forward pass in PyTorch functional form, written from
    backbones.md section 1 (eval mode), on a PyTorch-named state_dict."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    w = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}

    def bn(x, p):
        return F.batch_norm(x, w[p + ".running_mean"], w[p + ".running_var"], w[p + ".weight"],
                            w[p + ".bias"], False, 0.1, 1e-5)

    def block(x, p, stride):
        y = F.relu(bn(F.conv2d(x, w[p + ".conv1.weight"], stride=stride, padding=1), p + ".bn1"))
        y = bn(F.conv2d(y, w[p + ".conv2.weight"], padding=1), p + ".bn2")
        if p + ".downsample.0.weight" in w:
            x = bn(F.conv2d(x, w[p + ".downsample.0.weight"], stride=stride), p + ".downsample.1")
        return F.relu(y + x)

    def transformer(x, p, depth, heads):
        for i in range(depth):
            q = f"{p}.layers.{i}"
            y = F.layer_norm(x, x.shape[-1:], w[q + ".0.fn.norm.weight"],
                             w[q + ".0.fn.norm.bias"], 1e-5)
            qkv = F.linear(y, w[q + ".0.fn.fn.to_qkv.weight"]).chunk(3, dim=-1)
            b, n, _ = y.shape
            qh, kh, vh = (t.reshape(b, n, heads, -1).transpose(1, 2) for t in qkv)
            a = (qh @ kh.transpose(-1, -2) * qh.shape[-1] ** -0.5).softmax(-1) @ vh
            a = a.transpose(1, 2).reshape(b, n, -1)
            x = x + F.linear(a, w[q + ".0.fn.fn.to_out.0.weight"], w[q + ".0.fn.fn.to_out.0.bias"])
            y = F.layer_norm(x, x.shape[-1:], w[q + ".1.fn.norm.weight"],
                             w[q + ".1.fn.norm.bias"], 1e-5)
            y = F.gelu(F.linear(y, w[q + ".1.fn.fn.net.0.weight"], w[q + ".1.fn.fn.net.0.bias"]),
                       approximate="tanh")
            x = x + F.linear(y, w[q + ".1.fn.fn.net.3.weight"], w[q + ".1.fn.fn.net.3.bias"])
        return x

    b, t = clips.shape[:2]
    x = torch.from_numpy(clips).float().div(255).permute(0, 1, 4, 2, 3)   # [B, T, C, H, W]
    x = x.reshape(b * t, *x.shape[2:])
    x = F.relu(bn(F.conv2d(x, w["s_former.conv1.weight"], stride=2, padding=3), "s_former.bn1"))
    x = F.max_pool2d(x, 3, 2, 1)
    for k, s in ((1, 1), (2, 2), (3, 2)):
        x = block(block(x, f"s_former.layer{k}.0", s), f"s_former.layer{k}.1", 1)
    n, c, h, wd = x.shape
    tok = x.reshape(n, c, h * wd).permute(0, 2, 1) + w["s_former.pos_embedding"]
    tok = transformer(tok, "s_former.spatial_transformer", cfg["s_depth"], cfg["s_heads"])
    x = tok.permute(0, 2, 1).reshape(n, c, h, wd)
    x = block(block(x, "s_former.layer4.0", 2), "s_former.layer4.1", 1)
    x = x.mean(dim=(2, 3)).reshape(b, t, -1)
    x = torch.cat([w["t_former.cls_token"].expand(b, 1, -1), x], dim=1)
    x = x + w["t_former.pos_embedding"]
    x = transformer(x, "t_former.spatial_transformer", cfg["t_depth"], cfg["t_heads"])[:, 0]
    return F.linear(x, w["fc.weight"], w["fc.bias"]).numpy(), F.linear(
        x, w["AU_fc.weight"], w["AU_fc.bias"]).numpy()


def test_former_dfer_tiny_logits_match_torch():
    pytest.importorskip("torch")
    sd, template = _tiny_state_dict("former_dfer_tiny")
    variables, report = convert.convert_state_dict(
        "former_dfer_tiny", {"module." + k: v for k, v in sd.items()}, template)
    assert report.fresh == [] and report.dropped == []
    model = get_model("former_dfer_tiny")
    t, h, w = default_input_shape("former_dfer_tiny")
    clips = np.random.default_rng(5).integers(0, 256, (2, t, h, w, 3), dtype=np.uint8)
    out = model.apply(jax.tree_util.tree_map(jnp.asarray, variables), jnp.asarray(clips),
                      train=False)
    cfg = {f: getattr(model, f) for f in ("s_depth", "s_heads", "t_depth", "t_heads")}
    logits, au_logits = _torch_former_dfer(sd, clips, cfg)
    np.testing.assert_allclose(np.asarray(out.logits), logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(out.au_logits), au_logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["former_dfer_tiny", "m3dfel_tiny", "mae_dfer_tiny"])
def test_tiny_round_trip(name):
    """The _tiny models share the key structure: a PyTorch-named state_dict
    (AU head included) converts back to the same leaves."""
    family = name[:-len("_tiny")]
    sd, template = _tiny_state_dict(name, seed=4)
    full = {k for k, *_ in _fixture(family)["state_dict"]}
    au = {"former_dfer": "AU_fc.", "m3dfel": "fc_au.", "mae_dfer": "au_head."}[family]
    assert {k for k in sd if not k.startswith(au)} <= full
    variables, report = convert.convert_state_dict(name, sd, template)
    assert report.fresh == []
    _check_round_trip(family, sd, variables, report)
    assert len(report.loaded) == len(list(_leaves(mae_dfer.per_block_layout(template))))
    assert jax.tree.structure(variables) == jax.tree.structure(template)


# ------------------------------------------------------------------ loading


@pytest.mark.parametrize("zipfile", [True, False])   # torch >= 1.6 format; legacy
def test_load_former_dfer_style_checkpoint(tmp_path, monkeypatch, zipfile):
    """`__main__.RecorderMeter` with NumPy arrays, a scalar tensor `best_acc`, and
    an optimizer dict: plain `weights_only=True` refuses it, ours reads the weights."""
    torch = pytest.importorskip("torch")

    class RecorderMeter:
        def __init__(self):
            self.epoch_accuracy = np.zeros((100, 2), np.float32)

    RecorderMeter.__module__, RecorderMeter.__qualname__ = "__main__", "RecorderMeter"
    monkeypatch.setattr(sys.modules["__main__"], "RecorderMeter", RecorderMeter, raising=False)
    weights = {"module.fc.weight": torch.randn(7, 512), "module.fc.bias": torch.randn(7)}
    path = tmp_path / "fold1-model_best.pth"
    torch.save({"epoch": 12, "state_dict": weights, "best_acc": torch.tensor(65.2),
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.01}]},
                "recorder": RecorderMeter()}, path, _use_new_zipfile_serialization=zipfile)
    monkeypatch.delattr(sys.modules["__main__"], "RecorderMeter")
    with pytest.raises(Exception, match="RecorderMeter"):
        torch.load(path, weights_only=True)
    info = {}
    sd = convert.load_torch_checkpoint(str(path), info)
    assert sorted(sd) == ["module.fc.bias", "module.fc.weight"]
    np.testing.assert_array_equal(sd["module.fc.weight"], weights["module.fc.weight"].numpy())
    assert info["epoch"] == 12 and info["unwrapped"] == ["state_dict"]
    assert abs(info["best_acc"] - 65.2) < 1e-4


def test_load_namespace_and_model_key(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "checkpoint-49.pth"
    torch.save({"model": {"encoder.lg_region_tokens": torch.ones(8, 512, dtype=torch.bfloat16)},
                "optimizer": {}, "epoch": 49, "scaler": {"scale": 65536.0},
                "args": argparse.Namespace(lr=1e-3, model="pretrain")}, path)
    sd = convert.load_torch_checkpoint(str(path))
    assert sd["encoder.lg_region_tokens"].dtype == np.float32
    assert sd["encoder.lg_region_tokens"].shape == (8, 512)
    plain = tmp_path / "r3d.pth"
    torch.save({"stem.0.weight": torch.zeros(2, 3)}, plain)
    assert list(convert.load_torch_checkpoint(str(plain))) == ["stem.0.weight"]


def _leave_a_trace(path):   # pickled by reference; must never run on load
    pathlib.Path(path).write_text("executed")


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (_leave_a_trace, (self.path,))


def test_load_never_executes_pickled_code(tmp_path):
    torch = pytest.importorskip("torch")
    trace = tmp_path / "trace.txt"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"fc.bias": torch.zeros(7)}, "payload": _Evil(str(trace))}, path)
    sd = convert.load_torch_checkpoint(str(path))
    assert list(sd) == ["fc.bias"]
    assert not trace.exists()

    class _Shell:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(trace),))

    torch.save({"state_dict": {}, "payload": _Shell()}, path)
    with pytest.raises(ValueError, match="restricted unpickler"):
        convert.load_torch_checkpoint(str(path))
    assert not trace.exists()


def test_load_rejects_non_tensor_weights(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "odd.pth"
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2), "note": "hello"}}, path)
    with pytest.raises(ValueError, match="state_dict/note"):
        convert.load_torch_checkpoint(str(path))
    with pytest.raises(FileNotFoundError):
        convert.load_torch_checkpoint(str(tmp_path / "absent.pth"))


# ----------------------------------------------------------------------- CLI


def test_cli_converts_and_saves(tmp_path, monkeypatch, capsys):
    torch = pytest.importorskip("torch")
    sd, template = _tiny_state_dict("former_dfer_tiny", seed=1)
    path = tmp_path / "tiny-model_best.pth"
    torch.save({"epoch": 1, "state_dict": {"module." + k: torch.from_numpy(np.ascontiguousarray(v))
                                           for k, v in sd.items()}}, path)
    saved = {}

    def fake_save(directory, variables, metadata):
        saved.update(directory=directory, variables=variables, metadata=metadata)
        return directory

    monkeypatch.setattr(convert_cli, "_get_saver", lambda: fake_save)
    out = tmp_path / "out"
    rc = convert_cli.main(["--model", "former_dfer_tiny", "--checkpoint", str(path),
                           "--out", str(out), "--num_classes", "7"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "0 leaves fresh, 0 errors" in printed
    assert saved["directory"] == str(out)
    meta = saved["metadata"]
    assert meta["model"] == "former_dfer_tiny" and meta["num_classes"] == 7
    assert meta["source_file"] == str(path) and meta["source"] == "former_dfer"
    assert meta["checkpoint_info"]["epoch"] == 1
    json.dumps(meta)
    params = saved["variables"]["params"]
    np.testing.assert_array_equal(params["fc"]["kernel"], sd["fc.weight"].T)
    np.testing.assert_array_equal(params["AU_fc"]["bias"], sd["AU_fc.bias"])
    # A 6-class model with --strict fails and names the head.
    rc = convert_cli.main(["--model", "former_dfer_tiny", "--checkpoint", str(path),
                           "--out", str(tmp_path / "out2"), "--num_classes", "6", "--strict"])
    assert rc == 1
    assert "fc.weight" in capsys.readouterr().err
    assert convert_cli.main(["--model", "former_dfer_tiny", "--checkpoint",
                             str(tmp_path / "absent.pth"), "--out", str(tmp_path / "o3")]) == 1
    assert "no such checkpoint" in capsys.readouterr().err
    (tmp_path / "exists").mkdir()
    assert convert_cli.main(["--model", "former_dfer_tiny", "--checkpoint", str(path),
                             "--out", str(tmp_path / "exists")]) == 1
    assert "already exists" in capsys.readouterr().err


def test_fill_fresh_uses_the_initialiser_for_abstract_leaves_only():
    import flax.linen as nn

    model = nn.Dense(3)
    x = jnp.zeros((1, 4))
    template = jax.eval_shape(model.init, jax.random.key(0), x)
    loaded = {"params": {"kernel": np.full((4, 3), 2.0, np.float32),
                         "bias": template["params"]["bias"]}}
    filled = convert.fill_fresh(loaded, lambda: {"params": {"kernel": np.zeros((4, 3)),
                                                            "bias": np.arange(3.0)}})
    np.testing.assert_array_equal(filled["params"]["kernel"], 2.0)
    np.testing.assert_array_equal(filled["params"]["bias"], [0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="bias"):
        convert.fill_fresh(loaded, lambda: {"params": {}})


def test_cli_writes_orbax_checkpoint(tmp_path):
    torch = pytest.importorskip("torch")
    checkpoint = pytest.importorskip("audfer_jax.checkpoint")
    if not hasattr(checkpoint, "restore_variables"):
        pytest.skip("audfer_jax.checkpoint.restore_variables not available")
    sd, _ = _tiny_state_dict("former_dfer_tiny", seed=2)
    path = tmp_path / "tiny.pth"
    torch.save({"state_dict": {k: torch.from_numpy(np.ascontiguousarray(v))
                               for k, v in sd.items()}}, path)
    out = tmp_path / "flax"
    assert convert_cli.main(["--model", "former_dfer_tiny", "--checkpoint", str(path),
                             "--out", str(out)]) == 0
    variables, metadata = checkpoint.restore_variables(str(out))
    assert metadata["model"] == "former_dfer_tiny"
    assert metadata["report"]["fresh"] == []
    np.testing.assert_array_equal(np.asarray(variables["params"]["s_former"]["conv1"]["kernel"]),
                                  np.transpose(sd["s_former.conv1.weight"], (2, 3, 1, 0)))
    np.testing.assert_array_equal(
        np.asarray(variables["batch_stats"]["s_former"]["layer2_0"]["downsample_bn"]["var"]),
        sd["s_former.layer2.0.downsample.1.running_var"])
