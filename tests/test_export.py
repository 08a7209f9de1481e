"""Exported models (`audfer-jax export`, `predict --model`; docs/export.md).

Tiny backbones (8 frames of 32 x 32) with variables drawn by NumPy
(`predict_fixtures.random_variables`), saved as variables checkpoints and
exported once per module in both formats. The reference is the checkpoint's
own forward (`load_predictor(...).apply`), computed in this process.

Fresh processes check the artifacts without our code: the jax.export artifact
in a process where `flax`, `audfer_jax` and `tensorflow` cannot be imported
(`sys.modules[name] = None` makes `import name` fail), the SavedModel and
docs/export.md's TensorFlow + PyAV example where `jax`, `jaxlib`, `flax`,
`audfer_jax` and `PIL` cannot. TensorFlow itself imports JAX when it can
(`tensorflow/lite/python/util.py`), so the block is what proves the
SavedModel needs no JAX.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from audfer_jax import au
from audfer_jax import checkpoint as ckpt_lib
from audfer_jax import classes
from audfer_jax import models
from audfer_jax.cli import export as export_cli
from audfer_jax.cli import predict as predict_cli
from audfer_jax.compilation import topologies
from audfer_jax.export import build
from audfer_jax.export import forward
from audfer_jax.export import jax_format
from audfer_jax.export import manifest as manifest_lib
from audfer_jax.inference import exported
from audfer_jax.inference import predictor as predictor_lib
from audfer_jax.models import platform

import predict_fixtures  # pylint: disable=g-bad-import-order

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)
DOC = os.path.join(REPO, "docs", "export.md")
T, S = predict_fixtures.T, predict_fixtures.S
NAMES = list(classes.DFEW_CLASSES)
# The registered tiny backbones and a user backbone by import path (tests/plugin_backbone.py).
TOL = 1e-5
# In the default run: the tiny Former-DFER (2-D CNN + transformers, BatchNorm),
# MAE-DFER (attention) and a user backbone by import path (tests/plugin_backbone.py).
# M3DFEL's 3-D CNN costs the most compilation: its tiny size runs in the slow
# run with the full sizes, and the default run checks its trace's layer forms.
BACKBONES = ("former_dfer_tiny", "mae_dfer_tiny", "plugin_backbone:make_backbone")
SLOW_BACKBONES = ("m3dfel_tiny", "former_dfer", "m3dfel", "mae_dfer")


def _subprocess_env() -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
               TF_ENABLE_ONEDNN_OPTS="0")
    env.pop("PYTHONPATH", None)      # nothing of ours on the path
    return env


def _run_fresh(script: str, *args, timeout: float = 600) -> str:
    proc = subprocess.run([sys.executable, "-c", script, *map(str, args)], cwd="/",
                          env=_subprocess_env(), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, (f"--- stdout\n{proc.stdout[-4000:]}\n"
                                  f"--- stderr\n{proc.stderr[-4000:]}")
    return proc.stdout


def _random_variables(model, shape, seed: int):
    """Variables of `model` for clips `(T, S, S)` drawn with NumPy (as predict_fixtures)."""
    shapes = jax.eval_shape(lambda c: model.init({"params": jax.random.PRNGKey(0)}, c,
                                                 train=False),
                            jax.ShapeDtypeStruct((1, *shape, 3), np.uint8))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = getattr(path[-1], "key", "")
        if name in ("mean", "var"):
            return (np.zeros if name == "mean" else np.ones)(leaf.shape, leaf.dtype)
        return (0.2 * rng.standard_normal(leaf.shape)).astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def _save_checkpoint(path, name: str) -> str:
    """A variables checkpoint of backbone `name` with NumPy-drawn variables.

    The former_dfer_tiny one holds a whole run config (demo set, AU loss), so
    the run's AU prior goes into model.json.
    """
    model = models.get_model(name, num_classes=len(NAMES))
    if name == predict_fixtures.MODEL:
        return predict_fixtures.save_checkpoint(
                path, predict_fixtures.random_variables(model, seed=1))
    t, side, _ = models.default_input_shape(name, None) if ":" not in name else (T, S, S)
    data = dict(predict_fixtures.DATA, num_frames=t, image_size=side)
    if t != T:
        data.update(num_segments=t // 2)
    ckpt_lib.save_variables(path, _random_variables(model, (t, side, side), len(name)),
                            {"model": name, "class_names": NAMES, "data": data})
    return str(path)


@dataclasses.dataclass
class Case:
    """One exported checkpoint and its reference outputs.

    Attributes:
        ckpt, out: the variables checkpoint and its export directory.
        clips: `.npy` file of the clips `[B, T, S, S, 3] uint8`.
        probs, au_probs: the checkpoint's own probabilities on them (float64).
    """
    ckpt: str
    out: str
    clips: str
    probs: np.ndarray
    au_probs: np.ndarray


def _make_case(root, name: str, batch: int) -> Case:
    """Saves, loads (as predict does), exports and runs the reference forward."""
    tag = name.replace(":", "_")
    ckpt = _save_checkpoint(root / f"ckpt_{tag}", name)
    predictor = predictor_lib.load_predictor(ckpt)
    side = predictor.image_size
    clips = np.random.default_rng(7).integers(
            0, 256, (batch, predictor.spec.num_frames, side, side, 3), dtype=np.uint8)
    np.save(root / f"clips_{tag}.npy", clips)
    ref = predictor.apply(predictor.variables, clips)
    logits = np.asarray(ref.logits, np.float64)
    z = np.exp(logits - logits.max(-1, keepdims=True))
    au_probs = 1.0 / (1.0 + np.exp(-np.asarray(ref.au_logits, np.float64)))
    done = build.export_checkpoint(ckpt, str(root / f"out_{tag}"))
    return Case(ckpt, done.out, str(root / f"clips_{tag}.npy"), z / z.sum(-1, keepdims=True),
                au_probs)


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Case]:
    root = tmp_path_factory.mktemp("export")
    return {name: _make_case(root, name, 5) for name in BACKBONES}


@pytest.fixture(scope="module")
def clips(exports):
    return np.load(exports[BACKBONES[0]].clips)


# argv: JSON {key: [artifact, clips.npy]}, output .npz. The first key's artifact
# also runs batch 1: another batch size from the same artifact.
JAX_ONLY = r"""
import sys
for name in ("flax", "audfer_jax", "tensorflow"):
    sys.modules[name] = None            # `import name` now fails
