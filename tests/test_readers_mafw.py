"""Tests of the MAFW reader on small trees in the official layout (datasets.md 3, 9)."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from audfer_jax.data.readers import read_split
from audfer_jax.data.records import DatasetError, Report

_PNG = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
LENGTHS = {3747: 9, 25: 20, 19: 16, 20098: 30}
SPLIT_ROOT = "Train & Test Set"


def make_mafw(root, lists, *, frame_dir="data/frames", split_root=SPLIT_ROOT):
    """lists: {(label_type, caption, fold, split): bytes}."""
    base = os.path.join(root, "MAFW")
    for cid, n in LENGTHS.items():
        folder = os.path.join(base, frame_dir, f"{cid:05d}")
        os.makedirs(folder, exist_ok=True)
        for k in range(1, n + 1):
            with open(os.path.join(folder, f"{k}.png"), "wb") as f:
                f.write(_PNG)
    for (label_type, caption, fold, split), data in lists.items():
        folder = os.path.join(base, split_root, label_type, caption, f"set_{fold}")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"{split}.txt"), "wb") as f:
            f.write(data)
    return base


NO_CAPTION = {
    ("single", "no_caption", 1, "train"): b"03747.mp4 anger\r\n00025.mp4 happiness\r\n",
    ("single", "no_caption", 1, "test"): b"00019.mp4 contempt\r\n20098.mp4 disappointment\r\n",
}


def test_single_no_caption_crlf(tmp_path):
    make_mafw(tmp_path, NO_CAPTION)
    report = Report()
    train = read_split("mafw", str(tmp_path), "train", 1, report=report)
    assert [(c.key, c.label) for c in train] == [("03747", 3), ("00025", 0)]
    assert [c.num_frames for c in train] == [9, 20]
    assert report.counts["clips_under_16"] == 1
    test = read_split("mafw", str(tmp_path), "test", 1)
    assert [(c.key, c.label) for c in test] == [("00019", 7), ("20098", 10)]
    assert all(c.multi_label is None for c in test)


def test_with_caption_gbk_never_fails_but_label_fields_are_ascii(tmp_path):
    chinese = "生气的男人".encode("gbk")
    broken = b"\xff\xfe\x81"          # neither GBK nor GB18030 nor UTF-8
    lists = {
        ("single", "with_caption", 1, "train"):
            b"03747.mp4\tanger\t" + chinese + b"\tAn angry man.   \r\n"
            + b"00025.mp4\thappiness\t" + broken + b"\tA smile\r\n",
        ("single", "with_caption", 1, "test"):
            b"00019.mp4\tcontempt\t" + chinese + b"\tx\r\n"
            + b"20098.mp4\tdisappointment" + "é".encode("gbk") + b"\t\tx\r\n",
    }
    make_mafw(tmp_path, lists)
    report = Report()
    train = read_split("mafw", str(tmp_path), "train", 1, caption="with_caption", report=report)
    assert [(c.key, c.label) for c in train] == [("03747", 3), ("00025", 0)]
    assert report.counts["captioned_lines"] == 2
    with pytest.raises(DatasetError, match="test.txt:2: label fields not ASCII"):
        read_split("mafw", str(tmp_path), "test", 1, caption="with_caption")


def test_compound_labels_into_multi_label(tmp_path):
    lists = {
        ("compound", "no_caption", 1, "train"):
            b"03747.mp4 anger_disgust\r\n00025.mp4 sadness-anxiety-helplessness\r\n"
            b"00019.mp4 fear\r\n",
        ("compound", "no_caption", 1, "test"): b"20098.mp4 anger_joy\r\n",
    }
    make_mafw(tmp_path, lists)
    report = Report()
    clips = read_split("mafw", str(tmp_path), "train", 1, label_type="compound", report=report)
    assert [c.multi_label for c in clips] == [(3, 5), (1, 8, 9), (6,)]
    assert [c.label for c in clips] == [-1, -1, 6]
    assert report.counts["compound_multi_class"] == 2
    with pytest.raises(DatasetError, match="test.txt:1: unknown label"):
        read_split("mafw", str(tmp_path), "test", 1, label_type="compound")
    # A compound name is an unknown label in the single-label lists.
    make_mafw(tmp_path, {("single", "no_caption", 1, "train"): b"03747.mp4 anger_disgust\n"})
    with pytest.raises(DatasetError, match="unknown label"):
        read_split("mafw", str(tmp_path), "train", 1, check_leakage=False)


def test_renamed_split_root_and_frame_set_choice(tmp_path):
    base = make_mafw(tmp_path, {("single", "no_caption", 1, "train"): b"03747.mp4 neutral\n"},
                     frame_dir="frames_crop_align_224", split_root="split")
    with pytest.raises(FileNotFoundError, match="split_root"):
        read_split("mafw", str(tmp_path), "train", 1)
    clips = read_split("mafw", str(tmp_path), "train", 1, split_root="split")
    assert clips[0].label == 2 and "frames_crop_align_224" in clips[0].frames[0]
    # Two frame sets: the reader refuses to guess.
    os.makedirs(os.path.join(base, "data", "faces", "03747"))
    with pytest.raises(ValueError, match="frame_set"):
        read_split("mafw", str(tmp_path), "train", 1, split_root="split")
    clips = read_split("mafw", str(tmp_path), "train", 1, split_root="split",
                       frame_set="frames_crop_align_224")
    assert clips[0].num_frames == 9


def test_leakage_and_duplicates(tmp_path):
    lists = dict(NO_CAPTION)
    lists[("single", "no_caption", 1, "test")] = b"00019.mp4 fear\r\n3747.mp4 anger\r\n"
    lists[("single", "no_caption", 2, "test")] = b"00019.mp4 fear\r\n"
    make_mafw(tmp_path, lists)
    with pytest.raises(DatasetError) as err:
        read_split("mafw", str(tmp_path), "test", 1)
    msg = str(err.value)
    assert "test.txt:2: leakage" in msg and "in train and test of fold 1" in msg
    assert "test.txt:1: leakage" in msg and "folds 1 and 2" in msg
    lists[("single", "no_caption", 1, "train")] = b"03747.mp4 anger\n03747.mp4 anger\n"
    make_mafw(tmp_path, lists)
    with pytest.raises(DatasetError, match="train.txt:2: duplicate id"):
        read_split("mafw", str(tmp_path), "train", 1, check_leakage=False)
