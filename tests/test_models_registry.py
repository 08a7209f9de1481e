"""The model registry (audfer_jax.models) and the `bench model` command's pieces.

Expectations: the names and input sizes of backbones.md (16x112x112 for
Former-DFER and M3DFEL, 16x160x160 for MAE-DFER), and the head widths asked
for. Models are only traced with `jax.eval_shape`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from audfer_jax import models
from audfer_jax.benchmarks import model as model_bench
from audfer_jax.cli import bench_model

REPO = Path(__file__).resolve().parents[1]
NAMES = ["former_dfer", "former_dfer_tiny", "m3dfel", "m3dfel_tiny", "mae_dfer", "mae_dfer_tiny"]


def test_available_models_lists_every_backbone():
    assert models.available_models() == sorted(NAMES)


def test_unknown_name_raises_with_the_known_names():
    with pytest.raises(ValueError, match="resnet50.*former_dfer.*m3dfel.*mae_dfer"):
        models.get_model("resnet50")
    with pytest.raises(ValueError, match="known models"):
        models.default_input_shape("resnet50")


def test_default_input_shapes():
    assert models.default_input_shape("former_dfer") == (16, 112, 112)
    assert models.default_input_shape("m3dfel") == (16, 112, 112)
    assert models.default_input_shape("mae_dfer") == (16, 160, 160)
    assert models.default_input_shape("former_dfer_tiny") == (8, 32, 32)
    assert models.default_input_shape("m3dfel_tiny") == (8, 32, 32)
    t, h, w = models.default_input_shape("mae_dfer_tiny")
    assert h == w and t >= 2


@pytest.mark.parametrize("name", ["former_dfer_tiny", "m3dfel_tiny", "mae_dfer_tiny"])
def test_head_widths_and_overrides_reach_the_model(name):
    model = models.get_model(name, num_classes=11, num_aus=5, dtype=jnp.bfloat16)
    assert model.dtype == jnp.bfloat16
    t, h, w = models.default_input_shape(name)
    clips = jax.ShapeDtypeStruct((3, t, h, w, 3), jnp.uint8)

    def run(c):
        variables = model.init({
            "params": jax.random.key(0),
            "dropout": jax.random.key(1)
        },
                               c,
                               train=False)
        return model.apply(variables, c, train=False)

    out = jax.eval_shape(run, clips)
    assert out.logits.shape == (3, 11) and out.logits.dtype == jnp.float32
    assert out.au_logits.shape == (3, 5) and out.au_logits.dtype == jnp.float32


def test_registry_imports_backbones_lazily():
    code = ("import sys, audfer_jax.models as m; "
            "assert not any(k.startswith('audfer_jax.models.') and k != 'audfer_jax.models.base'"
            " for k in sys.modules), sorted(k for k in sys.modules if 'audfer_jax' in k); "
            "m.get_model('m3dfel_tiny'); "
            "assert 'audfer_jax.models.m3dfel' in sys.modules; "
            "assert 'audfer_jax.models.mae_dfer' not in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code],
                          cwd=REPO,
                          capture_output=True,
                          text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_bench_flags_and_peak_memory():
    with pytest.raises(SystemExit):
        bench_model.main(["--model", "nope"])
    with pytest.raises(SystemExit):
        bench_model.main(["--model", "m3dfel", "--batch", "0"])
    peak, source = model_bench.peak_memory()
    assert peak > 0 and source
