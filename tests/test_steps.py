"""The train step with a device-side augmentation: the model sees the augmented clips."""

import os
import sys

import jax
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import _train_fakes as fakes  # noqa: E402

from audfer_jax import au as au_lib  # noqa: E402
from audfer_jax import losses  # noqa: E402
from audfer_jax import optim  # noqa: E402
from audfer_jax import steps  # noqa: E402
from audfer_jax.data import augment_device  # noqa: E402


def _setup(model, shape, host_size):
    """Config, optimizer, schedule, state, and a host batch of `host_size` px clips."""
    cfg = fakes.micro_config()
    tx, schedule = optim.make_optimizer(cfg.optim, steps.abstract_params(model, shape),
                                        steps_per_epoch=2, num_epochs=1, global_batch_size=8)
    mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    dc = dict(fakes.default_data_config(), image_size=host_size)
    batch = next(fakes.create_train_dataset(dc, global_batch_size=8, seed=0, epoch=0))
    batch = {k: v for k, v in batch.items() if k != "index"}
    return cfg, tx, schedule, steps.create_train_state(model, tx, shape, 0, mesh), batch


def test_augment_runs_before_the_model_with_its_own_key():
    model = fakes.MicroModel(num_classes=7)
    cfg, tx, schedule, state, batch = _setup(model, (8, 32, 32), 64)
    keys = []

    def augment(key, clips):           # a 64 -> 32 px subsample that records its key
        keys.append(key)
        return clips[:, :, ::2, ::2, :]

    prior = au_lib.prior("dfew")
    step = steps.make_train_step(model, cfg, tx=tx, schedule=schedule, prior=prior,
                                 pos_weight=None, lam=0.25, num_classes=7, augment=augment)
    _, m = step(state, batch)          # eager, so the recorded key is concrete
    small = batch["clips"][:, :, ::2, ::2, :]
    out = model.apply({"params": state.params}, small, train=True)
    expected, _ = losses.audfer_loss(out.logits, out.au_logits, batch["labels"],
                                     batch["au_targets"], prior, None, lam=0.25, scale=5.0,
                                     mask=batch["mask"], au_mask=batch["au_mask"])
    assert float(m["loss"]) == pytest.approx(float(expected), rel=1e-5)
    # The augmentation key is neither the mixup nor the dropout key of the step.
    rng = jax.random.fold_in(state.rng, 0)
    split = jax.random.split(rng)
    assert not np.array_equal(np.asarray(keys[0]), np.asarray(split[0]))
    assert not np.array_equal(np.asarray(keys[0]), np.asarray(split[1]))


def test_former_dfer_device_recipe_in_the_step_gives_model_sized_clips():
    model = fakes.MicroModel(num_classes=7)
    cfg, tx, schedule, state, batch = _setup(model, (8, 32, 32), 48)
    from audfer_jax.data.config import DataConfig
    augment = augment_device.make_device_augment(
            DataConfig(augment="former_dfer", image_size=32, prepare_size=48))
    assert augment is not None
    step = steps.make_train_step(model, cfg, tx=tx, schedule=schedule,
                                 prior=au_lib.prior("dfew"), pos_weight=None, lam=0.25,
                                 num_classes=7, augment=augment)
    new_state, m = jax.jit(step)(state, batch)
    assert np.isfinite(float(m["loss"])) and int(new_state.step) == 1
    assert augment_device.make_device_augment(DataConfig(augment="none")) is None
    assert augment_device.make_device_augment(
            DataConfig(augment="former_dfer", augment_device=False)) is None


def test_accelerator_fields_reach_registered_backbones_only():
    import jax.numpy as jnp
    from audfer_jax import config_lib, model_state
    cfg = config_lib.base_config()
    cfg.model = "former_dfer_tiny"
    assert model_state.build_model(cfg, 7).dtype == jnp.float32
    cfg.dtype, cfg.remat_policy = "bfloat16", "full"
    model = model_state.build_model(cfg, 7)
    assert model.dtype == jnp.bfloat16 and model.remat_policy == "full"
    cfg.dtype = "int8"
    with pytest.raises(ValueError, match="dtype must be one of"):
        model_state.build_model(cfg, 7)


def test_rng_impl_changes_only_the_dropout_stream():
    model = fakes.MicroModel(num_classes=7, dropout=0.5)
    cfg, tx, schedule, state, batch = _setup(model, (8, 32, 32), 32)
    out = {}
    for impl in ("threefry", "rbg"):
        cfg.rng_impl = impl
        step = steps.make_train_step(model, cfg, tx=tx, schedule=schedule,
                                     prior=au_lib.prior("dfew"), pos_weight=None, lam=0.25,
                                     num_classes=7)
        out[impl] = float(jax.jit(step)(state, batch)[1]["loss"])
    assert np.isfinite(out["rbg"]) and out["rbg"] != out["threefry"]


def test_distributed_start_is_detected_on_a_tpu_pod_slice(monkeypatch):
    import jax as jax_mod
    from audfer_jax import config_lib, parallel
    calls = []
    monkeypatch.setattr(jax_mod.distributed, "initialize", lambda **kw: calls.append(kw))
    cfg = config_lib.base_config()
    for var in ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "10.0.0.2")          # one worker: no
    parallel.maybe_initialize_distributed(cfg)
    assert calls == []
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "10.0.0.2,10.0.0.3")  # a pod slice: yes
    parallel.maybe_initialize_distributed(cfg)
    assert calls == [{}]