import json
import jax
import numpy as np
out = {}
for k, (key, (path, clips)) in enumerate(json.loads(sys.argv[1]).items()):
    exp = jax.export.deserialize(bytearray(open(path, "rb").read()))
    clips = np.load(clips)
    res = exp.call(clips)
    out[key + "|probs"], out[key + "|au"] = np.asarray(res["probs"]), np.asarray(res["au_probs"])
    if k == 0:
        out[key + "|1"] = np.asarray(exp.call(clips[:1])["probs"])
    print(key, "platforms", sorted(exp.platforms))
np.savez(sys.argv[2], **out)
"""

TF_ONLY = r"""
import sys
for name in ("jax", "jaxlib", "flax", "audfer_jax", "PIL"):
    sys.modules[name] = None            # `import name` now fails
import json
import runpy
import numpy as np
import tensorflow as tf
out = {}
for k, (key, (path, clips)) in enumerate(json.loads(sys.argv[1]).items()):
    serve = tf.saved_model.load(path).signatures["serving_default"]
    clips = np.load(clips)
    res = serve(clips=tf.constant(clips))
    out[key + "|probs"], out[key + "|au"] = res["probs"].numpy(), res["au_probs"].numpy()
    if k == 0:
        out[key + "|1"] = serve(clips=tf.constant(clips[:1]))["probs"].numpy()
np.savez(sys.argv[2], **out)
if len(sys.argv) > 3:   # docs/export.md's example as a user runs it: classify.py DIR VIDEO
    example, sys.argv = sys.argv[3], ["classify.py"] + sys.argv[4:6]
    runpy.run_path(example, run_name="__main__")
