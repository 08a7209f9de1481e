"""Tests of audfer_jax.checkpoint."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from audfer_jax import checkpoint as ckpt_lib

HERE = Path(__file__).resolve().parent


def _variables():
    rng = np.random.default_rng(0)
    return {"params": {"fc": {"kernel": rng.normal(size=(5, 7)).astype(np.float32),
                              "bias": rng.normal(size=(7,)).astype(np.float32)},
                       "au_head": {"kernel": rng.normal(size=(5, 18)).astype(np.float32)}},
            "batch_stats": {"bn": {"mean": rng.normal(size=(5,)).astype(np.float32)}}}


def test_save_restore_variables_roundtrip(tmp_path):
    v = _variables()
    meta = {"model": "former_dfer", "class_names": ["a", "b"], "dropped": []}
    ckpt_lib.save_variables(tmp_path / "v", v, meta)
    got, got_meta = ckpt_lib.restore_variables(tmp_path / "v")
    assert got_meta == meta
    assert jax.tree.structure(got) == jax.tree.structure(v)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(v)):
        assert isinstance(a, jax.Array)
        np.testing.assert_array_equal(np.asarray(a), b)
    # With a target: its structure and shardings.
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), v)
    got, _ = ckpt_lib.restore_variables(tmp_path / "v", target)
    np.testing.assert_array_equal(np.asarray(got["params"]["fc"]["kernel"]),
                                  v["params"]["fc"]["kernel"])


def test_save_variables_errors(tmp_path):
    ckpt_lib.save_variables(tmp_path / "v", _variables(), {})
    with pytest.raises(FileExistsError, match="already exists"):
        ckpt_lib.save_variables(tmp_path / "v", _variables(), {})
    with pytest.raises(TypeError, match="JSON"):
        ckpt_lib.save_variables(tmp_path / "w", _variables(), {"x": object()})
    with pytest.raises(FileNotFoundError, match="no variables checkpoint"):
        ckpt_lib.restore_variables(tmp_path / "missing")
    bad = {"params": {"fc": {"kernel": jax.ShapeDtypeStruct((5, 8), jnp.float32)}}}
    with pytest.raises(ValueError):
        ckpt_lib.restore_variables(tmp_path / "v", bad)


def test_merge_variables():
    init = {"params": {"fc": {"kernel": np.zeros((5, 7))}, "au_head": {"kernel": np.zeros((5, 18))}}}
    loaded = {"params": {"fc": {"kernel": np.ones((5, 7))}}}
    merged, fresh = ckpt_lib.merge_variables(init, loaded)
    np.testing.assert_array_equal(merged["params"]["fc"]["kernel"], 1.0)
    assert fresh == ["params/au_head/kernel"]
    with pytest.raises(ValueError, match=r"params/fc/kernel: loaded shape \(5, 3\)"):
        ckpt_lib.merge_variables(init, {"params": {"fc": {"kernel": np.ones((5, 3))}}})
    with pytest.raises(ValueError, match="not in the model"):
        ckpt_lib.merge_variables(init, {"params": {"head": {"kernel": np.ones((5, 7))}}})


def _state():
    params = {"w": jnp.arange(3.0), "b": jnp.zeros(())}
    tx = optax.chain(optax.add_decayed_weights(1e-4), optax.trace(0.9), optax.scale(-0.1))
    opt_state = tx.init(params)
    return {"step": jnp.int32(0), "params": params, "opt_state": opt_state,
            "batch_stats": {}, "rng": jax.random.PRNGKey(3)}


def test_train_checkpointer_policies_and_best(tmp_path):
    state = _state()
    ck = ckpt_lib.TrainCheckpointer(tmp_path, save_every_steps=4, extra_steps=[3, 10], keep=2,
                                    async_save=True)
    saved = [s for s in range(1, 11) if ck.maybe_save(s, state, lambda s=s: {"epoch": s})]
    assert saved == [3, 4, 8, 10]
    assert ck.maybe_save(11, state, {"epoch": 11}, force=True)     # off-policy step
    assert not ck.maybe_save(11, state, {"x": 1}, force=True)     # never twice
    ck.wait_until_finished()
    assert sorted(ck.latest.all_steps()) == [10, 11]    # LatestN(2)
    assert ck.latest_step() == 11
    ck.save_best(4, state, {"value": 1.0})
    ck.save_best(8, state, {"value": 2.0})
    ck.wait_until_finished()
    assert ck.best.all_steps() == [8] and ck.read_meta(best=True) == {"value": 2.0}
    restored, meta = ck.restore(state)
    assert meta == {"epoch": 11}
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    ck.close()
    empty = ckpt_lib.TrainCheckpointer(tmp_path / "none")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        empty.restore(state)
    assert empty.read_meta() is None
    empty.close()


def test_restore_from_8_devices_onto_1(run_multidevice, tmp_path):
    script = HERE / "multidevice" / "checkpoint_reshard.py"
    assert "OK save" in run_multidevice(script, "save", tmp_path, num_devices=8)
    assert "OK restore" in run_multidevice(script, "restore", tmp_path, num_devices=1)


def test_run_directory_lookup(tmp_path):
    """The reader's view of a run: complete steps, newest best/last, config.json."""
    run = tmp_path / "run"
    for sub, step in (("checkpoints", 4), ("checkpoints", 10), ("best", 6)):
        (run / sub / str(step) / "state").mkdir(parents=True)
    (run / "checkpoints" / "12").mkdir()                 # no `state` item: incomplete
    (run / "checkpoints" / "14.orbax-checkpoint-tmp-3").mkdir()
    assert ckpt_lib.saved_steps(run / "checkpoints") == [4, 10, 12]
    assert ckpt_lib.saved_steps(run / "checkpoints", with_state=True) == [4, 10]
    assert ckpt_lib.saved_steps(run / "absent") == []
    assert ckpt_lib.newest_step_dir(str(run)) == str(run / "best" / "6")
    assert ckpt_lib.newest_step_dir(str(run), "last") == str(run / "checkpoints" / "10")
    assert ckpt_lib.is_state_step(run / "best" / "6")
    assert not ckpt_lib.is_state_step(run / "checkpoints" / "12")
    assert ckpt_lib.run_dir_of_step(str(run / "best" / "6")) == str(run)
    no_best = tmp_path / "no_best"
    (no_best / "checkpoints" / "3" / "state").mkdir(parents=True)
    assert ckpt_lib.newest_step_dir(str(no_best)) == str(no_best / "checkpoints" / "3")
    assert ckpt_lib.newest_step_dir(str(tmp_path / "empty")) is None

    with pytest.raises(FileNotFoundError, match="config.json: not found"):
        ckpt_lib.load_run_config(str(run))
    (run / "config.json").write_text('{"model": "former_dfer", "data": {"fold": 2}}')
    assert ckpt_lib.run_config_path(str(run)) == str(run / "config.json")
    config = ckpt_lib.load_run_config(str(run))
    assert config.model == "former_dfer" and config.data.fold == 2

    variables = tmp_path / "vars"
    ckpt_lib.save_variables(variables, _variables(), {"model": "former_dfer"})
    assert ckpt_lib.is_variables_checkpoint(variables)
    assert not ckpt_lib.is_variables_checkpoint(run)


