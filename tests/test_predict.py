"""Tests of `audfer_jax.inference` and `audfer-jax predict` on a tiny Former-DFER checkpoint.

The variables are drawn with NumPy over the shapes of `jax.eval_shape(init)`
(the model's own jitted init costs minutes of XLA compilation on a loaded
2-core machine); inference does not care how the weights were made.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from audfer_jax import steps
from audfer_jax import checkpoint as ckpt_lib
from audfer_jax import classes
from audfer_jax import models
from audfer_jax.cli import predict as predict_cli
from audfer_jax.inference import faces
from audfer_jax.inference import predict
from audfer_jax.inference import predictor as predictor_lib
from audfer_jax.inference import preprocess
from audfer_jax.inference import video

import predict_fixtures  # pylint: disable=g-bad-import-order

MODEL = "former_dfer_tiny"
T, S = 8, 32                       # the tiny model's input: 8 frames of 32 x 32
SEGMENTS, PER_SEGMENT = 4, 2
DATA = {"num_frames": T, "image_size": S, "sampling": "segments",
        "num_segments": SEGMENTS, "frames_per_segment": PER_SEGMENT}
NAMES = list(classes.DFEW_CLASSES)


_random_variables = predict_fixtures.random_variables


def _frame(k: int, h: int = 40, w: int = 48) -> np.ndarray:
    """A smooth frame whose brightness and pattern identify frame k."""
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * 5 + 17 * k) % 256, (y * 6 + 11 * k) % 256,
                     np.full_like(x, 20 * k % 256)], -1)
    return base.astype(np.uint8)


@pytest.fixture(scope="module")
def model():
    return models.get_model(MODEL, num_classes=len(NAMES))


@pytest.fixture(scope="module")
def variables(model):
    return _random_variables(model)


@pytest.fixture(scope="module")
def var_ckpt(tmp_path_factory, variables):
    path = tmp_path_factory.mktemp("ckpt") / "vars"
    ckpt_lib.save_variables(path, variables, {"model": MODEL, "class_names": NAMES,
                                              "data": DATA})
    return str(path)


@pytest.fixture(scope="module")
def predictor(var_ckpt):
    return predictor_lib.load_predictor(var_ckpt)


@pytest.fixture(scope="module")
def direct_apply(model):
    return jax.jit(lambda v, x: model.apply(v, x, train=False))


@pytest.fixture
def frame_dir(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for k in range(1, 13):       # 1.jpg .. 12.jpg: lexicographic order is wrong
        Image.fromarray(_frame(k)).save(folder / f"{k}.jpg", quality=95)
    (folder / "notes.txt").write_text("not a frame")
    return folder


def _softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_frame_folder_matches_direct_apply(frame_dir, predictor, direct_apply, variables):
    frames = video.read_clip(str(frame_dir))
    assert frames.shape == (12, 40, 48, 3)
    result = predict.predict_clip(frames, predictor, top_k=3)

    # Independent expectation. Former-DFER test indices (datasets.md section 7):
    # t = (N - D + 1) / S = 11 / 4 = 2.75, start_i = floor(t / 2 + i t) = 1, 4, 6, 9,
    # each expanded to D = 2 consecutive frames.
    expected_idx = [1, 2, 4, 5, 6, 7, 9, 10]
    assert result["frame_indices"] == [expected_idx]
    # Frames in numeric order of the file names (k.jpg is frame k - 1).
    own = [np.asarray(Image.open(frame_dir / f"{k + 1}.jpg").convert("RGB"))
           for k in expected_idx]
    clip = np.stack([np.asarray(Image.fromarray(f).resize((S, S), Image.BILINEAR))
                     for f in own])[None]
    out = direct_apply(variables, clip)
    probs = _softmax(np.asarray(out.logits))[0]
    np.testing.assert_allclose(result["probs"], probs, atol=1e-5)
    assert result["top_class"] == NAMES[int(np.argmax(np.asarray(out.logits)[0]))]
    assert abs(sum(result["probs"]) - 1.0) < 1e-6
    assert [n for n, _ in result["top_k"]] == [NAMES[i] for i in np.argsort(-probs)[:3]]
    au = 1 / (1 + np.exp(-np.asarray(out.au_logits, np.float64)[0]))
    np.testing.assert_allclose(result["au_probs"], au, atol=1e-5)
    assert result["au_names"][0] == "AU01" and len(result["au_names"]) == 18


def test_lexicographic_order_is_not_used(frame_dir, predictor):
    frames, paths = video.read_frame_folder(str(frame_dir))
    assert [os.path.basename(p) for p in paths] == [f"{k}.jpg" for k in range(1, 13)]
    # Frame k (0-based k - 1) is k.jpg: its blue channel is about 20 * k
    # (lexicographic order would put 10.jpg second).
    blue = frames[..., 2].mean(axis=(1, 2))
    np.testing.assert_allclose(blue, 20 * np.arange(1, 13), atol=8)


def test_mp4_video(tmp_path, predictor):
    import av
    path = str(tmp_path / "clip.mp4")
    written = [_frame(k, 48, 64) for k in range(10)]
    with av.open(path, mode="w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for f in written:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    frames = video.read_clip(path)
    assert frames.shape == (10, 48, 64, 3) and frames.dtype == np.uint8
    # Lossy codec: the decoded frames are close to what was written.
    assert np.abs(frames.astype(int) - np.stack(written).astype(int)).mean() < 12
    result = predict.predict_clip(frames, predictor)
    assert result["num_frames"] == 10
    assert abs(sum(result["probs"]) - 1.0) < 1e-6
    assert result["top_class"] == NAMES[int(np.argmax(result["probs"]))]


def test_cli_json(frame_dir, var_ckpt, tmp_path, capsys):
    out = tmp_path / "out.json"
    rc = predict_cli.main(["--checkpoint", var_ckpt, str(frame_dir), "--top_k", "2",
                       "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    result = json.loads(out.read_text())
    assert "top class: " + result["top_class"] in text
    assert len(result["top_k"]) == 2
    assert abs(sum(result["probabilities"].values()) - 1.0) < 1e-6
    assert set(result["au_probabilities"]) == set(result["au_names"])
    for name in NAMES:
        assert name in text


def test_errors(tmp_path, var_ckpt, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert predict_cli.main(["--checkpoint", var_ckpt, str(empty)]) == 1
    err = capsys.readouterr().err
    assert "no images" in err and str(empty) in err

    missing = tmp_path / "no_such_run"
    assert predict_cli.main(["--checkpoint", str(missing), str(empty)]) == 1
    assert "no images" in capsys.readouterr().err     # the input is checked first
    with pytest.raises(video.PredictError, match="checkpoint not found"):
        predictor_lib.load_predictor(str(missing))

    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"this is not a video")
    with pytest.raises(video.PredictError, match="broken.mp4"):
        video.read_clip(str(bad))
    with pytest.raises(video.PredictError, match="no such file"):
        video.read_clip(str(tmp_path / "absent.mp4"))

    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(video.PredictError, match="no checkpoint found"):
        predictor_lib.load_predictor(str(run))


def test_bad_frames_array(predictor):
    with pytest.raises(video.PredictError, match="uint8"):
        predict.predict_clip(np.zeros((4, 8, 8, 3), np.float32), predictor)
    with pytest.raises(video.PredictError, match=r"\[N, H, W, 3\]"):
        predict.predict_clip(np.zeros((8, 8, 3), np.uint8), predictor)


def test_combine_face_boxes():
    # Centres (30, 40), (34, 44), (100, 100 outlier); sides max(w, h) = 20, 24, 60.
    boxes = [(20, 30, 20, 20), (22, 32, 24, 24), None, (70, 70, 60, 60)]
    box = faces.combine_face_boxes(boxes, height=200, width=300, margin=0.25)
    # Median centre (34, 44), median side 24 * (1 + 2 * 0.25) = 36.
    assert box == (16, 26, 52, 62)
    # Near the border the square is shifted inside the frame.
    assert faces.combine_face_boxes([(0, 0, 20, 20)], 100, 100, 0.5) == (0, 0, 40, 40)
    assert faces.combine_face_boxes([None, None], 100, 100) is None


def test_detect_face_without_a_face_gives_no_expression(predictor):
    # Issue 10: a clip without a face is never given an expression (the old
    # behaviour, a prediction on the whole frame, is gone).
    frames = np.full((6, 64, 64, 3), 128, np.uint8)
    assert faces.detect_face_box(frames) is None
    with pytest.raises(faces.NoFaceError, match="no face in any of the 6 frames"):
        predict.predict_clip(frames, predictor, detect_face=True)


def test_cli_video_without_a_face(tmp_path, var_ckpt, capsys):
    face_fixtures = pytest.importorskip("face_fixtures")
    mp4 = tmp_path / "sky.mp4"
    face_fixtures.write_mp4(mp4, [face_fixtures.sky(120, 160, seed=k) for k in range(10)])
    # Detection is on by default for a video file: one line, status 3.
    assert predict_cli.main(["--checkpoint", var_ckpt, str(mp4)]) == predict_cli.NO_FACE_STATUS
    out, err = capsys.readouterr()
    assert len(err.strip().splitlines()) == 1 and "no face in any of the 8 frames" in err
    assert "top class" not in out
    # With --json: an explicit "no face" result and status 0.
    out_json = tmp_path / "r.json"
    assert predict_cli.main(["--checkpoint", var_ckpt, str(mp4), "--json", str(out_json)]) == 0
    result = json.loads(out_json.read_text())
    assert result["face_found"] is False and result["top_class"] is None
    assert result["probabilities"] is None
    assert result["face_detection"]["frames_checked"] == 8
    assert result["face_detection"]["frames_with_face"] == 0
    assert "top class" not in capsys.readouterr().out


def test_cli_face_video_and_frame_folder(tmp_path, var_ckpt, capsys):
    face_fixtures = pytest.importorskip("face_fixtures")
    face = face_fixtures.astronaut(256)
    sky = face_fixtures.sky(256, 256)
    # 12 frames; the eval indices [1, 2, 4, 5, 6, 7, 9, 10] (see above) hold
    # two sky frames (4 and 9).
    frames = [sky if k in (4, 9) else face for k in range(12)]
    mp4 = tmp_path / "face.mp4"
    face_fixtures.write_mp4(mp4, frames)
    out_json = tmp_path / "v.json"
    assert predict_cli.main(["--checkpoint", var_ckpt, str(mp4), "--json", str(out_json)]) == 0
    text = capsys.readouterr().out
    result = json.loads(out_json.read_text())
    det = result["face_detection"]
    assert result["face_found"] is True
    assert (det["frames_checked"], det["frames_with_face"]) == (8, 6)
    assert det["frames_without_face"] == [4, 9]
    assert "face found in 6 of 8 frames checked; frames [4, 9] have none" in text
    x0, y0, x1, y1 = result["face_box"]
    cx, cy = face_fixtures.FACE_CENTRE
    assert x0 < cx / 2 < x1 and y0 < cy / 2 < y1          # the face, at half scale
    assert x1 - x0 < 128                                    # not the whole frame
    # A frame folder: detection off by default, on with --detect_face.
    folder = tmp_path / "faces"
    folder.mkdir()
    for k, f in enumerate(frames):
        Image.fromarray(f).save(folder / f"{k + 1}.png")
    assert predict_cli.main(["--checkpoint", var_ckpt, str(folder), "--json", str(out_json)]) == 0
    assert json.loads(out_json.read_text())["face_detection"] is None
    assert predict_cli.main(["--checkpoint", var_ckpt, str(folder), "--json", str(out_json),
                         "--detect_face"]) == 0
    assert json.loads(out_json.read_text())["face_detection"]["frames_with_face"] == 6


def test_training_run_directory(tmp_path, model, variables):
    """A run directory (config.json + best/<step>) restores the saved parameters."""
    from audfer_jax import optim
    from audfer_jax import config_lib as common

    config = common.base_config()
    config.model = MODEL
    config.data.dataset = "demo"
    with config.data.unlocked():
        config.data.update(DATA)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(config.to_json_best_effort())
    params = variables["params"]
    tx, _ = optim.make_optimizer(config.optim, params, steps_per_epoch=1, num_epochs=1,
                                 global_batch_size=1)
    opt_shapes = jax.eval_shape(tx.init, params)
    state = steps.TrainState(
            step=np.int32(3), params=params, batch_stats=variables["batch_stats"],
            opt_state=jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), opt_shapes),
            rng=np.zeros((2,), np.uint32))
    ckpt = ckpt_lib.TrainCheckpointer(run, async_save=False)
    ckpt.save_best(3, state, {"class_names": NAMES, "step": 3})
    ckpt.close()

    loaded = predictor_lib.load_predictor(str(run))
    assert loaded.class_names == NAMES and "step 3" in loaded.source
    assert (loaded.spec.num_frames, loaded.image_size) == (T, S)
    leaf = ("s_former", "conv1", "kernel")
    got = loaded.variables["params"]
    want = params
    for k in leaf:
        got, want = got[k], want[k]
    np.testing.assert_array_equal(np.asarray(got), want)
    # The same checkpoint through its step directory.
    step_dir = predictor_lib.load_predictor(str(run / "best" / "3"))
    assert step_dir.class_names == NAMES


def test_converted_checkpoint_metadata(tmp_path):
    """`audfer-jax convert` stores `model` and `num_classes` only: 11 -> MAFW names."""
    model11 = models.get_model(MODEL, num_classes=11)
    path = tmp_path / "converted"
    ckpt_lib.save_variables(path, _random_variables(model11),
                            {"model": MODEL, "num_classes": 11, "num_aus": 18})
    loaded = predictor_lib.load_predictor(str(path))
    assert loaded.class_names == list(classes.MAFW_CLASSES)
    # No data settings: sample as many frames as the model takes (T = 8).
    assert loaded.spec.num_frames == T and loaded.image_size == S
    bad = tmp_path / "nameless"
    ckpt_lib.save_variables(bad, _random_variables(model11), {"num_classes": 11})
    with pytest.raises(video.PredictError, match="names no model"):
        predictor_lib.load_predictor(str(bad))


def test_prepare_clip_multi_view():
    """MAE-DFER-style evaluation: 2 temporal x 2 spatial views, view order t-major."""
    from audfer_jax.data import sampling
    spec = sampling.SamplingSpec(scheme="fixed_rate", num_frames=4, rate=4)
    stub = predictor_lib.Predictor(model=None, variables=None, class_names=NAMES, spec=spec,
                             temporal_views=2, spatial_views=2, image_size=20, source="")
    frames = np.stack([_frame(k, 40, 60) for k in range(20)])
    clips, idx = preprocess.prepare_clip(frames, stub)
    # Every 4th frame: 0 4 8 12 16 (5 >= T); windows start at 0 and 5 - 4 = 1.
    assert idx.tolist() == [[0, 4, 8, 12], [4, 8, 12, 16]]
    assert clips.shape == (4, 4, 20, 20, 3) and clips.dtype == np.uint8

    def view(ids, x0):
        # Shorter side 40 -> 20: frames become 20 x 30; crops at x = 0 and 30 - 20.
        small = [np.asarray(Image.fromarray(frames[i]).resize((30, 20), Image.BILINEAR))
                 for i in ids]
        return np.stack(small)[:, :, x0:x0 + 20]

    for v, (ids, x0) in enumerate([(idx[0], 0), (idx[0], 10), (idx[1], 0), (idx[1], 10)]):
        np.testing.assert_array_equal(clips[v], view(ids, x0))
