"""Tests of third-party manifests (datasets.md section 5)."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from audfer_jax.data.readers import manifests, read_manifest
from audfer_jax.data.records import DatasetError, Report

_JPEG = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes()


def _clip(folder, n):
    os.makedirs(folder, exist_ok=True)
    for k in range(1, n + 1):
        with open(os.path.join(folder, f"{k}.jpg"), "wb") as f:
            f.write(_JPEG)


def _write(path, text):
    with open(path, "wb") as f:
        f.write(text.encode())
    return str(path)


def test_three_field_dfew_rebases_and_warns_on_num_frames(tmp_path):
    root = tmp_path / "DFEW_Face"
    _clip(str(root / "02522"), 16)
    _clip(str(root / "00017"), 11)
    path = _write(tmp_path / "set_1_train.txt",
                  "/home/someone/DFEW_Face/02522 16 5\r\n./dataset/00017 16 6\r\n")
    report = Report()
    clips = read_manifest(path, "dfew", str(root), report=report)
    assert [(c.key, c.label, c.num_frames) for c in clips] == [("02522", 5, 16), ("00017", 6, 11)]
    assert report.counts["num_frames_mismatch"] == 1
    assert "set_1_train.txt:2" in report.warnings[0].origin
    assert "folder" in report.warnings[0].detail and "11" in report.warnings[0].detail


def test_two_field_mafw_needs_source_order_and_maps_mae_dfer(tmp_path):
    root = tmp_path / "frames"
    _clip(str(root / "03747"), 12)
    _clip(str(root / "00025"), 20)
    path = _write(tmp_path / "train.csv",
                  "/x/MAFW/data/frames/03747 0\n/x/MAFW/data/frames/00025 3\n")
    with pytest.raises(ValueError, match="source_order"):
        read_manifest(path, "mafw", str(root))
    clips = read_manifest(path, "mafw", str(root), source_order="mae_dfer")
    # MAE-DFER order: 0 anger, 3 happiness; canonical: anger 3, happiness 0.
    assert [(c.key, c.label) for c in clips] == [("03747", 3), ("00025", 0)]
    clips = read_manifest(path, "mafw", str(root), source_order="s2d")
    # S2D alphabetical: 0 anger, 3 disappointment (canonical 10).
    assert [c.label for c in clips] == [3, 10]
    with pytest.raises(ValueError, match="not defined for mafw"):
        read_manifest(path, "mafw", str(root), source_order="former_dfer")


def test_header_csv_ferv39k_alphabetical_and_emotion_cross_check(tmp_path):
    root = tmp_path / "crops"
    _clip(str(root / "Crime" / "Angry" / "0063"), 9)
    _clip(str(root / "Action" / "Happy" / "0267"), 9)
    path = _write(tmp_path / "train.csv", "path,id\nCrime/Angry/0063,0\nAction/Happy/267,3\n")
    clips = read_manifest(path, "ferv39k", str(root), source_order="s2d")
    assert [(c.key, c.label) for c in clips] == [("Crime/Angry/0063", 3),
                                                  ("Action/Happy/0267", 0)]
    # Read in the canonical order instead, label 0 (happy) disagrees with Angry/.
    with pytest.raises(DatasetError) as err:
        read_manifest(path, "ferv39k", str(root), source_order="former_dfer")
    msg = str(err.value)
    assert "train.csv:2: emotion folder disagrees with label" in msg
    assert "train.csv:3: emotion folder disagrees with label" in msg


def test_header_csv_dfew_default_order_and_range(tmp_path):
    root = tmp_path / "clips"
    _clip(str(root / "02522"), 16)
    path = _write(tmp_path / "s2d.csv", "video_name,label\n02522,5\n2522,5\n00001,7\n")
    with pytest.raises(DatasetError) as err:
        read_manifest(path, "dfew", str(root))
    msg = str(err.value)
    assert "s2d.csv:3: duplicate id" in msg and "s2d.csv:2" in msg
    assert "s2d.csv:4: label out of range (7; allowed 0..6" in msg


def test_labels_from_official_split(tmp_path):
    root = tmp_path / "clips"
    for cid in ("02522", "00017", "00018"):
        _clip(str(root / cid), 16)
    path = _write(tmp_path / "list.txt", "/a/02522 16 5\n/a/00017 16 1\n/a/00018 16 2\n")
    official = {"02522": 5, "00017": 4}
    with pytest.raises(DatasetError) as err:
        read_manifest(path, "dfew", str(root), labels_from=official)
    msg = str(err.value)
    assert "list.txt:2: label disagrees with the official split" in msg
    assert "list.txt:3: clip not in the official split" in msg
    clips = read_manifest(path, "dfew", str(root), labels_from=official, on_error="skip")
    assert [(c.key, c.label) for c in clips] == [("02522", 5)]


def test_label_names_and_format_detection(tmp_path):
    root = tmp_path / "clips"
    _clip(str(root / "02522"), 16)
    path = _write(tmp_path / "names.txt", "x/02522 Fear\n")
    assert read_manifest(path, "dfew", str(root))[0].label == 6
    assert manifests.detect_format("a 1 2") == "three_field"
    assert manifests.detect_format("a 1") == "two_field"
    assert manifests.detect_format("video_name,label") == "header_csv"
    with pytest.raises(ValueError, match="cannot tell"):
        manifests.detect_format("a b c d")