"""


def _check_fresh(script: str, cases: dict[str, Case], artifact: str, tmp_path,
                 *extra) -> str:
    """Runs `script` on every case's `artifact` and compares with the references.

    Returns:
        The script's stdout.
    """
    arg = {k: [os.path.join(c.out, artifact), c.clips] for k, c in cases.items()}
    stdout = _run_fresh(script, json.dumps(arg), tmp_path / "o.npz", *extra)
    got = np.load(tmp_path / "o.npz")
    for name, case in cases.items():
        np.testing.assert_allclose(got[name + "|probs"], case.probs, atol=TOL, err_msg=name)
        np.testing.assert_allclose(got[name + "|au"], case.au_probs, atol=TOL, err_msg=name)
    first = next(iter(cases))
    np.testing.assert_allclose(got[first + "|1"], cases[first].probs[:1], atol=TOL)
    return stdout


def test_jax_export_in_a_process_without_flax_or_audfer_jax(exports, tmp_path):
    stdout = _check_fresh(JAX_ONLY, exports, "model.jax_export", tmp_path)
    assert stdout.count("platforms ['cpu', 'cuda', 'tpu']") == len(exports)


def _doc_example() -> str:
    """The python block after the `example: tf_pyav` marker of docs/export.md."""
    text = open(DOC).read()
    m = re.search(r"<!-- example: tf_pyav[^>]*-->\s*```python\n(.*?)```", text, re.S)
    assert m, "docs/export.md lost its TensorFlow + PyAV example"
    return m.group(1)


def _write_video(path: str, num_frames: int = 30) -> str:
    import av  # pylint: disable=g-import-not-at-top
    with av.open(path, mode="w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for k in range(num_frames):
            frame = av.VideoFrame.from_ndarray(predict_fixtures.frame(k, 48, 64), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _predict_json(capsys, tmp_path, source: list[str], target: str, tag: str) -> dict:
    """`audfer-jax predict SOURCE TARGET --json --timeline --plot` in this process."""
    out = tmp_path / f"{tag}.json"
    argv = [*source, target, "--no-detect_face", "--json", str(out), "--timeline",
            str(tmp_path / f"{tag}.csv"), "--plot", str(tmp_path / f"{tag}.png"),
            "--window_seconds", "1", "--stride_seconds", "1", "--fps", "10",
            "--window_batch", "1"]      # the timeline's calls take the clip's compiled shape
    assert predict_cli.main(argv) == 0, capsys.readouterr().err
    capsys.readouterr()
    return json.loads(out.read_text())


def test_savedmodel_and_doc_example_in_a_process_without_jax(exports, tmp_path, capsys):
    example = tmp_path / "classify.py"
    example.write_text(_doc_example())
    video = _write_video(str(tmp_path / "clip.mp4"))
    out_dir = exports[predict_fixtures.MODEL].out
    stdout = _check_fresh(TF_ONLY, exports, "savedmodel", tmp_path, example, out_dir, video)
    # The example's class lines `name p`, against predict on the same video (no face
    # detection: the example takes the video as a face crop). Its resize is
    # TensorFlow's, not PIL's: pixels a level apart, hence the wider tolerance.
    printed = dict(re.findall(r"^(\w+)\s+([0-9.]+)$", stdout, re.M))
    assert sorted(printed) == sorted(NAMES), stdout
    want = _predict_json(capsys, tmp_path, ["--checkpoint", exports[predict_fixtures.MODEL].ckpt],
                         video, "c")
    for name in NAMES:
        assert abs(float(printed[name]) - want["probabilities"][name]) < 2e-3, (name, stdout)
    assert "AU01 inner brow raiser" in stdout


def test_predict_model_gives_the_checkpoints_outputs(exports, tmp_path, capsys):
    ckpt, out_dir = exports[predict_fixtures.MODEL].ckpt, exports[predict_fixtures.MODEL].out
    frames = tmp_path / "frames"
    frames.mkdir()
    from PIL import Image  # pylint: disable=g-import-not-at-top
    for k in range(36):
        Image.fromarray(predict_fixtures.frame(k)).save(frames / f"{k + 1}.png")
    want = _predict_json(capsys, tmp_path, ["--checkpoint", ckpt], str(frames), "c")
    assert want["timeline"]["num_windows"] == 3
    for tag, model in (("jax", out_dir), ("sm", os.path.join(out_dir, "savedmodel"))):
        got = _predict_json(capsys, tmp_path, ["--model", model], str(frames), tag)
        assert got["model"].startswith(out_dir) and "exported from" in got["model"]
        assert got["frame_indices"] == want["frame_indices"]
        np.testing.assert_allclose(got["probs"], want["probs"], atol=TOL, err_msg=tag)
        np.testing.assert_allclose(got["au_probs"], want["au_probs"], atol=TOL, err_msg=tag)
        assert got["top_class"] == want["top_class"]
        for w, g in zip(want["timeline"]["windows"], got["timeline"]["windows"], strict=True):
            np.testing.assert_allclose([g["probabilities"][n] for n in NAMES],
                                       [w["probabilities"][n] for n in NAMES], atol=TOL)
        assert (tmp_path / f"{tag}.png").stat().st_size > 10_000
        assert (tmp_path / f"{tag}.csv").read_text().count("\n") == 4    # header + 3 windows
    # The AU prior of the run (for --plot) travelled in model.json.
    np.testing.assert_allclose(exported.load_exported(out_dir).prior, au.prior("dfew"))


def test_model_json(exports):
    ckpt, out_dir = exports[predict_fixtures.MODEL].ckpt, exports[predict_fixtures.MODEL].out
    meta = json.loads(open(os.path.join(out_dir, "model.json")).read())
    assert meta["classes"] == NAMES
    assert meta["input"]["shape"] == [None, T, S, S, 3] and meta["input"]["dtype"] == "uint8"
    ts = meta["temporal_sampling"]
    assert (ts["frames_per_clip"], ts["scheme"], ts["num_segments"],
            ts["frames_per_segment"]) == (T, "segments", 4, 2)
    assert meta["spatial_preprocessing"]["image_size"] == S
    assert [a["name"] for a in meta["aus"]] == list(au.AU_NAMES)
    assert meta["aus"][0] == {"name": "AU01", "number": 1, "facs_name": "inner brow raiser"}
    assert meta["normalisation"]["mean"] is None          # Former-DFER: /255 only
    mae = json.loads(open(os.path.join(exports["mae_dfer_tiny"].out, "model.json")).read())
    assert mae["normalisation"]["mean"] == [0.485, 0.456, 0.406]
    # The fingerprint is the sha256 of the run config as sorted JSON.
    config = ckpt_lib.restore_variables(ckpt)[1]["config"]
    import hashlib  # pylint: disable=g-import-not-at-top
    text = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    assert meta["source"]["config_fingerprint"] == hashlib.sha256(text.encode()).hexdigest()
    assert meta["versions"]["jax"] == jax.__version__
    for rel, entry in meta["files"].items():
        path = os.path.join(out_dir, *rel.split("/"))
        assert os.path.getsize(path) == entry["bytes"]
    assert "model.jax_export" in meta["files"]
    assert "savedmodel/saved_model.pb" in meta["files"]


def test_export_uses_only_portable_forms(exports):
    """Traced for CPU, MAE-DFER takes the XLA:CPU attention and M3DFEL the frame-wise
    3-D convolution; an export never does."""
    x = jax.ShapeDtypeStruct((1, T, S, S, 3), np.uint8)
    cpu_forms = {}
    for name in ("mae_dfer_tiny", "m3dfel_tiny"):
        model = models.get_model(name, num_classes=7)
        with platform.record_forms() as forms, platform.target("cpu"):
            jax.eval_shape(lambda c, m=model: m.init({"params": jax.random.PRNGKey(0)}, c,
                                                     train=False), x)
        cpu_forms[name] = {f for f, _ in forms}
    assert "cpu_attention" in cpu_forms["mae_dfer_tiny"]
    assert "frames_conv" in cpu_forms["m3dfel_tiny"]
    for name, case in exports.items():
        meta = json.loads(open(os.path.join(case.out, "model.json")).read())
        for fmt in ("jax", "savedmodel"):
            forms = meta["formats"][fmt]["layer_forms"]
            assert not set(forms) & set(platform.CPU_FORMS), (name, fmt, forms)
    mae = json.loads(open(os.path.join(exports["mae_dfer_tiny"].out, "model.json")).read())
    assert "fused_attention" in mae["formats"]["jax"]["layer_forms"]
    # M3DFEL lowered (not compiled) for the three platforms: lax's 3-D convolution.
    m3 = models.get_model("m3dfel_tiny", num_classes=7)
    variables = forward.variables_for_dtype(_random_variables(m3, (T, S, S), 0), "float32")
    exp, refused, forms = jax_format.export(m3, variables, (T, S, S))
    assert (sorted(exp.platforms), refused) == (["cpu", "cuda", "tpu"], {})
    assert "lax_conv" in forms and "frames_conv" not in forms
    with pytest.raises(forward.ExportError, match="frames_conv"):
        forward.check_portable([("lax_conv", "portable"), ("frames_conv", "cpu")], "x")


def _one_error_line(capsys, argv) -> str:
    assert predict_cli.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_damaged_or_wrong_artifacts_are_one_line(exports, tmp_path, capsys):
    out_dir = exports[predict_fixtures.MODEL].out
    frames = tmp_path / "frames"
    frames.mkdir()
    from PIL import Image  # pylint: disable=g-import-not-at-top
    Image.fromarray(predict_fixtures.frame(0)).save(frames / "1.png")
    bad = tmp_path / "bad"
    shutil.copytree(out_dir, bad)
    artifact = bad / "model.jax_export"
    blob = bytearray(artifact.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    artifact.write_bytes(bytes(blob))
    err = _one_error_line(capsys, ["--model", str(bad), str(frames)])
    assert f"{artifact}: sha256 differs from model.json" in err
    # Garbage whose checksum model.json agrees with: refused by the reader itself.
    artifact.write_bytes(b"not a jax.export artifact" * 10)
    meta = json.loads((bad / "model.json").read_text())
    meta["files"]["model.jax_export"] = manifest_lib.file_entry(str(artifact))
    (bad / "model.json").write_text(json.dumps(meta))
    err = _one_error_line(capsys, ["--model", str(bad), str(frames)])
    assert f"{artifact}: not a readable jax.export artifact" in err
    variables = next((bad / "savedmodel" / "variables").glob("*.data-*"))
    variables.write_bytes(variables.read_bytes()[:100])
    err = _one_error_line(capsys, ["--model", str(bad / "savedmodel"), str(frames)])
    assert f"{variables}: " in err and "damaged" in err
    (bad / "model.json").unlink()
    err = _one_error_line(capsys, ["--model", str(bad), str(frames)])
    assert f"{bad / 'model.json'}: missing; not an audfer-jax export" in err


def test_an_artifact_of_another_export_is_refused(exports, tmp_path):
    """Artifacts beside a model.json of another input size."""
    other = tmp_path / "mixed"
    shutil.copytree(exports[predict_fixtures.MODEL].out, other)
    meta = json.loads((other / "model.json").read_text())
    meta["input"]["shape"] = [None, T, 2 * S, 2 * S, 3]
    (other / "model.json").write_text(json.dumps(meta))
    with pytest.raises(exported.PredictError, match=r"model.jax_export: takes clips"):
        exported.load_exported(str(other))
    with pytest.raises(exported.PredictError, match=r"savedmodel: takes clips"):
        exported.load_exported(str(other / "savedmodel"))


def test_export_command(exports, clips, tmp_path, capsys):
    ckpt = exports[predict_fixtures.MODEL].ckpt
    out = tmp_path / "bf16"
    assert export_cli.main(["--checkpoint", ckpt, "--out", str(out), "--format", "jax",
                            "--dtype", "bfloat16", "--platforms", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert f"jax: {out}/model.jax_export" in printed and "platforms cpu" in printed
    meta = json.loads((out / "model.json").read_text())
    assert meta["compute_dtype"] == "bfloat16" and list(meta["formats"]) == ["jax"]
    f32 = os.path.getsize(os.path.join(exports[predict_fixtures.MODEL].out, "model.jax_export"))
    assert os.path.getsize(out / "model.jax_export") < 0.7 * f32     # bfloat16 weights
    probs = exports[predict_fixtures.MODEL].probs
    loaded = exported.load_exported(str(out))
    logits = loaded.apply(None, clips).logits
    z = np.exp(logits - logits.max(-1, keepdims=True))
    np.testing.assert_allclose(z / z.sum(-1, keepdims=True), probs, atol=0.05)
    # An existing folder, a bad format: one line / usage error.
    with pytest.raises(FileExistsError, match="already exists"):
        build.export_checkpoint(ckpt, str(out))
    with pytest.raises(SystemExit):
        export_cli.main(["--checkpoint", ckpt, "--out", str(tmp_path / "x"), "--format", "onnx"])
    assert "onnx" in capsys.readouterr().err


def test_bfloat16_needs_a_dtype_attribute(exports, tmp_path):
    ckpt = exports["plugin_backbone:make_backbone"].ckpt
    with pytest.raises(forward.ExportError, match="no `dtype` attribute"):
        build.export_checkpoint(ckpt, str(tmp_path / "o"), dtype="bfloat16")
    assert not (tmp_path / "o").exists()


def test_a_failed_export_leaves_nothing(exports, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise forward.ExportError("jax2tf could not convert the model: (a stand-in)")

    monkeypatch.setattr(build.savedmodel, "write", fail)
    ckpt = exports["plugin_backbone:make_backbone"].ckpt
    for out in (tmp_path / "new", tmp_path / "empty"):
        if out.name == "empty":
            out.mkdir()
        with pytest.raises(forward.ExportError, match="stand-in"):
            build.export_checkpoint(ckpt, str(out), platforms=["cpu"])
        # The jax.export artifact was written before the failure, and removed.
        assert (not out.exists()) if out.name == "new" else list(out.iterdir()) == []


def _save_run(run, variables, step: int, which: str) -> None:
    """Writes a train state of `variables` at `step` as the run's `best` or latest."""
    from audfer_jax import optim, steps  # pylint: disable=g-import-not-at-top
    params = variables["params"]
    optim_config = ml_collections.ConfigDict(predict_fixtures.run_config()["optim"])
    tx, _ = optim.make_optimizer(optim_config, params, steps_per_epoch=1, num_epochs=1,
                                 global_batch_size=1)
    state = steps.TrainState(
            step=np.int32(step), params=params, batch_stats=variables["batch_stats"],
            opt_state=jax.tree.map(lambda a: np.zeros(a.shape, a.dtype),
                                   jax.eval_shape(tx.init, params)),
            rng=np.zeros((2,), np.uint32))
    ckpt = ckpt_lib.TrainCheckpointer(run, async_save=False)
    if which == "best":
        ckpt.save_best(step, state, {"class_names": NAMES, "step": step})
    else:
        ckpt.maybe_save(step, state, {"class_names": NAMES, "step": step}, force=True)
    ckpt.close()


