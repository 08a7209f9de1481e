"""Tests of audfer_jax.train (single process, one CPU device).

The trainer mechanics run on a micro model and in-memory data
(`_train_fakes.py`) so that compiling stays within seconds; the end-to-end
demo run with the real pipeline and a tiny backbone is `test_demo_config_end_to_end`.
"""

from __future__ import annotations

import json
import os
import sys

import jax
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import _train_fakes as fakes  # noqa: E402

from audfer_jax import steps  # noqa: E402
from audfer_jax import reporting  # noqa: E402
from audfer_jax import metrics  # noqa: E402
from audfer_jax import experiment  # noqa: E402
from audfer_jax import au as au_lib  # noqa: E402
from audfer_jax import checkpoint as ckpt_lib  # noqa: E402
from audfer_jax import losses  # noqa: E402
from audfer_jax import mixup  # noqa: E402
from audfer_jax import optim  # noqa: E402
from audfer_jax import train  # noqa: E402


# Reuses compiled steps across the runs of this module (conftest.py).
pytestmark = pytest.mark.usefixtures("module_compile_cache")


def _params(workdir, step=None, best=False):
    ck = ckpt_lib.TrainCheckpointer(workdir)
    try:
        step = step if step is not None else (ck.best_step() if best else ck.latest_step())
        path = os.path.join(workdir, "best" if best else "checkpoints", str(step), "state")
        from orbax.checkpoint import PyTreeCheckpointer
        with PyTreeCheckpointer() as c:
            tree = c.restore(path)
        return tree, ck.read_meta(step, best=best)
    finally:
        ck.close()


def _micro(**kw):
    return fakes.MicroModel(num_classes=7, **kw)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """2 epochs x 3 steps with dropout, checkpoints every step."""
    workdir = str(tmp_path_factory.mktemp("full"))
    cfg = fakes.micro_config(checkpoint_every_steps=1, keep_checkpoints=10,
                             **{"data": dict(fakes.default_data_config(), num_train=24)})
    result = train.train_and_evaluate(cfg, workdir, data=fakes, model=_micro(dropout=0.2))
    return cfg, workdir, result


def test_outputs_and_labelled_figures(uninterrupted):
    cfg, workdir, result = uninterrupted
    assert result["steps"] == 6
    assert result["class_names"] == list(fakes.CLASSES)
    assert result["last"]["label"] == "last" and result["last"]["epoch"] == 2
    assert result["best"]["label"] == "best" and result["best"]["criterion"] == "war+uar"
    hist = result["history"]
    assert [h["epoch"] for h in hist] == [1, 2]
    best = max(hist, key=lambda h: h["war"] + h["uar"])
    assert result["best"]["epoch"] == best["epoch"]
    assert result["best"]["value"] == pytest.approx(best["war"] + best["uar"])
    # 10 test clips padded to 2 batches of 8: the padding counts nowhere.
    cm = np.asarray(result["last"]["confusion_matrix"])
    assert cm.sum() == 10 and cm.shape == (7, 7)
    np.testing.assert_array_equal(cm.sum(1), np.bincount(np.arange(10) % 7, minlength=7))
    assert set(result["last"]["au_f1"]) == set(au_lib.AU_NAMES)
    with open(os.path.join(workdir, "metrics.json")) as f:
        assert json.load(f)["best"]["epoch"] == result["best"]["epoch"]
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["batch_size"] == 8
    lines = [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]
    scalars = [x for x in lines if x["kind"] == "scalars"]
    assert [x["step"] for x in scalars if "train/loss" in x] == [1, 2, 3, 4, 5, 6]
    assert any("test/uar" in x for x in scalars)
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))
    _, meta = _params(workdir)
    assert meta["class_names"] == list(fakes.CLASSES)
    assert (meta["epoch"], meta["batch_in_epoch"]) == (2, 0)


