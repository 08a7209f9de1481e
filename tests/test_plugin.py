"""AU-DFER on a user's own backbone (audfer_jax.models.plugin).

The backbone of the end-to-end tests is `tests/plugin_backbone.py`, outside the
package, named by its import path `plugin_backbone:make_backbone` (tests/ on
sys.path here, PYTHONPATH in the subprocess). The bad backbones are written to
a temporary module so that each error message is checked against a real import.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)
sys.path.insert(0, TESTS)
import _train_fakes as fakes  # noqa: E402
import plugin_backbone  # noqa: E402

from audfer_jax import steps
from audfer_jax import model_state
from audfer_jax import experiment
from audfer_jax import config_lib
from audfer_jax import losses  # noqa: E402
from audfer_jax import models  # noqa: E402
from audfer_jax import optim  # noqa: E402
from audfer_jax import train  # noqa: E402

PATH = "plugin_backbone:make_backbone"
T, S = 4, 16            # tiny clips for the in-memory runs
# num_segments x frames_per_segment = T for predict's sampler (fakes ignore them).
SMALL_DATA = dict(fakes.default_data_config(), num_frames=T, image_size=S, num_segments=2,
                  frames_per_segment=2)


# Reuses compiled steps across the runs of this module (conftest.py).
pytestmark = pytest.mark.usefixtures("module_compile_cache")


def _clips(b=2, t=T, s=S, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (b, t, s, s, 3), np.uint8))


class MeanBackbone(nn.Module):
    """Features = per-frame channel means `[B, T * 3]`: no parameters, so the
    expected heads' input is computable with NumPy."""
    dtype: str = "float32"

    @nn.compact
    def __call__(self, clips, train=False):
        assert clips.dtype == jnp.float32      # the wrapper hands over float32 clips
        return clips.mean(axis=(2, 3)).reshape(clips.shape[0], -1).astype(self.dtype)


# ---------------------------------------------------------------------------
# with_au_head.
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_with_au_head_adds_heads_on_pooled_features(dtype):
    clips = _clips(3)
    model = models.with_au_head(MeanBackbone(dtype=dtype), num_classes=7)
    variables = model.init(jax.random.PRNGKey(0), clips, train=False)
    params = variables["params"]
    d = T * 3
    assert set(params) == {"head", "au_head"}
    assert params["head"]["kernel"].shape == (d, 7) and params["au_head"]["kernel"].shape == (d, 18)
    out = model.apply(variables, clips, train=False)
    feat = (np.asarray(clips, np.float64) / 255.0).mean(axis=(2, 3)).reshape(3, d)
    tol = 1e-6 if dtype == "float32" else 1e-2
    assert out.features.dtype == jnp.float32
    np.testing.assert_allclose(out.features, feat, atol=tol)
    for name, got in (("head", out.logits), ("au_head", out.au_logits)):
        assert got.dtype == jnp.float32
        want = np.asarray(out.features) @ np.asarray(params[name]["kernel"]) + np.asarray(
                params[name]["bias"])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_heads_initialised_like_pytorch_linear():
    """Registered Former-DFER/M3DFEL heads: nn.Linear default, U(+-1/sqrt(D))."""
    clips = _clips(1, t=32)                       # D = 96
    model = models.with_au_head(MeanBackbone(), num_classes=7)
    params = model.init(jax.random.PRNGKey(1), clips)["params"]
    bound = 1.0 / np.sqrt(32 * 3)
    for name in ("head", "au_head"):
        for leaf in ("kernel", "bias"):
            x = np.asarray(params[name][leaf])
            assert np.abs(x).max() <= bound
        k = np.asarray(params[name]["kernel"])
        assert np.abs(k).max() > 0.8 * bound                       # uniform, not tiny
        assert k.std() == pytest.approx(bound / np.sqrt(3), rel=0.15)