def test_a_run_directory_exports_the_step_predict_reads(tmp_path, clips):
    """Best step 3 and latest step 5 hold different weights; `--which` picks as predict."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(predict_fixtures.run_config()))
    model = models.get_model(predict_fixtures.MODEL, num_classes=len(NAMES))
    _save_run(run, predict_fixtures.random_variables(model, seed=3), 3, "best")
    _save_run(run, predict_fixtures.random_variables(model, seed=5), 5, "last")
    for which, step in (("best", 3), ("last", 5)):
        out = tmp_path / which
        assert export_cli.main(["--checkpoint", str(run), "--out", str(out), "--which", which,
                                "--format", "jax", "--platforms", "cpu"]) == 0
        meta = json.loads((out / "model.json").read_text())
        assert meta["source"]["step"] == step and meta["source"]["checkpoint"] == str(run)
        assert f"step {step}" in meta["source"]["loaded"]
    best, last = (predictor_lib.load_predictor(str(run), w) for w in ("best", "last"))
    want = {p.step: p.apply(p.variables, clips[:1]).logits for p in (best, last)}
    assert np.abs(want[3] - want[5]).max() > 1e-3        # two different weight sets
    got = exported.load_exported(str(tmp_path / "last")).apply(None, clips[:1]).logits
    np.testing.assert_allclose(got, want[5], atol=1e-4)


def _compile_for_tpu(artifact: str, batch: int) -> None:
    """Compiles the artifact's tpu lowering for one chip of a deviceless v5e (libtpu)."""
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")   # as tests/test_compile_check.py
    device = topologies.load_slice("v5e:2x2").devices[0]
    exp = jax.export.deserialize(bytearray(open(artifact, "rb").read()))
    sharding = jax.sharding.SingleDeviceSharding(device)
    spec = jax.ShapeDtypeStruct((batch, *exp.in_avals[0].shape[1:]), np.uint8,
                                sharding=sharding)
    lowered = jax.jit(exp.call, in_shardings=sharding, out_shardings=sharding).trace(
            spec).lower(lowering_platforms=("tpu",))
    assert lowered.compile().memory_analysis().output_size_in_bytes > 0