def test_resume_is_bit_identical(uninterrupted, tmp_path):
    cfg, full_dir, _ = uninterrupted
    workdir = str(tmp_path)
    cfg = fakes.micro_config(checkpoint_every_steps=1, keep_checkpoints=10,
                             **{"data": dict(fakes.default_data_config(), num_train=24)})
    cfg.stop_after_steps = 4          # killed after step 4: mid-epoch 2
    out = train.train_and_evaluate(cfg, workdir, data=fakes, model=_micro(dropout=0.2))
    assert out["stopped_at_step"] == 4
    _, meta = _params(workdir, 4)
    assert (meta["epoch"], meta["batch_in_epoch"]) == (1, 1)
    cfg.stop_after_steps = 0
    train.train_and_evaluate(cfg, workdir, data=fakes, model=_micro(dropout=0.2))
    resumed, _ = _params(workdir, 6)
    full, _ = _params(full_dir, 6)
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(full)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert jax.tree.structure(resumed) == jax.tree.structure(full)


def test_evaluate_checkpoint_reproduces_last(uninterrupted):
    cfg, workdir, result = uninterrupted
    again = train.evaluate_checkpoint(cfg, workdir, data=fakes, model=_micro(dropout=0.2))
    assert again["step"] == 6
    assert again["confusion_matrix"] == result["last"]["confusion_matrix"]
    assert again["uar"] == pytest.approx(result["last"]["uar"])


@pytest.mark.parametrize("lr, expected", [
    # SGD, lr 1e39 (inf in float32): the first update is non-finite
    # with a finite loss: the step's own all-finite flag names step 1 and the
    # update, not the clips of step 2 (whose loss is the first NaN one).
    (1e39, r"^the train state became non-finite at step 1 \(epoch 1, batch 1 of 2\): the "
           r"update diverged with a finite loss [\d.]+ \(not the data\); no checkpoint "
           r"saved yet: rerun with a lower learning rate \(e.g. --config.optim.lr=1e\+38\)"),
    # lr 1e30: the parameters stay finite (~1e30) and the forward pass of
    # step 2 overflows: a non-finite loss from a finite state, clips named.
    (1e30, r"^non-finite loss nan at step 2 \(epoch 1, batch 2 of 2\) from a finite "
           r"state: .* clip indices \(`index`\) of that batch: \[\d+, \d+"),
])
def test_nonfinite_names_the_step_and_the_cause(tmp_path, lr, expected):
    cfg = fakes.micro_config(**{"optim.optimizer": "sgd", "optim.lr": lr,
                                "optim.weight_decay": 0.0, "num_epochs": 1})
    with pytest.raises(FloatingPointError, match=expected):
        train.train_and_evaluate(cfg, str(tmp_path), data=fakes, model=_micro())
    assert not os.listdir(tmp_path / "checkpoints")