def test_backbone_returning_model_output_is_used_as_is():
    backbone = fakes.MicroModel(num_classes=7, num_frames=T, image_size=S)
    model = models.with_au_head(backbone, num_classes=7)
    clips = _clips()
    variables = model.init(jax.random.PRNGKey(0), clips)
    assert set(variables["params"]) == {"backbone"}          # no head added
    out = model.apply(variables, clips)
    inner = {"params": variables["params"]["backbone"]}
    want = backbone.apply(inner, jnp.asarray(clips, jnp.float32) / 255.0)
    for a, b in zip(out, want):
        np.testing.assert_array_equal(a, b)
    assert (model.num_frames, model.image_size) == (T, S)


def test_get_model_import_path_and_input_size():
    model = models.get_model(PATH, num_classes=7, num_aus=18, width=4)
    assert isinstance(model, models.AUHeadModel)
    assert isinstance(model.backbone, plugin_backbone.Tiny3DCNN) and model.backbone.width == 4
    # No size attributes: the data config's clip size.
    data = dict(num_frames=T, image_size=S)
    assert model_state.model_input_shape(model, PATH, data) == (T, S, S)
    assert models.default_input_shape(PATH, data) == (T, S, S)
    out = model.apply(model.init(jax.random.PRNGKey(0), _clips()), _clips())
    assert (out.logits.shape, out.au_logits.shape, out.features.shape) == ((2, 7), (2, 18), (2, 8))
    with pytest.raises(models.BackboneError, match="input size is unknown"):
        models.default_input_shape(PATH)
    with pytest.raises(ValueError, match="import path 'package.module:factory'"):
        models.get_model("resnet50", num_classes=7)
    with pytest.raises(models.BackboneError, match="^with_au_head: expected a flax.linen.Module "
                       "backbone, got builtins.function$"):
        models.with_au_head(lambda clips, train=False: clips, num_classes=7)


# ---------------------------------------------------------------------------
# Bad backbones: one line each, naming the import path and what was expected.
# ---------------------------------------------------------------------------

_BAD = textwrap.dedent('''
    import flax.linen as nn
    import jax.numpy as jnp
    from audfer_jax.models.base import ModelOutput

    NOT_CALLABLE = 3


    def returns_function():
        return lambda clips, train=False: clips


    class Bad(nn.Module):
        kind: str = "ok"

        @nn.compact
        def __call__(self, clips, train=False):
            x = nn.Dense(8)(clips.mean(axis=(1, 2, 3)))              # [B, 8]
            if self.kind == "rank3":
                return x[:, :, None]
            if self.kind == "rank1":
                return x.mean(-1)
            if self.kind == "batch":
                return x[:1]
            if self.kind == "int":
                return (x > 0).astype(jnp.int32)
            if self.kind == "tuple":
                return x, x
            if self.kind == "output":                                 # 8 classes, not 7
                return ModelOutput(x, jnp.zeros((x.shape[0], 18)), x)
            return x


    class SizedBad(Bad):
        num_frames: int = 4
        image_size: int = 16


    def unsized(kind="ok"):
        return Bad(kind=kind)


    def sized(kind="ok"):
        return SizedBad(kind=kind)


    def full(num_classes, num_aus=18):
        return SizedBad(kind="output") if num_classes == 8 else None
''')


