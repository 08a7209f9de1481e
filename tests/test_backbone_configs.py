"""Every registered backbone on every config file (issue 32): it trains, or one line says why.

A backbone takes its config's clip size (`model_state.build_model`), so a
`_tiny` variant runs on a recipe config and a full one on the demo's 48-pixel
clips, or refuses them in one line. Every pair is traced through the real
train step (`jax.eval_shape`: shapes and dtypes, nothing compiled); the tiny
backbones on the demo config also run one compiled step.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from audfer_jax import config_lib
from audfer_jax import experiment
from audfer_jax import model_state
from audfer_jax import models
from audfer_jax import parallel
from audfer_jax import steps

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ("demo", "former_dfer", "m3dfel", "mae_dfer")
PAIRS = [(c, m) for c in CONFIGS for m in models.available_models()]
# The pairs that cannot train, and what their one line says: MAE-DFER's
# recipe regions (2 x 5 x 10 tokens) tile the 16 x 160 x 160 clips of its own
# config only; its layer-wise optimizer needs numbered transformer blocks.
REFUSED = {("demo", "mae_dfer"): "does not tile the token grid",
           ("former_dfer", "mae_dfer"): "does not tile the token grid",
           ("m3dfel", "mae_dfer"): "does not tile the token grid",
           **{("mae_dfer", m): "no numbered transformer blocks"
              for m in ("former_dfer", "former_dfer_tiny", "m3dfel", "m3dfel_tiny")}}


def _config(config_name: str, model: str):
    """The config file with `model` set, as `--config.model=` would."""
    path = os.path.join(REPO, "configs", f"{config_name}.py")
    return config_lib.apply_overrides(config_lib.load_config_file(path), [("model", model)])


def _batch(batch: int, shape) -> dict:
    t, h, w = shape
    return {"clips": jax.ShapeDtypeStruct((batch, t, h, w, 3), jnp.uint8),
            "labels": jax.ShapeDtypeStruct((batch,), jnp.int32),
            "au_targets": jax.ShapeDtypeStruct((batch, 18), jnp.float32),
            "au_mask": jax.ShapeDtypeStruct((batch,), jnp.float32),
            "mask": jax.ShapeDtypeStruct((batch,), jnp.float32)}


def _step(config, setup):
    lam, prior, pos_weight = experiment.resolve_loss(config, "dfew", 7)
    return steps.make_train_step(setup.model, config, tx=setup.tx, schedule=setup.schedule,
                                 prior=prior, pos_weight=pos_weight, lam=lam, num_classes=7)


@pytest.mark.parametrize("config_name,model", PAIRS)
def test_every_backbone_on_every_config(config_name, model):
    config = _config(config_name, model)
    if (config_name, model) in REFUSED:
        with pytest.raises(ValueError, match=REFUSED[config_name, model]) as e:
            model_state.build_model(config, 7)
        assert "\n" not in str(e.value)
        return
    setup = model_state.build(config, 7, steps_per_epoch=10, global_batch=2)
    side = int(config.data.image_size)
    assert setup.input_shape == (int(config.data.num_frames), side, side)
    state, metrics = jax.eval_shape(_step(config, setup), setup.abstract_state(),
                                    _batch(2, setup.input_shape))
    assert metrics["loss"].shape == () and metrics["loss"].dtype == jnp.float32
    assert jax.tree.structure(state.params) == jax.tree.structure(setup.params)


@pytest.mark.slow     # compiles three train steps; the traced steps above cover the pairing
@pytest.mark.parametrize("model", [m for m in models.available_models() if m.endswith("_tiny")])
def test_tiny_backbones_train_a_step_on_the_demo_config(model):
    config = _config("demo", model)
    setup = model_state.build(config, 7, steps_per_epoch=10, global_batch=2)
    mesh = parallel.make_mesh()
    state = setup.init_state(0, mesh)
    rng = np.random.default_rng(0)
    t, h, w = setup.input_shape
    batch = {"clips": rng.integers(0, 256, (2, t, h, w, 3), dtype=np.uint8),
             "labels": np.array([0, 3], np.int32),
             "au_targets": (rng.random((2, 18)) > 0.5).astype(np.float32),
             "au_mask": np.ones(2, np.float32), "mask": np.ones(2, np.float32)}
    step = parallel.jit_step(_step(config, setup), mesh)
    state, metrics = step(state, parallel.global_batch(batch, mesh))
    assert int(state.step) == 1
    assert np.isfinite(float(metrics["loss"]))


def test_a_refused_pair_is_one_line_before_any_data_is_written(tmp_path, capsys):
    from audfer_jax import cli
    data = tmp_path / "data"
    rc = cli.main(["train", "--config",
                   os.path.join(REPO, "configs", "demo.py") + f":model=mae_dfer,data_dir={data}",
                   "--workdir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert len(err) == 1 and err[0].startswith("audfer-jax train: error:")
    assert "does not tile the token grid" in err[0]
    assert not data.exists()