needs_libtpu = pytest.mark.skipif(not topologies.libtpu_available(),
                                  reason="libtpu (the test extra) is not installed")


@pytest.mark.slow
@needs_libtpu
def test_the_tpu_lowering_compiles_with_xla_tpu(exports):
    """No TPU here: libtpu compiles the artifact's tpu lowering for a v5e chip."""
    for case in exports.values():
        _compile_for_tpu(os.path.join(case.out, "model.jax_export"), 5)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW_BACKBONES)
def test_full_size_exports_in_fresh_processes(name, tmp_path):
    """The tiny M3DFEL and the full-size backbones (random variables), batch 2 and 1."""
    cases = {name: _make_case(tmp_path, name, 2)}
    _check_fresh(JAX_ONLY, cases, "model.jax_export", tmp_path)
    _check_fresh(TF_ONLY, cases, "savedmodel", tmp_path)


@pytest.mark.slow
def test_doc_example_on_a_multi_view_model(tmp_path, capsys):
    """MAE-DFER's evaluation: fixed_rate sampling, 2 temporal x 3 spatial views
    (the example's view loop and crops), against predict on the same video."""
    model = models.get_model("mae_dfer_tiny", num_classes=len(NAMES))
    data = {"num_frames": T, "image_size": S, "sampling": "fixed_rate", "sampling_rate": 2,
            "eval_temporal_views": 2, "eval_spatial_views": 3}
    ckpt = str(tmp_path / "vars")
    ckpt_lib.save_variables(ckpt, predict_fixtures.random_variables(model, seed=4),
                            {"model": "mae_dfer_tiny", "class_names": NAMES, "data": data})
    out = build.export_checkpoint(ckpt, str(tmp_path / "out"), formats=["savedmodel"]).out
    clips = tmp_path / "clips.npy"
    np.save(clips, np.zeros((1, T, S, S, 3), np.uint8))
    example = tmp_path / "classify.py"
    example.write_text(_doc_example())
    video = _write_video(str(tmp_path / "clip.mp4"), 40)
    arg = {"m": [os.path.join(out, "savedmodel"), str(clips)]}
    stdout = _run_fresh(TF_ONLY, json.dumps(arg), tmp_path / "o.npz", example, out, video)
    printed = dict(re.findall(r"^(\w+)\s+([0-9.]+)$", stdout, re.M))
    want = _predict_json(capsys, tmp_path, ["--checkpoint", ckpt], video, "c")
    assert want["views"] == 6
    for name in NAMES:
        assert abs(float(printed[name]) - want["probabilities"][name]) < 2e-3, (name, stdout)
