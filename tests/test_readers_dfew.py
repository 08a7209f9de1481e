"""Tests of the DFEW reader on small trees in the official layout (datasets.md 1, 9)."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from audfer_jax.au import AU_NAMES
from audfer_jax.data.readers import read_split
from audfer_jax.data.records import DatasetError, Report

_JPEG = cv2.imencode(".jpg", np.full((8, 8, 3), 128, np.uint8))[1].tobytes()

# clip id -> frames in clip_224x224; 00003 (8 frames) and 00004 (12) are short.
LENGTHS = {1: 16, 2: 20, 3: 8, 4: 12, 5: 16, 6: 17}
# Fold 1: official labels 1..7 (Happy, Sad, Neutral, Angry, Surprise, Disgust, Fear).
TRAIN_1 = [("1", 1), ("00002", 2), ("3", 3), ("4", 4)]
TEST_1 = [("5", 5), ("06", 7)]


def _frames(folder, n, name="{k}.jpg"):
    os.makedirs(folder, exist_ok=True)
    for k in range(1, n + 1):
        with open(os.path.join(folder, name.format(k=k)), "wb") as f:
            f.write(_JPEG)


def _csv(path, rows, *, eol="\n", bom=False, header="video_name,label"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    text = eol.join([header] + [f"{a},{b}" for a, b in rows]) + eol
    with open(path, "wb") as f:
        f.write((b"\xef\xbb\xbf" if bom else b"") + text.encode())


def make_dfew(root, *, train=TRAIN_1, test=TEST_1, eol="\n", bom=False,
              split_dir="{s}(single-labeled)"):
    base = os.path.join(root, "DFEW")
    for cid, n in LENGTHS.items():
        _frames(os.path.join(base, "Clip", "clip_224x224", f"{cid:05d}"), n)
        _frames(os.path.join(base, "Clip", "clip_224x224_16f", f"{cid:05d}"), 16)
    split = os.path.join(base, "EmoLabel_DataSplit")
    _csv(os.path.join(split, split_dir.format(s="train"), "set_1.csv"), train, eol=eol, bom=bom)
    _csv(os.path.join(split, split_dir.format(s="test"), "set_1.csv"), test, eol=eol, bom=bom)
    return base


def test_reads_fold_counts_labels_and_numeric_frame_order(tmp_path):
    make_dfew(tmp_path)
    report = Report()
    train = read_split("dfew", str(tmp_path), "train", 1, report=report)
    test = read_split("dfew", str(tmp_path), "test", 1)
    assert [c.key for c in train] == ["00001", "00002", "00003", "00004"]
    assert [c.label for c in train] == [0, 1, 2, 3]          # official - 1
    assert [c.key for c in test] == ["00005", "00006"]
    assert [c.label for c in test] == [4, 6]
    assert [c.num_frames for c in train] == [16, 20, 8, 12]
    assert all(c.split == "train" and c.fold == 1 for c in train)
    names = [os.path.basename(p) for p in train[0].frames]
    assert names == [f"{k}.jpg" for k in range(1, 17)]      # not 1, 10, 11, ...
    assert train[1].origin.endswith("set_1.csv:3")
    assert report.counts["clips_under_16"] == 2
    assert report.counts["class/happy"] == 1 and report.counts["class/angry"] == 1
    assert train[0].au_frames is None


def test_crlf_bom_and_nesting(tmp_path):
    make_dfew(tmp_path / "outer", eol="\r\n", bom=True)
    # The user's root is one level above DFEW/; DFEW itself works too.
    a = read_split("dfew", str(tmp_path / "outer"), "train", 1)
    b = read_split("dfew", str(tmp_path / "outer" / "DFEW"), "train", 1)
    assert [c.key for c in a] == [c.key for c in b] == ["00001", "00002", "00003", "00004"]
    assert [c.label for c in a] == [0, 1, 2, 3]


def test_lone_cr_blank_lines_and_tabs(tmp_path):
    base = make_dfew(tmp_path, split_dir="{s}")       # bare train/ and test/
    path = os.path.join(base, "EmoLabel_DataSplit", "train", "set_1.csv")
    with open(path, "wb") as f:
        f.write(b"video_name,label\r\r 1,\t1  \r\r2,2\r")
    clips = read_split("dfew", str(tmp_path), "train", 1, check_leakage=False)
    assert [(c.key, c.label) for c in clips] == [("00001", 0), ("00002", 1)]


@pytest.mark.parametrize("content, why", [(b"", "size 0"), (b"GIF89a....", "bad magic")])
def test_corrupt_frame_raises_naming_frame_clip_and_line_or_is_skipped(tmp_path, content, why):
    base = make_dfew(tmp_path)
    with open(os.path.join(base, "Clip", "clip_224x224", "00002", "5.jpg"), "wb") as f:
        f.write(content)
    with pytest.raises(DatasetError) as err:
        read_split("dfew", str(tmp_path), "train", 1)
    msg = str(err.value)
    assert "5.jpg" in msg and "00002" in msg and "set_1.csv:3" in msg and why in msg
    assert "1 problem(s)" in msg
    report = Report()
    clips = read_split("dfew", str(tmp_path), "train", 1, on_error="skip", report=report)
    assert [c.key for c in clips] == ["00001", "00003", "00004"]
    assert len(report.problems) == 1 and report.problems[0].reason == "corrupt frame"


def test_all_label_problems_in_one_error(tmp_path):
    make_dfew(tmp_path, train=[("1", 1), ("2", 0), ("3", 9), ("4", "x"), ("abc", 2)])
    with pytest.raises(DatasetError) as err:
        read_split("dfew", str(tmp_path), "train", 1)
    msg = str(err.value)
    assert "4 problem(s)" in msg
    assert "set_1.csv:3: label 0 (not single-labelled)" in msg
    assert "set_1.csv:4: label out of range (9; allowed 1..7)" in msg
    assert "set_1.csv:5: label not an integer" in msg
    assert "set_1.csv:6: bad clip id" in msg
    report = Report()
    clips = read_split("dfew", str(tmp_path), "train", 1, on_error="skip", report=report)
    assert [c.key for c in clips] == ["00001"]


def test_duplicate_id_quotes_both_lines_even_with_same_label(tmp_path):
    make_dfew(tmp_path, train=[("1", 1), ("2", 2), ("0001", 1), ("3", 3)])
    with pytest.raises(DatasetError) as err:
        read_split("dfew", str(tmp_path), "train", 1)
    msg = str(err.value)
    assert "set_1.csv:4: duplicate id" in msg and "set_1.csv:2" in msg
    clips = read_split("dfew", str(tmp_path), "train", 1, on_error="skip")
    assert [c.key for c in clips] == ["00002", "00003"]


def test_leakage_between_train_and_test_and_between_test_folds(tmp_path):
    base = make_dfew(tmp_path, test=[("5", 5), ("2", 2)])
    with pytest.raises(DatasetError, match="leakage"):
        read_split("dfew", str(tmp_path), "train", 1)
    with pytest.raises(DatasetError, match="in train and test of fold 1"):
        read_split("dfew", str(tmp_path), "test", 1)
    clips = read_split("dfew", str(tmp_path), "test", 1, check_leakage=False)
    assert len(clips) == 2
    # Clean fold 1 again; fold 2's test set shares 00005 with fold 1's.
    make_dfew(tmp_path)
    _csv(os.path.join(base, "EmoLabel_DataSplit", "test(single-labeled)", "set_2.csv"),
         [("5", 5)])
    with pytest.raises(DatasetError, match="test sets of folds 1 and 2"):
        read_split("dfew", str(tmp_path), "test", 1)


def test_frame_sets_and_missing_folder(tmp_path):
    base = make_dfew(tmp_path)
    clips = read_split("dfew", str(tmp_path), "train", 1, frame_set="16f")
    assert [c.num_frames for c in clips] == [16, 16, 16, 16]
    assert "clip_224x224_16f" in clips[0].frames[0]
    explicit = os.path.join(base, "Clip", "clip_224x224_16f")
    clips = read_split("dfew", str(tmp_path), "train", 1, frame_set=explicit)
    assert [c.num_frames for c in clips] == [16, 16, 16, 16]
    # Frames in an unpadded folder are found; a missing folder lists every path tried.
    os.rename(os.path.join(base, "Clip", "clip_224x224", "00003"),
              os.path.join(base, "Clip", "clip_224x224", "3"))
    os.rename(os.path.join(base, "Clip", "clip_224x224", "00004"),
              os.path.join(base, "Clip", "clip_224x224", "gone"))
    with pytest.raises(DatasetError) as err:
        read_split("dfew", str(tmp_path), "train", 1)
    msg = str(err.value)
    assert "set_1.csv:5: missing frame folder" in msg
    assert os.path.join("clip_224x224", "00004") in msg and os.path.join("clip_224x224", "4") in msg
    clips = read_split("dfew", str(tmp_path), "train", 1, on_error="skip")
    assert [c.key for c in clips] == ["00001", "00002", "00003"]
    with pytest.raises(FileNotFoundError, match="jpg_256"):
        read_split("dfew", str(tmp_path), "train", 1, frame_set="Clip/jpg_256")


def test_bad_frame_names(tmp_path):
    base = make_dfew(tmp_path)
    folder = os.path.join(base, "Clip", "clip_224x224")
    with open(os.path.join(folder, "00001", "cover.jpg"), "wb") as f:
        f.write(_JPEG)
    with open(os.path.join(folder, "00002", "005.jpg"), "wb") as f:   # 5 again
        f.write(_JPEG)
    with open(os.path.join(folder, "00003", "notes.txt"), "w") as f:  # ignored
        f.write("x")
    for name in os.listdir(os.path.join(folder, "00004")):
        os.remove(os.path.join(folder, "00004", name))
    with pytest.raises(DatasetError) as err:
        read_split("dfew", str(tmp_path), "train", 1)
    msg = str(err.value)
    assert "3 problem(s)" in msg
    assert "frame name without trailing integer" in msg and "cover.jpg" in msg
    assert "repeated frame number" in msg
    assert "no images in frame folder" in msg


def test_older_layout(tmp_path):
    base = tmp_path / "DFEW"
    for cid in (1, 2):
        _frames(str(base / "data" / f"{cid:05d}"), 12, name=f"{cid:05d}_{{k}}.jpg")
    _csv(str(base / "label" / "single_trainset_1.csv"), [("1", 3), ("2", 6)])
    _csv(str(base / "label" / "single_testset_1.csv"), [])
    clips = read_split("dfew", str(tmp_path), "train", 1)
    assert [(c.key, c.label) for c in clips] == [("00001", 2), ("00002", 5)]
    assert os.path.basename(clips[0].frames[-1]) == "00001_12.jpg"


def test_openface_au_source_aligned_with_frames(tmp_path):
    make_dfew(tmp_path)
    au_dir = tmp_path / "openface"
    au_dir.mkdir()
    # Clip 00001: 16 frames; OpenFace row k = k-th file in lexicographic order.
    lex = sorted(f"{k}.jpg" for k in range(1, 17))
    head = ["frame", " face_id", " timestamp", " confidence", " success"]
    head += [f" {a}_c" for a in AU_NAMES]
    rows = [",".join(head)]
    for k, name in enumerate(lex, start=1):
        stem = int(name.split(".")[0])
        bits = ["1" if (a == "AU12" and stem == 3) else "0" for a in AU_NAMES]
        conf = "0.5" if stem == 16 else "0.95"
        rows.append(", ".join([str(k), "0", "0.0", conf, "1"] + bits))
    (au_dir / "00001.csv").write_text("\n".join(rows) + "\n")
    report = Report()
    clips = read_split("dfew", str(tmp_path), "train", 1, au_source=str(au_dir), report=report)
    c = clips[0]
    assert c.au_frames.shape == (16, 18) and c.au_valid.shape == (16,)
    assert np.flatnonzero(c.au_frames[:, AU_NAMES.index("AU12")]).tolist() == [2]
    assert np.flatnonzero(~c.au_valid).tolist() == [15]
    for other in clips[1:]:   # no CSV: all missing, never all ones
        assert other.au_frames.shape == (other.num_frames, 18)
        assert not other.au_valid.any() and not other.au_frames.any()
    assert report.counts["au/clips_with_au"] == 1 and report.counts["au/no_csv"] == 3


def test_audfer_keys_index_the_16_frame_set(tmp_path):
    make_dfew(tmp_path)
    path = tmp_path / "AU_DFEW.txt"
    lines = [f"{cid:05d}.csv/{k} " + " ".join(["1"] + ["0"] * 17)
             for cid in (1, 2, 3, 4) for k in range(1, 17)]
    path.write_text("\n".join(lines))
    # Full-length clip 00002 has 20 frames and keys 1..16: an error.
    with pytest.raises(DatasetError, match="00002.*16-frame set"):
        read_split("dfew", str(tmp_path), "train", 1, au_source=str(path))
    clips = read_split("dfew", str(tmp_path), "train", 1, frame_set="16f", au_source=str(path))
    assert all(c.au_valid.all() and c.au_frames[:, 0].all() for c in clips)
    report = Report()
    clips = read_split("dfew", str(tmp_path), "test", 1, frame_set="16f", au_source=str(path),
                       report=report)
    assert not any(c.au_valid.any() for c in clips)       # 00005, 00006 have no lines
    assert report.counts["au/keys_not_in_split"] == 4
    assert report.counts["au/clips_without_au"] == 2
    # On full-length frames, clips 00003 (8 frames) and 00004 (12) keep the
    # entries that name one of their frames.
    clips = read_split("dfew", str(tmp_path), "train", 1, au_source=str(path),
                       on_error="skip")
    assert [c.key for c in clips] == ["00001", "00003", "00004"]
    assert clips[1].au_valid.all() and clips[2].au_valid.sum() == 12


def test_bad_arguments(tmp_path):
    make_dfew(tmp_path)
    with pytest.raises(ValueError, match="fold"):
        read_split("dfew", str(tmp_path), "train", 6)
    with pytest.raises(ValueError, match="split"):
        read_split("dfew", str(tmp_path), "val", 1)
    with pytest.raises(ValueError, match="on_error"):
        read_split("dfew", str(tmp_path), "train", 1, on_error="ignore")
    with pytest.raises(ValueError, match="unknown dataset"):
        read_split("affwild", str(tmp_path), "train", 1)
    with pytest.raises(FileNotFoundError, match="no DFEW layout"):
        read_split("dfew", str(tmp_path / "nowhere"), "train", 1)