def test_per_block_mae_dfer_checkpoints_restore_into_the_stacked_layout(tmp_path):
    """Checkpoints written before MAE-DFER's blocks were stacked (`blocks_0` ..
    `blocks_{depth-1}`, in the params and in the optimizer's moments) restore
    onto today's stacked state: each block's tensors become its row of the
    stacked leaves, the last block `last_block`."""
    import ml_collections  # pylint: disable=g-import-not-at-top
    from audfer_jax import optim  # pylint: disable=g-import-not-at-top
    from audfer_jax.models import mae_dfer  # pylint: disable=g-import-not-at-top
    model = mae_dfer.mae_dfer_tiny(depth=3)
    clips = jax.ShapeDtypeStruct((1, 8, 32, 32, 3), jnp.uint8)
    shapes = jax.eval_shape(lambda c: model.init(jax.random.key(0), c, train=False), clips)
    rng = np.random.default_rng(1)
    params = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape), jnp.float32),
                          shapes["params"])
    cfg = ml_collections.ConfigDict(dict(optimizer="adamw", lr=1e-3, b1=0.9, b2=0.999, eps=1e-8,
                                         weight_decay=0.05, decay_rule="mae_dfer",
                                         layer_decay=0.75, schedule="constant"))
    tx, _ = optim.make_optimizer(cfg, params, steps_per_epoch=1, num_epochs=1,
                                 global_batch_size=1, num_layers=3)
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    _, opt_state = tx.update(grads, tx.init(params), params)     # non-zero moments
    state = {"step": jnp.int32(5), "params": params, "opt_state": opt_state,
             "batch_stats": {}, "rng": jax.random.PRNGKey(3)}
    old = mae_dfer.per_block_layout(state)
    assert sorted(k for k in old["params"] if k.startswith("blocks")) == [
            "blocks_0", "blocks_1", "blocks_2"]
    assert "blocks_1" in old["opt_state"][0].mu      # the Adam moments are per block too

    ck = ckpt_lib.TrainCheckpointer(tmp_path / "run", async_save=False)
    assert ck.maybe_save(5, old, {"epoch": 1}, force=True)
    restored, meta = ck.restore(state)
    ck.close()
    direct, _ = ckpt_lib.restore_state_from_directory(tmp_path / "run" / "checkpoints" / "5",
                                                      state)
    ckpt_lib.save_variables(tmp_path / "v", {"params": old["params"]}, {"model": "mae_dfer"})
    variables, _ = ckpt_lib.restore_variables(tmp_path / "v", {"params": params})
    untargeted, _ = ckpt_lib.restore_variables(tmp_path / "v")
    assert meta == {"epoch": 1}
    for got in (restored, direct):
        assert jax.tree.structure(got) == jax.tree.structure(state)
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                     got, state)
    for got in (variables, untargeted):
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                     got, {"params": params})
    row = restored["params"]["blocks"]["mlp"]["fc1"]["kernel"][1]
    np.testing.assert_array_equal(np.asarray(row),
                                  np.asarray(old["params"]["blocks_1"]["mlp"]["fc1"]["kernel"]))
    # A checkpoint of another structure is still an error, the stored one named.
    wrong = dict(state, params=dict(params, head={"kernel": jnp.zeros((64, 9))}))
    with pytest.raises(ValueError):
        ckpt_lib.restore_state_from_directory(tmp_path / "run" / "checkpoints" / "5", wrong)
