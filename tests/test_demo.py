"""Tests of the synthetic demo set writer (audfer_jax.data.demo)."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest

from audfer_jax.au import AU_NAMES
from audfer_jax.classes import DFEW_CLASSES
from audfer_jax.cli import demo as demo_cli
from audfer_jax.data import demo
from audfer_jax.data.readers import au_labels, read_split
from audfer_jax.data.records import Report

NUM_CLIPS = 40
SIZE = 32


def _tree_digest(root):
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            if name == "demo_info.json":      # holds timings
                continue
            p = os.path.join(dirpath, name)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = hashlib.sha1(f.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    summary = demo.write_demo_dataset(str(out), NUM_CLIPS, seed=3, image_size=SIZE,
                                      num_workers=1)
    return str(out), summary


def test_deterministic_given_seed(demo_dir, tmp_path):
    out, _ = demo_dir
    assert demo_cli.main(["--out", str(tmp_path / "a"), "--num_clips", str(NUM_CLIPS),
                          "--seed", "3", "--size", str(SIZE), "--workers", "1"]) == 0
    same = _tree_digest(str(tmp_path / "a"))
    assert same == _tree_digest(out)
    assert len(same) > NUM_CLIPS * 16
    demo.write_demo_dataset(str(tmp_path / "b"), NUM_CLIPS, seed=4, image_size=SIZE,
                            num_workers=1)
    other = _tree_digest(str(tmp_path / "b"))
    assert other != same


def test_reads_back_through_read_split_with_folds_and_aus(demo_dir):
    out, summary = demo_dir
    assert summary["synthetic"] and summary["num_clips"] == NUM_CLIPS
    all_ids = {f"{i:05d}" for i in range(1, NUM_CLIPS + 1)}
    test_sets = []
    labels = {}
    for fold in range(1, 6):
        report = Report()
        train = read_split("demo", out, "train", fold, report=report)
        test = read_split("demo", out, "test", fold, report=report)
        assert not report.problems
        assert len(train) + len(test) == NUM_CLIPS
        assert {c.key for c in train} | {c.key for c in test} == all_ids
        # Every class is in every test fold (>= 5 clips per class).
        assert sorted({c.label for c in test}) == list(range(7))
        test_sets.append({c.key for c in test})
        for c in train + test:
            assert labels.setdefault(c.key, c.label) == c.label
            assert c.au_frames.shape == (c.num_frames, 18)
            assert c.au_valid.shape == (c.num_frames,)
            names = [os.path.basename(p) for p in c.frames]
            assert names == [f"{k}.jpg" for k in range(1, c.num_frames + 1)]
    # Disjoint test sets covering every clip.
    assert sum(len(s) for s in test_sets) == NUM_CLIPS
    assert set().union(*test_sets) == all_ids
    counts = {n: sum(1 for v in labels.values() if v == i) for i, n in enumerate(DFEW_CLASSES)}
    assert counts == summary["class_counts"]
    clips = read_split("demo", out, "train", 1) + read_split("demo", out, "test", 1)
    lengths = np.array([c.num_frames for c in clips])
    assert lengths.min() >= 11 and lengths.max() <= 40
    assert (lengths < 16).sum() == summary["clips_under_16"] >= 1
    valid = np.concatenate([c.au_valid for c in clips])
    assert 0.85 < valid.mean() < 1.0          # a few low-confidence / failed rows
    # The same tree reads as DFEW with an explicit au_source.
    dfew = read_split("dfew", out, "test", 2, au_source=os.path.join(out, "DFEW", "OpenFace"))
    assert len(dfew) == summary["test_clips_per_fold"][1]
    assert all(c.au_valid is not None for c in dfew)


def test_openface_rows_follow_lexicographic_file_order(tmp_path):
    rng = np.random.default_rng(0)
    T = 12
    inten = np.zeros((T, len(demo.RENDER_AUS)), np.float32)
    inten[9, demo.RENDER_AUS.index("AU12")] = 5.0      # temporal frame 10.jpg only
    lines, presence, valid = demo.openface_rows(rng, inten)
    header = [h.strip() for h in lines[0].split(",")]
    assert lines[0].startswith("frame, face_id, timestamp, confidence, success")
    assert all(f"{a}_c" in header for a in AU_NAMES) and "AU28_r" not in header
    # OpenFace's frame 2 on 1.jpg..12.jpg is 10.jpg: its row carries AU12.
    row2 = [v.strip() for v in lines[2].split(",")]
    assert row2[0] == "2" and float(row2[header.index("AU12_c")]) == float(presence[9, 8])
    path = tmp_path / "c.csv"
    path.write_text("\n".join(lines) + "\n")
    frames = [f"/x/{k}.jpg" for k in range(1, T + 1)]
    au, ok = au_labels.read_openface_csv(str(path), frames)
    np.testing.assert_array_equal(ok, valid)
    np.testing.assert_array_equal(au, presence * valid[:, None])


def test_prototypes_drive_the_intensities():
    # Over many clips, each class's prototype AUs are active (peak >= 1) in most
    # clips and the other AUs (bar blinks and speech: AU45, AU25, AU26) rarely.
    always_noisy = {"AU45", "AU25", "AU26"}
    for label, name in enumerate(DFEW_CLASSES):
        peaks = np.stack([
            demo.au_intensities(np.random.default_rng([label, i]), label, 30).max(0)
            for i in range(150)])
        rate = (peaks >= 1.0).mean(0)
        proto = set(demo.PROTOTYPES[name])
        either = set()
        if name == "disgust":                # AU9 or AU10, half the clips each
            either = {"AU09", "AU10"}
            proto -= either
            assert rate[demo.RENDER_AUS.index("AU09")] + rate[
                demo.RENDER_AUS.index("AU10")] > 0.7
        for j, au in enumerate(demo.RENDER_AUS):
            if au in either:
                continue
            if au in proto:
                assert rate[j] > 0.65, (name, au, rate[j])
            elif au not in always_noisy:
                assert rate[j] < 0.3, (name, au, rate[j])


def test_class_counts_follow_dfew_with_rare_classes_floored():
    # 1,500 clips: disgust (DFEW 145 of 11,697) is floored at 5 % = 75; the
    # other 1,425 follow DFEW's counts without disgust (11,552): happy
    # 2445 * 1425 / 11552 = 301.60, sad 233.63, neutral 329.23, angry 268.05,
    # surprise 181.21, fear 111.27 -> floors sum to 1,423; the two largest
    # remainders (sad .63, happy .60) get one more clip each.
    assert demo.class_counts(1500) == [302, 234, 329, 268, 181, 75, 111]
    assert demo.class_counts(35) == [5] * 7
    counts = np.array(demo.class_counts(3000))
    assert counts.sum() == 3000 and counts[5] == 150
    others = np.delete(counts, 5) / np.delete(counts, 5).sum()
    dfew = np.delete(np.array(demo.DFEW_CLASS_COUNTS), 5)
    np.testing.assert_allclose(others, dfew / dfew.sum(), atol=0.001)
    # DFEW's order of frequency is kept: disgust rarest, then fear.
    assert list(np.argsort(counts)[:2]) == [5, 6]
    with pytest.raises(ValueError, match="num_clips"):
        demo.class_counts(20)


def test_example_clip_is_a_test_clip_of_the_fold(demo_dir, tmp_path):
    out, _ = demo_dir
    for fold in (1, 4):
        folder, label = demo.example_clip(out, fold)
        first = read_split("demo", out, "test", fold)[0]
        assert os.path.basename(folder) == first.key
        assert os.path.dirname(first.frames[0]) == folder
        assert label == DFEW_CLASSES[first.label]
    assert demo.example_clip(str(tmp_path / "nothing"), 1) is None


def test_train_summary_names_chance_level_and_suggests_predict(demo_dir, tmp_path,
                                                               monkeypatch):
    from audfer_jax.cli import train as main
    from configs import demo as demo_config
    out, _ = demo_dir
    cfg = demo_config.get_config(f"data_dir={tmp_path / 'data'}")
    cfg.data.raw_dir = out
    recall = {n: 50.0 for n in DFEW_CLASSES}
    result = {"class_names": list(DFEW_CLASSES),
              "last": {"uar": 70.0, "war": 72.5, "epoch": 10, "per_class_recall": recall}}
    first = read_split("demo", out, "test", 1)[0]
    command = "audfer-jax predict --checkpoint workdir/demo --plot prediction.png "
    # Inside the current folder the clip is shown relative to it, else absolute.
    monkeypatch.chdir(out)
    lines = main._summary(result, "workdir/demo", cfg).splitlines()
    assert lines[0] == ("last epoch, epoch 10: UAR 70.00 %  WAR 72.50 %  "
                        "(chance level: UAR 1/7 = 14.3 %)")
    assert lines[-2].endswith(f"(labelled {DFEW_CLASSES[first.label]}):")
    assert lines[-1] == command + f"DFEW/Clip/clip_224x224/{first.key}"
    monkeypatch.chdir(tmp_path)
    lines = main._summary(result, "workdir/demo", cfg).splitlines()
    assert lines[-1] == command + os.path.dirname(first.frames[0])
    assert os.path.isabs(os.path.dirname(first.frames[0]))
    # A run stopped before its end has no last epoch: no suggestion.
    stopped = {"stopped_at_step": 4, "class_names": list(DFEW_CLASSES)}
    assert "audfer-jax predict" not in main._summary(stopped, "workdir/demo", cfg)
    # Not the demo set: chance level of its own class count, no predict line.
    cfg.data.name = "dfew"
    five = dict(result, class_names=list(DFEW_CLASSES[:5]))
    lines = main._summary(five, "runs/x", cfg).splitlines()
    assert "(chance level: UAR 1/5 = 20.0 %)" in lines[0]
    assert not any("audfer-jax predict" in line for line in lines)
