"""Tests of `audfer-jax bench train` (output format and wiring, never speed).

The fast tests use the trainer's micro model (`tests/_train_fakes.py`, compiles
in seconds); the registry's `former_dfer_tiny` runs in a slow test.
"""

from __future__ import annotations

import os
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

import _train_fakes as fakes  # noqa: E402

from audfer_jax import model_state  # noqa: E402
from audfer_jax.benchmarks import train as train_bench  # noqa: E402
from audfer_jax.cli import bench_train  # noqa: E402

NUM = r"-?\d+(?:\.\d+)?(?:e[-+]\d+)?"
# The figure lines the command prints (format, not speed).
EXPECTED = [
    rf"full train step \(loss au, lambda 0\.25\): {NUM} ms/step, {NUM} clips/s",
    rf"step without AU loss \(lambda 0, AU head unused\): {NUM} ms/step, {NUM} clips/s",
    rf"AU loss share of step time \(difference of the two steps, fastest step each: "
    rf"{NUM} vs {NUM} ms\): {NUM} %",
    rf"AU loss share of step time \(isolated jitted loss fwd\+bwd, {NUM} ms/call\): "
    rf"{NUM} %",
    r"goal: AU loss share < 2 %",
]

CONFIG_FILE = """
from audfer_jax import config_lib as common
def get_config(arg=None):
    c = common.base_config()
    c.model = {model!r}
    c.data.dataset = "demo"
    return c
"""


def test_run_bench_micro():
    config = fakes.micro_config()
    config.loss = "au"
    r = train_bench.run_bench(config, batch=2, steps=2, warmup=0,
                              model=fakes.MicroModel(num_classes=7), log=lambda m: None)
    assert r["input_shape"] == [8, 32, 32] and r["batch"] == 2 and r["lam"] == 0.25
    assert r["full_ms"] > 0 and r["without_au_ms"] > 0
    assert r["full_clips_per_s"] == pytest.approx(2 / (r["full_ms"] / 1e3))
    assert r["full_min_ms"] <= r["full_ms"] and r["without_au_min_ms"] <= r["without_au_ms"]
    assert r["au_share_diff_percent"] == pytest.approx(
            100 * (r["full_min_ms"] - r["without_au_min_ms"]) / r["full_min_ms"])
    assert r["au_share_isolated_percent"] == pytest.approx(
            100 * r["au_loss_isolated_ms"] / r["full_ms"])
    text = bench_train.format_result(r)
    for pattern in EXPECTED:
        assert re.search(pattern, text), pattern


def test_without_au_head_keeps_logits_and_zeroes_au():
    model = fakes.MicroModel(num_classes=7, norm="batch")
    clips = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 8, 32, 32, 3)),
                        jnp.uint8)
    variables = model.init({"params": jax.random.PRNGKey(0)}, clips, train=False)
    plain = model.apply(variables, clips, train=False)
    stripped = train_bench._WithoutAUHead(model).apply(variables, clips, train=False)
    np.testing.assert_array_equal(stripped.logits, plain.logits)
    assert stripped.au_logits.shape == plain.au_logits.shape
    assert not np.any(np.asarray(stripped.au_logits))
    # The mutable form (training with BatchNorm) returns (output, state) too.
    out, state = train_bench._WithoutAUHead(model).apply(
            variables, clips, train=True, mutable=["batch_stats"])
    assert not np.any(np.asarray(out.au_logits)) and "batch_stats" in state


def test_random_variables():
    shapes = {"params": {"dense": {"kernel": jax.ShapeDtypeStruct((400, 300), jnp.float32),
                                   "bias": jax.ShapeDtypeStruct((300,), jnp.float32)},
                         "norm": {"scale": jax.ShapeDtypeStruct((300,), jnp.float32)}},
              "batch_stats": {"bn": {"mean": jax.ShapeDtypeStruct((5,), jnp.float32),
                                     "var": jax.ShapeDtypeStruct((5,), jnp.float32)}}}
    v = train_bench.random_variables(shapes)
    assert v["params"]["dense"]["kernel"].shape == (400, 300)
    # LeCun normal: std 1 / sqrt(fan_in) = 1 / 20.
    assert np.std(v["params"]["dense"]["kernel"]) == pytest.approx(0.05, rel=0.05)
    assert not v["params"]["dense"]["bias"].any()
    assert (v["params"]["norm"]["scale"] == 1).all()
    assert (v["batch_stats"]["bn"]["var"] == 1).all() and not v["batch_stats"]["bn"]["mean"].any()


def test_cli_prints_both_figures(tmp_path, monkeypatch, capsys):
    cfg = tmp_path / "cfg.py"
    cfg.write_text(CONFIG_FILE.format(model="former_dfer_tiny"))
    # The micro model stands in for the registry model (compile time).
    monkeypatch.setattr(model_state, "build_model",
                        lambda config, n: fakes.MicroModel(num_classes=n))
    rc = bench_train.main(["--config", str(cfg), "--batch", "2", "--steps", "1",
                           "--warmup", "0"])
    assert rc == 0
    out = capsys.readouterr().out
    for pattern in EXPECTED:
        assert re.search(pattern, out), pattern
    assert bench_train.main(["--config", str(cfg), "--steps", "0"]) == 1
    assert "--steps must be >= 1" in capsys.readouterr().err
    assert bench_train.main(["--config", str(tmp_path / "nope.py")]) == 1


@pytest.mark.slow
def test_cli_former_dfer_tiny(tmp_path, capsys):
    cfg = tmp_path / "cfg.py"
    cfg.write_text(CONFIG_FILE.format(model="former_dfer_tiny"))
    assert bench_train.main(["--config", str(cfg), "--batch", "2", "--steps", "1",
                             "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    for pattern in EXPECTED:
        assert re.search(pattern, out), pattern
