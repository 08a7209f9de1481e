"""Tests of `predict --plot` (`figures/predict.py`): the panels hold the predicted numbers."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib import colors as mpl_colors
from PIL import Image

import predict_fixtures as pf
from audfer_jax import au
from audfer_jax import models
from audfer_jax.cli import predict as predict_cli
from audfer_jax.inference import predict
from audfer_jax.inference import predictor as predictor_lib
from audfer_jax.inference import timeline
from audfer_jax.inference import video
from audfer_jax.figures import predict as predict_figure

FPS = 10.0


@pytest.fixture(scope="module")
def variables():
    return pf.random_variables(models.get_model(pf.MODEL, num_classes=len(pf.NAMES)))


@pytest.fixture(scope="module")
def var_ckpt(tmp_path_factory, variables):
    return pf.save_checkpoint(tmp_path_factory.mktemp("ckpt") / "vars", variables)


@pytest.fixture(scope="module")
def predictor(var_ckpt):
    return predictor_lib.load_predictor(var_ckpt)


@pytest.fixture(scope="module")
def drawn(predictor):
    frames = np.stack([pf.frame(k) for k in range(30)])
    result, clips = predict.predict_clip(frames, predictor, return_clips=True)
    tl = timeline.predict_timeline(frames, predictor, FPS, window_seconds=1,
                                   stride_seconds=0.5, batch_size=1)
    # Mark one window as faceless, as a detection run would, to see it shaded.
    tl["windows"][1].update(face_found=False, probabilities=None, top_class=None,
                                  top_prob=None)
    fig = predict_figure.prediction_figure(
            result, clips, fps=FPS, source="clip.mp4", checkpoint=predictor.source,
            prior=predictor.prior, prior_label=predictor.prior_label, timeline=tl)
    return fig, result, clips, tl


def test_run_prior(tmp_path, variables):
    w, label = predictor_lib.run_prior(_cfg(), len(pf.NAMES))
    np.testing.assert_array_equal(w, au.prior("dfew"))          # demo set -> DFEW's matrix
    assert "'dfew'" in label
    w, label = predictor_lib.run_prior(_cfg(dataset="ferv39k"), 7)
    np.testing.assert_array_equal(w, au.prior("ferv39k"))
    w, label = predictor_lib.run_prior(_cfg(prior="dfew_v1"), 7)
    np.testing.assert_array_equal(w, au.prior("dfew_v1"))
    assert predictor_lib.run_prior(_cfg(prior="from_data"), 7)[0] is None
    assert "from_data" in predictor_lib.run_prior(_cfg(prior="from_data"), 7)[1]
    assert predictor_lib.run_prior(_cfg(loss="ce"), 7)[0] is None
    assert predictor_lib.run_prior({}, 7) == (None, "no AU prior: the checkpoint holds no run "
                                              "config")


def _cfg(**kw):
    import ml_collections
    return ml_collections.ConfigDict(pf.run_config(**kw))


def test_facs_labels():
    assert au.au_label("AU01") == "AU1 inner brow raiser"
    assert au.au_label("AU45") == "AU45 blink"
    assert set(au.FACS_NAMES) == set(au.AU_NAMES)


def test_panels_hold_the_prediction(drawn, predictor):
    fig, result, clips, tl = drawn
    # Frames: the model's input (view 0), titled with frame index and time.
    idx = result["frame_indices"][0]
    for k in range(pf.T):
        ax = predict_figure.panel(fig, f"frame_{k}")
        np.testing.assert_array_equal(ax.get_images()[0].get_array(), clips[0, k])
        assert ax.get_title() == f"#{idx[k]}  {idx[k] / FPS:.2f} s"
    # Class bars: widths are the probabilities, top class in its own colour.
    ax = predict_figure.panel(fig, "classes")
    bars = ax.containers[0]
    np.testing.assert_allclose([b.get_width() for b in bars], result["probs"], atol=1e-12)
    top = pf.NAMES.index(result["top_class"])
    assert top == int(np.argmax(result["probs"]))
    red = [mpl_colors.to_hex(b.get_facecolor()) == mpl_colors.to_hex("tab:red") for b in bars]
    assert red == [i == top for i in range(len(pf.NAMES))]
    # Each bar sits at its class's tick label; the first class at the top.
    label_at = dict(zip(ax.get_yticks(), [t.get_text() for t in ax.get_yticklabels()]))
    centres = [b.get_y() + b.get_height() / 2 for b in bars]
    assert [label_at[c] for c in centres] == pf.NAMES and centres == sorted(centres)[::-1]
    assert any(t.get_text().startswith(f"top: {result['top_class']}") for t in ax.texts)
    # AU bars with FACS names; over them the prior row of the predicted class.
    ax = predict_figure.panel(fig, "aus")
    np.testing.assert_allclose([b.get_height() for b in ax.containers[0]],
                               result["au_probs"], atol=1e-12)
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels[0] == "AU1\ninner brow raiser" and labels[8] == "AU12\nlip corner puller"
    (prior_line,) = [ln for ln in ax.get_lines() if ln.get_gid() == "prior"]
    np.testing.assert_allclose(prior_line.get_ydata(), au.prior("dfew")[top], atol=1e-7)
    assert "prior" in prior_line.get_label() and result["top_class"] in prior_line.get_label()
    # Timeline: one line per class at the window centres; the faceless window a gap.
    series = predict_figure.timeline_series(predict_figure.panel(fig, "timeline"))
    assert list(series) == pf.NAMES
    for c, name in enumerate(pf.NAMES):
        x, y = series[name]
        np.testing.assert_allclose(x, [0.5 * k + 0.5 for k in range(5)])
        want = [w["probabilities"][name] if w["probabilities"] else np.nan
                for w in tl["windows"]]
        np.testing.assert_allclose(y, want, atol=1e-12)
        assert np.isnan(y[1])
    # Title: input, checkpoint, face-detection summary (off here).
    title = fig._suptitle.get_text()   # pylint: disable=protected-access
    assert "clip.mp4" in title and predictor.source in title and "face detection off" in title


def test_no_prior_is_said(predictor):
    frames = np.stack([pf.frame(k) for k in range(12)])
    result, clips = predict.predict_clip(frames, predictor, return_clips=True)
    fig = predict_figure.prediction_figure(result, clips, fps=FPS, prior=None,
                                           prior_label="no AU prior: reason")
    ax = predict_figure.panel(fig, "aus")
    assert not [ln for ln in ax.get_lines() if ln.get_gid() == "prior"]
    assert [t.get_text() for t in ax.texts] == ["no AU prior: reason"]


def test_cli_writes_png_of_expected_size(tmp_path, var_ckpt, capsys):
    folder = tmp_path / "frames"
    folder.mkdir()
    for k in range(1, 13):
        Image.fromarray(pf.frame(k)).save(folder / f"{k}.png")
    out = tmp_path / "p.png"
    assert predict_cli.main(["--checkpoint", var_ckpt, str(folder), "--plot", str(out),
                         "--fps", "25"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    with Image.open(out) as im:
        # No timeline: frame strip 1.75 in, bars 4.2 in, title 0.8 in; 100 dpi.
        assert im.format == "PNG" and im.size == (1400, 675)
    clip = video.read_input(str(folder), fps=25)
    assert clip.fps_source == "--fps" and clip.duration == pytest.approx(12 / 25)
