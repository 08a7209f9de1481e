"""Tests of the `predict` timeline: windows (`video.py`), batching, faces, flags."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from fractions import Fraction

import jax
import numpy as np
import pytest

import predict_fixtures as pf
from audfer_jax import models
from audfer_jax.cli import predict as predict_cli
from audfer_jax.inference import faces
from audfer_jax.inference import predict
from audfer_jax.inference import predictor as predictor_lib
from audfer_jax.inference import timeline
from audfer_jax.inference import video


@pytest.fixture(scope="module")
def var_ckpt(tmp_path_factory):
    model = models.get_model(pf.MODEL, num_classes=len(pf.NAMES))
    return pf.save_checkpoint(tmp_path_factory.mktemp("ckpt") / "vars",
                              pf.random_variables(model))


@pytest.fixture(scope="module")
def predictor(var_ckpt):
    return predictor_lib.load_predictor(var_ckpt)


@pytest.fixture(scope="module")
def counting(predictor):
    """The predictor with an apply that counts its traces (a Python side effect
    runs only while jax traces, i.e. once per compiled shape)."""
    traces = []

    def apply(variables, clips):
        traces.append(clips.shape)
        return predictor.model.apply(variables, clips, train=False)

    return dataclasses.replace(predictor, apply=jax.jit(apply)), traces


def _expected_count(n, fps, w, s):
    """floor((D - W) / S) + 1 in exact rational arithmetic (D = n / fps)."""
    d = Fraction(n) / Fraction(fps)
    w, s = Fraction(w), Fraction(s)
    return 1 if d <= w else math.floor((d - w) / s) + 1


@pytest.mark.parametrize("n, fps, w, s", [(300, 30, 2, 0.5), (100, 30, 2, 0.7),
                                          (1800, 30, 2, 0.5), (61, 10, 2, 0.25),
                                          (125, 25, 3, 1)])
def test_window_bounds(n, fps, w, s):
    win = video.window_bounds(n, fps, w, s)
    k = _expected_count(n, fps, w, s)
    assert len(win) == k
    np.testing.assert_allclose(win.start_s, np.arange(k) * s, atol=1e-12)
    np.testing.assert_allclose(win.end_s - win.start_s, w, atol=1e-12)
    np.testing.assert_array_equal(win.start_frame, np.rint(np.arange(k) * s * fps))
    np.testing.assert_array_equal(win.end_frame - win.start_frame, round(w * fps))
    assert win.end_frame[-1] <= n and win.end_s[-1] <= n / fps + 1e-9


def test_video_shorter_than_a_window_is_one_window():
    win = video.window_bounds(12, 30, 2, 0.5)           # 0.4 s < 2 s
    assert len(win) == 1
    assert (win.start_frame[0], win.end_frame[0]) == (0, 12)
    assert (win.start_s[0], win.end_s[0]) == (0.0, pytest.approx(0.4))


@pytest.mark.parametrize("value", [0, -1, "abc", "nan", float("inf"), None])
def test_check_seconds_rejects(value):
    with pytest.raises(video.PredictError, match="--window_seconds .*expected a number of "
                                                 "seconds > 0"):
        video.check_seconds("--window_seconds", value)


@pytest.mark.parametrize("flag", ["--window_seconds", "--stride_seconds"])
@pytest.mark.parametrize("value", ["0", "-1", "-0.5", "abc", "nan"])
def test_bad_window_flags_one_line(flag, value, var_ckpt, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        predict_cli.main(["--checkpoint", var_ckpt, str(tmp_path), flag, value])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert flag in err[0] and "expected a number of seconds > 0" in err[0]
    assert repr(value) in err[0]


def test_timeline_matches_clips_and_compiles_once(counting, predictor):
    """Every window equals `predict_clip` on its own frames; batches of 3
    (the last padded) compile once for a 4 s and a 10 s video."""
    counted, traces = counting
    frames = np.stack([pf.frame(k) for k in range(40)])           # 4 s at 10 fps
    tl = timeline.predict_timeline(frames, counted, 10, window_seconds=1,
                                  stride_seconds=0.5, batch_size=3)
    assert tl["num_windows"] == 7 == len(tl["windows"])          # floor(3 / 0.5) + 1
    for k, row in enumerate(tl["windows"]):
        assert row["start_s"] == pytest.approx(0.5 * k)
        assert (row["start_frame"], row["end_frame"]) == (5 * k, 5 * k + 10)
        want = predict.predict_clip(frames[5 * k:5 * k + 10], predictor)
        got = [row["probabilities"][n] for n in pf.NAMES]
        np.testing.assert_allclose(got, want["probs"], atol=1e-5)
        assert sum(got) == pytest.approx(1.0, abs=1e-6)
        assert row["top_class"] == want["top_class"] and row["face_found"] is None
    longer = np.stack([pf.frame(k) for k in range(100)])          # 10 s: 19 windows
    tl = timeline.predict_timeline(longer, counted, 10, window_seconds=1,
                                  stride_seconds=0.5, batch_size=3)
    assert tl["num_windows"] == 19
    assert traces == [(3, pf.T, pf.S, pf.S, 3)]                  # one shape, one trace
    # A video shorter than W: one window over the whole video.
    tl = timeline.predict_timeline(frames[:12], counted, 30, batch_size=3)
    (row,) = tl["windows"]
    assert (row["start_s"], row["end_s"], row["end_frame"]) == (0, pytest.approx(0.4), 12)
    np.testing.assert_allclose([row["probabilities"][n] for n in pf.NAMES],
                               predict.predict_clip(frames[:12], predictor)["probs"],
                               atol=1e-5)
    assert len(traces) == 1


def test_face_in_second_half_only(tmp_path, var_ckpt, monkeypatch, capsys):
    """A 3 s video, sky then the astronaut: the two windows inside the sky half
    have no face, the others do; the detector runs once per sampled frame."""
    face_fixtures = pytest.importorskip("face_fixtures")
    face, sky = face_fixtures.astronaut(256), face_fixtures.sky(256, 256)
    video_path = tmp_path / "half.mp4"
    face_fixtures.write_mp4(video_path, [sky] * 15 + [face] * 15)     # 10 fps
    calls = []
    real = faces.largest_face
    monkeypatch.setattr(faces, "largest_face",
                        lambda f, d=None: calls.append(1) or real(f, d))
    out = {k: tmp_path / f"out.{k}" for k in ("csv", "json", "png")}
    rc = predict_cli.main(["--checkpoint", var_ckpt, str(video_path), "--window_seconds", "1",
                       "--timeline", str(out["csv"]), "--json", str(out["json"]),
                       "--window_batch", "1"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "windows/s" in text and "decoded 30 frames (3.0 s) once" in text
    rows = list(csv.DictReader(io.StringIO(out["csv"].read_text())))
    # floor((3 - 1) / 0.5) + 1 = 5 windows at 0, 0.5, ..., 2 s; frames 0-14 are sky.
    assert [float(r["start_s"]) for r in rows] == [0, 0.5, 1, 1.5, 2]
    assert [r["face_found"] for r in rows] == ["false", "false", "true", "true", "true"]
    for r in rows:
        probs = [r[f"p_{n}"] for n in pf.NAMES]
        if r["face_found"] == "true":
            assert sum(map(float, probs)) == pytest.approx(1.0, abs=1e-5)
            assert r["top_class"] == pf.NAMES[int(np.argmax([float(p) for p in probs]))]
        else:
            assert probs == [""] * len(pf.NAMES) and r["top_class"] == ""
    result = json.loads(out["json"].read_text())
    assert [w["face_found"] for w in result["timeline"]["windows"]] == [
            False, False, True, True, True]
    # Each frame any window or the whole clip samples is checked once.
    spec = predictor_lib.load_predictor(var_ckpt).spec
    win = video.window_bounds(30, 10, 1, 0.5)
    sampled = set(np.unique(video.window_indices(win, spec)).tolist())
    sampled |= set(result["frame_indices"][0])
    assert len(calls) == len(sampled) == result["timeline"]["frames_checked"]
    assert len(calls) < sum(len(np.unique(r)) for r in video.window_indices(win, spec))