def test_pmap_strategy_matches_jit(tmp_path):
    # One device: pmap's explicit psum/pmean path gives jit's parameters.
    results = {}
    for strategy in ("jit", "pmap"):
        cfg = fakes.micro_config(num_epochs=1, strategy=strategy)
        out = train.train_and_evaluate(cfg, str(tmp_path / strategy), data=fakes, model=_micro())
        assert out["steps"] == 2
        results[strategy] = _params(str(tmp_path / strategy), 2)[0]["params"]
    for a, b in zip(jax.tree.leaves(results["jit"]), jax.tree.leaves(results["pmap"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def test_train_step_loss_equals_audfer_loss():
    cfg = fakes.micro_config()
    model = _micro(norm="batch")
    dc = fakes.default_data_config()
    batch = next(fakes.create_train_dataset(dc, global_batch_size=8, seed=0, epoch=0))
    batch = {k: v for k, v in batch.items() if k != "index"}
    batch["au_mask"][:3] = 0.0
    prior = au_lib.prior("dfew")
    pos = au_lib.pos_weight("dfew", "distinct")
    tx, schedule = optim.make_optimizer(cfg.optim, steps.abstract_params(model, (8, 32, 32)),
                                        steps_per_epoch=2, num_epochs=1, global_batch_size=8)
    mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    state = steps.create_train_state(model, tx, (8, 32, 32), 0, mesh)
    step = steps.make_train_step(model, cfg, tx=tx, schedule=schedule, prior=prior,
                                 pos_weight=pos, lam=0.25, num_classes=7)
    _, m = jax.jit(step)(state, batch)
    # Independent forward pass (training-mode BN, no dropout) and the lead's loss.
    out, _ = model.apply({"params": state.params, "batch_stats": state.batch_stats},
                         batch["clips"], train=True, mutable=["batch_stats"])
    expected, parts = losses.audfer_loss(out.logits, out.au_logits, batch["labels"],
                                         batch["au_targets"], prior, pos, lam=0.25,
                                         scale=5.0, mask=batch["mask"],
                                         au_mask=batch["au_mask"])
    assert float(m["loss"]) == pytest.approx(float(expected), rel=1e-5)
    assert float(m["au_bce"]) == pytest.approx(float(parts["au_bce"]), rel=1e-5)


def test_resolve_loss_variants():
    cfg = fakes.micro_config()
    dc = fakes.default_data_config()
    cfg.loss = "ce"
    lam, prior, pos = experiment.resolve_loss(cfg, "demo", 7, fakes, dc)
    assert lam == 0.0 and pos is None
    np.testing.assert_array_equal(prior, au_lib.prior("dfew"))
    cfg.loss = "au"
    lam, _, pos = experiment.resolve_loss(cfg, "dfew", 7, fakes, dc)
    assert lam == 0.25
    np.testing.assert_array_equal(pos, au_lib.pos_weight("dfew", "global"))
    cfg.loss = "au_minor"
    _, _, pos = experiment.resolve_loss(cfg, "ferv39k", 7, fakes, dc)
    np.testing.assert_array_equal(pos, au_lib.pos_weight("ferv39k", "minor"))
    cfg.loss = "au_from_data"
    cfg.au.per_class = True
    cfg.au.prior = "from_data"
    _, prior, pos = experiment.resolve_loss(cfg, "demo", 7, fakes, dc)
    targets, mask, labels = fakes.train_au_statistics(dc)
    np.testing.assert_allclose(pos, au_lib.estimate_pos_weight(
            targets, labels, 7, per_class=True, au_mask=mask))
    np.testing.assert_allclose(prior, au_lib.estimate_prior(
            targets, labels, 7, au_mask=mask, rescale="reference"))
    cfg.loss = "focal"
    with pytest.raises(ValueError, match="unknown loss"):
        experiment.resolve_loss(cfg, "demo", 7, fakes, dc)


def test_mixup_against_numpy():
    rng = np.random.default_rng(0)
    b = {"clips": rng.integers(0, 256, (4, 2, 16, 16, 3)).astype(np.uint8),
         "labels": np.array([0, 1, 2, 3], np.int32),
         "au_targets": (rng.random((4, 18)) < 0.5).astype(np.float32),
         "au_mask": np.array([1, 1, 0, 1], np.float32), "mask": np.ones(4, np.float32)}
    x = b["clips"].astype(np.float32) / 255

    def onehot(y):
        o = np.full((4, 7), 0.1 / 7)
        o[np.arange(4), y] += 0.9
        return o

    # Mixup only: a convex blend with the reversed batch.
    out = jax.jit(lambda r: mixup.mixup_cutmix(r, b, 7, cutmix_alpha=0.0))(jax.random.PRNGKey(1))
    lam = float(out["mix_lam"])
    assert 0 < lam < 1
    np.testing.assert_allclose(out["clips"], lam * x + (1 - lam) * x[::-1], atol=1e-6)
    y = onehot(b["labels"])
    np.testing.assert_allclose(out["label_probs"], lam * y + (1 - lam) * y[::-1], atol=1e-6)
    np.testing.assert_allclose(out["label_probs"].sum(1), 1.0, atol=1e-6)
    np.testing.assert_allclose(out["au_targets"],
                               lam * b["au_targets"] + (1 - lam) * b["au_targets"][::-1], atol=1e-6)
    np.testing.assert_array_equal(out["au_mask"], [1, 0, 0, 1])
    # CutMix only: pixels are either own or the partner's; lam = uncovered fraction.
    out = jax.jit(lambda r: mixup.mixup_cutmix(r, b, 7, mixup_alpha=0.0))(jax.random.PRNGKey(3))
    c = np.asarray(out["clips"])
    own = np.all(np.isclose(c, x), axis=(0, 1, 4))
    other = np.all(np.isclose(c, x[::-1]), axis=(0, 1, 4))
    assert np.all(own | other)
    assert float(out["mix_lam"]) == pytest.approx(1 - (~own).mean())
    # prob 0: nothing changes but the smoothing.
    out = mixup.mixup_cutmix(jax.random.PRNGKey(0), b, 7, prob=0.0)
    np.testing.assert_allclose(out["clips"], x, atol=1e-7)
    np.testing.assert_allclose(out["label_probs"], onehot(b["labels"]), atol=1e-7)


def test_confusion_image_and_criterion():
    img = reporting.confusion_image(np.diag([3, 0, 2]) + np.eye(3, k=1, dtype=int), cell=4)
    assert img.shape == (1, 12, 12, 3) and img.dtype == np.uint8
    # Row 0: 3/4 correct -> darker than row 2 off-diagonal (0).
    assert img[0, 2, 2, 0] < img[0, 10, 2, 0]
    assert metrics.criterion({"war": 60.0, "uar": 40.0}, "war+uar") == 100.0
    with pytest.raises(ValueError, match="best_metric"):
        metrics.criterion({"war": 1.0, "uar": 1.0}, "f1")


def test_init_from_converted_variables(tmp_path):
    model = _micro()
    params = steps.abstract_params(model, (8, 32, 32))
    rng = np.random.default_rng(5)
    loaded = {"params": jax.tree.map(
            lambda s: rng.normal(size=s.shape).astype(np.float32), params)}
    del loaded["params"]["au_head"]                     # stays fresh, as a new AU head would
    ckpt_lib.save_variables(tmp_path / "converted", loaded, {"source": "test"})
    cfg = fakes.micro_config(num_epochs=1, init_from=str(tmp_path / "converted"),
                             **{"optim.lr": 0.0})
    train.train_and_evaluate(cfg, str(tmp_path / "run"), data=fakes, model=model)
    tree, _ = _params(str(tmp_path / "run"), 2)
    got = tree["params"]
    for key in loaded["params"]:
        for a, b in zip(jax.tree.leaves(got[key]), jax.tree.leaves(loaded["params"][key])):
            np.testing.assert_array_equal(np.asarray(a), b)       # lr 0: unchanged
    assert "au_head" in got


def test_configs_and_cli_errors(capsys):
    from configs import demo, former_dfer, m3dfel, mae_dfer
    c = former_dfer.get_config("dataset=dfew,fold=3,loss=au_distinct")
    assert (c.data.name, c.data.fold, c.loss, c.optim.optimizer) == ("dfew", 3, "au_distinct", "sgd")
    c = m3dfel.get_config("dataset=ferv39k,loss=ce")
    assert (c.data.fold, c.label_smoothing, c.optim.schedule) == (0, 0.1, "timm_cosine")
    c = mae_dfer.get_config("dataset=mafw,fold=5")
    assert c.au.prior == "from_data" and c.loss == "au_from_data" and c.mixup.enabled
    assert c.data.sampling_rate == 4 and mae_dfer.get_config("dataset=ferv39k").data.sampling_rate == 1
    assert demo.get_config().model == "former_dfer_tiny"
    with pytest.raises(ValueError, match="folds 1..5"):
        former_dfer.get_config("dataset=dfew,fold=6")
    with pytest.raises(ValueError, match="unknown config argument"):
        former_dfer.get_config("datset=dfew")
    with pytest.raises(ValueError, match="unknown loss"):
        former_dfer.get_config("loss=focal")
    from audfer_jax.cli import train as main
    assert main.main(["--workdir", "/tmp/x"]) == 2
    assert "--config and --workdir are required" in capsys.readouterr().err


def test_demo_config_end_to_end(tmp_path):
    """configs/demo.py with the real pipeline: writes 35 demo clips, prepares the
    fold, trains the tiny Former-DFER one epoch and evaluates (about 95 s on the
    loaded 2-core machine, most of it XLA compiling the tiny backbone)."""
    pytest.importorskip("tensorflow")
    from configs import demo
    cfg = demo.get_config(f"num_clips=35,epochs=1,size=32,data_dir={tmp_path / 'data'}")
    cfg.batch_size = 8
    cfg.progress_bar = False
    result = train.train_and_evaluate(cfg, str(tmp_path / "run"))
    from audfer_jax.data import pipeline
    info = pipeline.dataset_info(cfg.data)
    assert result["steps"] == info.num_train // 8
    assert np.sum(result["last"]["confusion_matrix"]) == info.num_test
    assert result["class_names"] == list(info.class_names)
    assert result["best"]["epoch"] == 1 and np.isfinite(result["last"]["loss"])
    assert os.path.isfile(tmp_path / "run" / "metrics.json")


def _all_leaves_finite(tree) -> bool:
    return all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(tree)
               if np.issubdtype(np.asarray(x).dtype, np.floating))


def test_divergence_saves_nothing_nonfinite_and_keeps_the_last_finite_checkpoints(tmp_path):
    import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
    workdir = str(tmp_path)
    model = _micro()
    # 3 epochs of 2 steps; stopped after step 4, saved at every step, 2 kept.
    cfg = fakes.micro_config(**{"num_epochs": 3, "checkpoint_every_steps": 1,
                                "keep_checkpoints": 2, "stop_after_steps": 4})
    train.train_and_evaluate(cfg, workdir, data=fakes, model=model)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3", "4"]
    # Resumed with an infinite learning rate (1e39 is inf in float32): AdamW's
    # first update of step 5 makes every parameter non-finite.
    cfg.stop_after_steps = 0
    cfg.optim.lr = 1e39
    with pytest.raises(FloatingPointError) as e:
        train.train_and_evaluate(cfg, workdir, data=fakes, model=model)
    assert str(e.value).startswith(
            "the train state became non-finite at step 5 (epoch 3, batch 1 of 2): the update "
            "diverged with a finite loss ")
    assert str(e.value).endswith(
            f"(not the data); nothing saved from it; last finite checkpoint: step 4 "
            f"({tmp_path / 'checkpoints' / '4'}); rerun the same command with a lower "
            f"learning rate (e.g. --config.optim.lr=1e+38) to resume from it")
    # Retention kept the two finite checkpoints; nothing non-finite on disk.
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3", "4"]
    setup = experiment.Experiment(cfg, workdir, fakes, for_training=False, model=model)
    ck = ckpt_lib.TrainCheckpointer(workdir, async_save=False)
    try:
        for step in (3, 4):
            state, _ = ck.restore(setup.state, step)
            assert _all_leaves_finite((state.params, state.opt_state, state.batch_stats))
        best, _ = ck.restore(setup.state, best=True)
        assert _all_leaves_finite(best.params)
        # A run directory poisoned by an older version: a NaN state at step 6.
        nan = state.replace(params=jax.tree.map(lambda x: x * np.nan, state.params))
        meta = ck.read_meta(4)
        ck.latest.save(6, args=ocp.args.Composite(state=ocp.args.StandardSave(nan),
                                                  meta=ocp.args.JsonSave(meta)), force=True)
        ck.wait_until_finished()
    finally:
        ck.close()
    cfg.optim.lr = 1e-2
    with pytest.raises(FloatingPointError) as e:
        train.train_and_evaluate(cfg, workdir, data=fakes, model=model)
    where = tmp_path / "checkpoints"
    assert str(e.value) == (
            f"{where / '6'}: the newest checkpoint holds NaN or infinite values (written by a "
            f"version that did not check saves); newest finite checkpoint: step 4 "
            f"({where / '4'}); move the newer step folder(s) 6 out of {where} to resume from "
            f"it, with a lower learning rate (e.g. --config.optim.lr=0.001)")


def test_checkpointer_refuses_a_nonfinite_state(tmp_path):
    setup = experiment.Experiment(fakes.micro_config(), str(tmp_path), fakes, for_training=False,
                         model=_micro())
    state = setup.state
    ck = ckpt_lib.TrainCheckpointer(str(tmp_path), save_every_steps=1, async_save=False)
    try:
        assert ck.maybe_save(1, state, {"step": 1})
        bad = state.replace(batch_stats=jax.tree.map(lambda x: x + np.inf, state.batch_stats)
                            if jax.tree.leaves(state.batch_stats) else state.batch_stats,
                            opt_state=jax.tree.map(
                                lambda x: x * np.nan if np.issubdtype(x.dtype, np.floating)
                                else x, state.opt_state))
        assert not ckpt_lib.all_finite(bad) and ckpt_lib.all_finite(state)
        with pytest.raises(ckpt_lib.NonFiniteStateError, match=(
                r"^the train state of step 2 holds NaN or infinite values; not saved; last "
                r"finite checkpoint: step 1 ")):
            ck.maybe_save(2, bad, {"step": 2})
        with pytest.raises(ckpt_lib.NonFiniteStateError):
            ck.save_best(2, bad, {"step": 2})
        ck.wait_until_finished()
        assert ck.all_steps() == [1] and ck.all_steps(best=True) == []
    finally:
        ck.close()
