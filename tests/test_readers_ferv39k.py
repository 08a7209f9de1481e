"""Tests of the FERV39k reader on small trees in the official layout (datasets.md 2, 9)."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from audfer_jax.data.readers import read_split
from audfer_jax.data.records import DatasetError, Report

_JPEG = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes()

# (Scene, Emotion, id, frames); ids unique only within Scene/Emotion.
CLIPS = [("Action", "Happy", "0267", 8), ("Argue", "Angry", "0267", 30),
         ("War", "Fear", "0001", 16), ("Crime", "Disgust", "0063", 12),
         ("School", "Neutral", "0100", 20)]


def make_ferv39k(root, train_lines, test_lines, *, nested=False, eol="\n"):
    base = os.path.join(root, "FERV39k")
    crops = os.path.join(base, "2_ClipsforFaceCrop")
    if nested:
        crops = os.path.join(crops, "2_ClipsforFaceCrop")
    for scene, emotion, cid, n in CLIPS:
        folder = os.path.join(crops, scene, emotion, cid)
        os.makedirs(folder, exist_ok=True)
        for k in range(1, n + 1):
            with open(os.path.join(folder, f"{k:02d}.jpg"), "wb") as f:
                f.write(_JPEG)
    setups = os.path.join(base, "4_setups", "All_scenes")
    os.makedirs(setups, exist_ok=True)
    for name, lines in (("train_All.csv", train_lines), ("test_All.csv", test_lines)):
        with open(os.path.join(setups, name), "w", newline="") as f:
            f.write(eol.join(lines) + eol)
    return base


TRAIN = ["Action/Happy/0267 Happy", "Argue/Angry/0267 Angry", "War/Fear/0001 Fear"]
TEST = ["Crime/Disgust/0063 Disgust", "School/Neutral/0100 Neutral"]


def test_reads_split_with_data_on_line_1(tmp_path):
    make_ferv39k(tmp_path, TRAIN, TEST)
    report = Report()
    train = read_split("ferv39k", str(tmp_path), "train", report=report)
    assert [c.key for c in train] == ["Action/Happy/0267", "Argue/Angry/0267", "War/Fear/0001"]
    assert [c.label for c in train] == [0, 3, 6]
    assert [c.num_frames for c in train] == [8, 30, 16]
    assert all(c.fold == 0 for c in train)
    assert os.path.basename(train[1].frames[-1]) == "30.jpg"
    assert report.counts["clips_under_16"] == 1
    test = read_split("ferv39k", str(tmp_path), "test")
    assert [c.label for c in test] == [5, 2]


def test_header_only_when_last_token_is_not_a_class(tmp_path):
    make_ferv39k(tmp_path, ["path label"] + TRAIN, ["video,Neutral"] + TEST, eol="\r\n")
    assert len(read_split("ferv39k", str(tmp_path), "train")) == 3
    # Line 1 of the test list ends in a class name: it is data, a bad clip path.
    with pytest.raises(DatasetError, match="test_All.csv:1: bad clip path"):
        read_split("ferv39k", str(tmp_path), "test")


def test_prefixes_unpadded_ids_and_nested_crops(tmp_path):
    make_ferv39k(tmp_path / "FERV39K", ["/data/FERV39k/2_ClipsforFaceCrop/Action/Happy/267 happy",
                                        "Argue\\Angry\\0267 ANGRY"], TEST, nested=True)
    clips = read_split("ferv39k", str(tmp_path / "FERV39K"), "train")
    assert [c.key for c in clips] == ["Action/Happy/0267", "Argue/Angry/0267"]
    assert [c.label for c in clips] == [0, 3]


def test_emotion_folder_must_match_label_and_unknown_labels(tmp_path):
    make_ferv39k(tmp_path, ["Action/Happy/0267 Sad", "Argue/Angry/0267 Contempt",
                            "War/Fear/0001 Fear"], TEST)
    with pytest.raises(DatasetError) as err:
        read_split("ferv39k", str(tmp_path), "train")
    msg = str(err.value)
    assert "train_All.csv:1: emotion folder disagrees with label" in msg
    assert "train_All.csv:2: unknown label ('Contempt'" in msg
    clips = read_split("ferv39k", str(tmp_path), "train", on_error="skip")
    assert [c.key for c in clips] == ["War/Fear/0001"]


def test_duplicates_and_leakage(tmp_path):
    make_ferv39k(tmp_path, TRAIN + ["Action/Happy/267 Happy"], TEST + ["War/Fear/0001 Fear"])
    with pytest.raises(DatasetError) as err:
        read_split("ferv39k", str(tmp_path), "train")
    msg = str(err.value)
    assert "train_All.csv:4: duplicate id" in msg and "train_All.csv:1" in msg
    assert "train_All.csv:3: leakage" in msg
    report = Report()
    clips = read_split("ferv39k", str(tmp_path), "train", on_error="skip", report=report)
    assert [c.key for c in clips] == ["Argue/Angry/0267"]
    assert len(report.problems) == 2


def test_missing_clip_folder(tmp_path):
    make_ferv39k(tmp_path, TRAIN + ["Action/Happy/0999 Happy"], TEST)
    with pytest.raises(DatasetError, match="train_All.csv:4: missing frame folder"):
        read_split("ferv39k", str(tmp_path), "train")