@pytest.fixture(scope="module")
def bad_module(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_backbones")
    (root / "plugin_bad_backbones.py").write_text(_BAD)
    sys.path.insert(0, str(root))
    yield "plugin_bad_backbones"
    sys.path.remove(str(root))
    sys.modules.pop("plugin_bad_backbones", None)


def _one_line(excinfo, *parts):
    msg = str(excinfo.value)
    assert "\n" not in msg
    for part in parts:
        assert part in msg, (part, msg)
    return msg


@pytest.mark.parametrize("path,error,parts", [
        ("no_such_pkg_13.backbones:make", models.BackboneImportError,
         ["'no_such_pkg_13.backbones:make'", "cannot import module 'no_such_pkg_13.backbones'",
          "No module named 'no_such_pkg_13'"]),
        ("{mod}:missing", models.BackboneImportError,
         ["has no attribute 'missing'", "expected a function returning a flax.linen.Module"]),
        ("{mod}:sized.nested", models.BackboneImportError, ["has no attribute 'sized.nested'"]),
        ("{mod}:a:b", models.BackboneImportError, ["expected 'package.module:factory'"]),
        (":make", models.BackboneImportError, ["expected 'package.module:factory'"]),
        ("{mod}:NOT_CALLABLE", models.BackboneError,
         ["'NOT_CALLABLE' is a int", "expected a function returning a flax.linen.Module"]),
        ("{mod}:returns_function", models.BackboneError,
         ["the factory returned a builtins.function", "expected a flax.linen.Module"]),
])
def test_import_errors(bad_module, path, error, parts):
    path = path.format(mod=bad_module)
    with pytest.raises(error) as e:
        models.get_model(path, num_classes=7)
    _one_line(e, f"config.model {path!r}", *parts)
    if error is models.BackboneImportError:
        assert isinstance(e.value, ImportError) and isinstance(e.value, ValueError)


def test_factory_rejecting_overrides(bad_module):
    path = f"{bad_module}:sized"
    with pytest.raises(models.BackboneError) as e:
        models.get_model(path, num_classes=7, widht=3)
    _one_line(e, f"config.model {path!r}", "does not accept ['widht']",
              "config.model_overrides")


_SHAPE_CASES = [
        ("rank3", "the backbone output must have shape [B, D] (pooled clip features) for clips "
                  "of batch 2, got shape (2, 8, 1)"),
        ("rank1", "got shape (2,)"),
        ("batch", "got shape (1, 8)"),
        ("int", "the backbone output must have a floating dtype, got int32"),
        ("tuple", "the backbone output must be an array [B, D] (pooled clip features), got tuple"),
        ("output", "ModelOutput.logits must have shape [B, 7] for clips of batch 2, got shape "
                   "(2, 8)"),
]


@pytest.mark.parametrize("kind,expected", _SHAPE_CASES)
def test_bad_output_fails_at_build_time(bad_module, kind, expected):
    """With num_frames/image_size attributes, get_model checks with jax.eval_shape."""
    path = f"{bad_module}:sized"
    with pytest.raises(models.BackboneError) as e:
        models.get_model(path, num_classes=7, kind=kind)
    _one_line(e, f"config.model {path!r}: ", expected)


@pytest.mark.parametrize("kind,expected", [
        ("rank3", "the backbone output must have shape [B, D] (pooled clip features) for clips "
                  "of batch 1, got shape (1, 8, 1)"),
        ("int", "the backbone output must have a floating dtype, got int32"),
])
def test_bad_output_fails_when_the_trainer_traces_it(bad_module, kind, expected):
    """Without size attributes: at the trainer's first trace (abstract_params, batch 1)."""
    path = f"{bad_module}:unsized"
    model = models.get_model(path, num_classes=7, kind=kind)
    with pytest.raises(models.BackboneError) as e:
        steps.abstract_params(model, (T, S, S))
    _one_line(e, f"config.model {path!r}: ", expected)


def test_factory_gets_num_classes_when_it_names_it(bad_module):
    model = models.get_model(f"{bad_module}:full", num_classes=8, num_aus=18)
    out = jax.eval_shape(lambda: model.init_with_output(jax.random.PRNGKey(0), _clips())[0])
    assert out.logits.shape == (2, 8)


def test_module_in_working_directory_found_without_sys_path(tmp_path, monkeypatch):
    """Console scripts do not put the working directory on sys.path."""
    (tmp_path / "cwd_backbone_13.py").write_text(
            "import plugin_backbone\nmake = plugin_backbone.make_backbone\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    model = models.get_model("cwd_backbone_13:make", num_classes=7)
    assert isinstance(model.backbone, plugin_backbone.Tiny3DCNN)
    sys.modules.pop("cwd_backbone_13", None)


# ---------------------------------------------------------------------------
# Downstream: loss variants, sweep, resume, evaluate, predict, benchmarks.
# ---------------------------------------------------------------------------

def _config(**kw):
    c = fakes.micro_config(checkpoint_every_steps=1, keep_checkpoints=10,
                           **{"data": dict(SMALL_DATA)}, **kw)
    c.model = PATH
    return c


def test_every_loss_variant_trains_the_plugin():
    cfg = _config()
    model = model_state.build_model(cfg, 7)
    batch = next(fakes.create_train_dataset(SMALL_DATA, global_batch_size=8, seed=0, epoch=0))
    batch = {k: v for k, v in batch.items() if k != "index"}
    shape = model_state.model_input_shape(model, cfg.model, SMALL_DATA)
    tx, schedule = optim.make_optimizer(cfg.optim, steps.abstract_params(model, shape),
                                        steps_per_epoch=2, num_epochs=1, global_batch_size=8)
    mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    state = steps.create_train_state(model, tx, shape, 0, mesh)
    out = model.apply({"params": state.params}, batch["clips"], train=True)
    for variant in config_lib.LOSSES:
        cfg.loss = variant
        lam, prior, pos = experiment.resolve_loss(cfg, "demo", 7, fakes, SMALL_DATA)
        step = steps.make_train_step(model, cfg, tx=tx, schedule=schedule, prior=prior,
                                     pos_weight=pos, lam=lam, num_classes=7)
        new_state, m = jax.jit(step)(state, batch)
        expected, _ = losses.audfer_loss(out.logits, out.au_logits, batch["labels"],
                                         batch["au_targets"], prior, pos, lam=lam, scale=5.0,
                                         mask=batch["mask"], au_mask=batch["au_mask"])
        assert float(m["loss"]) == pytest.approx(float(expected), rel=1e-5), variant
        assert np.isfinite(float(m["grad_norm"])) and int(new_state.step) == 1


def _state_params(workdir, step):
    from orbax.checkpoint import PyTreeCheckpointer
    with PyTreeCheckpointer() as c:
        return c.restore(os.path.join(workdir, "checkpoints", str(step), "state"))["params"]


def test_sweep_resume_evaluate_predict_in_memory(tmp_path):
    from audfer_jax import evaluate
    from audfer_jax.experiments import folds as sweep_folds
    from audfer_jax.inference import predict, predictor as predictor_lib, preprocess

    def make_config(fold):
        c = fakes.micro_config(checkpoint_every_steps=1, keep_checkpoints=10, num_epochs=1,
                               **{"data": dict(SMALL_DATA)})
        return config_lib.apply_overrides(c, [("model", PATH)])     # as --config.model=...

    def runner(cfg, workdir):
        return train.train_and_evaluate(cfg, workdir, data=fakes)

    _, rows = sweep_folds.run_sweep(make_config, [1], str(tmp_path / "sweep"), runner=runner)
    full = str(tmp_path / "sweep" / "fold_1")
    with open(os.path.join(full, "config.json"), encoding="utf-8") as f:
        assert json.load(f)["model"] == PATH
    assert rows and os.path.isfile(os.path.join(full, "metrics.json"))

    # Killed after step 1 of 2, then resumed: the same parameters as uninterrupted.
    cfg = make_config(1)
    cfg.stop_after_steps = 1
    part = str(tmp_path / "resumed")
    assert train.train_and_evaluate(cfg, part, data=fakes)["stopped_at_step"] == 1
    cfg.stop_after_steps = 0
    result = train.train_and_evaluate(cfg, part, data=fakes)
    for a, b in zip(jax.tree.leaves(_state_params(part, 2)), jax.tree.leaves(_state_params(full, 2))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    # evaluate re-reads config.json and rebuilds the plug-in.
    summary = evaluate.evaluate(part, "last", data=fakes)
    assert summary["model"] == PATH and summary["step"] == 2
    assert summary["confusion_matrix"] == result["last"]["confusion_matrix"]

    # predict: the eval-mode forward pass of the restored parameters.
    pred = predictor_lib.load_predictor(part, "last")
    assert (pred.spec.num_frames, pred.image_size) == (T, S)
    frames = np.asarray(_clips(1, t=9, s=24)[0])
    got = predict.predict_clip(frames, pred)
    clip, _ = preprocess.prepare_clip(frames, pred)                  # [1, T, S, S, 3]
    model = model_state.build_model(cfg, 7)
    logits = model.apply({"params": _state_params(part, 2)}, clip, train=False).logits
    np.testing.assert_allclose([got["probabilities"][c] for c in pred.class_names],
                               np.asarray(jax.nn.softmax(logits[0])), rtol=1e-5, atol=1e-6)


def test_bench_train_and_bench_model(capsys):
    from audfer_jax.benchmarks import train as train_bench
    from audfer_jax.cli import bench_model as bench
    cfg = _config()
    r = train_bench.run_bench(cfg, batch=2, steps=1, warmup=0, log=lambda m: None)
    assert r["model"] == PATH and r["input_shape"] == [T, S, S]
    assert r["full_ms"] > 0 and r["without_au_ms"] > 0
    assert bench.main(["--model", PATH, "--batch", "2", "--steps", "1",
                       "--num-frames", str(T), "--image-size", str(S)]) == 0
    out = capsys.readouterr().out
    assert f"model {PATH}" in out and f"clips {T}x{S}x{S}" in out
    assert bench.main(["--model", PATH, "--steps", "1"]) == 1
    assert "input size is unknown" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# The demo set through the import path: train, evaluate, predict (new process).
# ---------------------------------------------------------------------------

def test_demo_set_train_evaluate_predict(tmp_path):
    pytest.importorskip("tensorflow")
    from PIL import Image

    from audfer_jax import evaluate
    from audfer_jax.inference import predict, predictor as predictor_lib, video
    sys.path.insert(0, REPO)
    from configs import demo
    cfg = demo.get_config(f"model={PATH},num_clips=35,epochs=1,size=32,"
                          f"data_dir={tmp_path / 'data'}")
    assert cfg.model == PATH and not cfg.model_overrides.to_dict()
    cfg.batch_size = 8
    cfg.progress_bar = False
    run = str(tmp_path / "run")
    result = train.train_and_evaluate(cfg, run)
    from audfer_jax.data import pipeline
    info = pipeline.dataset_info(cfg.data)
    assert result["steps"] == info.num_train // 8 >= 2
    assert np.sum(result["last"]["confusion_matrix"]) == info.num_test
    with open(os.path.join(run, "config.json"), encoding="utf-8") as f:
        assert json.load(f)["model"] == PATH

    summary = evaluate.evaluate(run, "last")
    assert summary["model"] == PATH
    assert summary["confusion_matrix"] == result["last"]["confusion_matrix"]

    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for k in range(1, 13):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), np.uint8)).save(frames / f"{k}.png")
    in_process = predict.predict_clip(video.read_clip(str(frames)),
                                      predictor_lib.load_predictor(run, "last"))
    # A fresh process re-imports plugin_backbone from the run's config.json.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, TESTS]), JAX_PLATFORMS="cpu")
    out_json = tmp_path / "pred.json"
    proc = subprocess.run([sys.executable, "-m", "audfer_jax", "predict", "--checkpoint", run,
                           "--which", "last", "--json", str(out_json), str(frames)],
                          env=env, cwd=str(tmp_path), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out_json, encoding="utf-8") as f:
        fresh = json.load(f)
    names = list(info.class_names)
    np.testing.assert_allclose([fresh["probabilities"][c] for c in names],
                               [in_process["probabilities"][c] for c in names], atol=1e-5)
    # Without the backbone's module on the path: one line naming it.
    env["PYTHONPATH"] = REPO
    proc = subprocess.run([sys.executable, "-m", "audfer_jax", "predict", "--checkpoint", run,
                           str(frames)], env=env, cwd=str(tmp_path), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 1
    assert f"cannot rebuild the run's model (config.model {PATH!r}: cannot import module " \
           "'plugin_backbone'" in proc.stderr
