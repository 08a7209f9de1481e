"""Tests of audfer_jax.data.readers.au_labels (datasets.md section 6)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from audfer_jax.au import AU_NAMES
from audfer_jax.data.readers import au_labels, clip_au_target
from audfer_jax.data.records import Report

R_AUS = [a for a in AU_NAMES if a != "AU28"]


def _openface_csv(path, rows, *, face_id=True):
    """Writes an OpenFace-2.0-style CSV: ", "-separated, leading-space names.

    rows: (frame, confidence, success, {AU name: presence}) tuples.
    """
    head = ["frame"] + (["face_id"] if face_id else []) + ["timestamp", "confidence",
                                                           "success"]
    # A few unrelated columns between, as in the real ~430-column files.
    head += ["gaze_0_x", "pose_Rx"] + [f"{a}_r" for a in R_AUS] + [f"{a}_c" for a in AU_NAMES]
    lines = [", ".join(head)]
    for frame, conf, success, present in rows:
        vals = [str(frame)] + (["0"] if face_id else []) + [
            f"{(frame - 1) / 30:.3f}", f"{conf:.2f}", str(success), "0.1", "-0.2"]
        vals += ["1.50" if present.get(a) else "0.00" for a in R_AUS]
        vals += [("1.00" if present.get(a) else "0.00") for a in AU_NAMES]
        lines.append(", ".join(vals))
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def _col(name):
    return AU_NAMES.index(name)


def test_openface_csv_maps_frames_through_lexicographic_order(tmp_path):
    # Frames 1.jpg..16.jpg in temporal order; OpenFace reads them as
    # 1, 10, 11, ..., 16, 2, 3, ..., 9, so its frame 2 is 10.jpg (index 9).
    frames = [f"/clip/{k}.jpg" for k in range(1, 17)]
    rows = [(k, 0.95, 1, {}) for k in range(1, 17)]
    rows[1] = (2, 0.95, 1, {"AU12": 1})       # OpenFace frame 2 -> 10.jpg
    rows[7] = (8, 0.95, 1, {"AU06": 1})       # frame 8 -> 16.jpg (1,10..16 = 7 files)
    rows[8] = (9, 0.95, 1, {"AU45": 1})       # frame 9 -> 2.jpg
    path = tmp_path / "c.csv"
    _openface_csv(path, rows)
    au, valid = au_labels.read_openface_csv(str(path), frames)
    assert au.shape == (16, 18) and au.dtype == np.uint8
    assert valid.dtype == bool and valid.all()
    expected = np.zeros((16, 18), np.uint8)
    expected[9, _col("AU12")] = 1
    expected[15, _col("AU06")] = 1
    expected[1, _col("AU45")] = 1
    np.testing.assert_array_equal(au, expected)


def test_openface_csv_with_frame_count_maps_frame_k_to_index_k_minus_1(tmp_path):
    path = tmp_path / "v.csv"
    _openface_csv(path, [(1, 0.9, 1, {}), (3, 0.9, 1, {"AU01": 1})], face_id=False)
    au, valid = au_labels.read_openface_csv(str(path), 4)
    np.testing.assert_array_equal(valid, [True, False, True, False])
    assert au[2, _col("AU01")] == 1 and au.sum() == 1


def test_openface_invalid_rows_are_missing_and_most_confident_row_wins(tmp_path):
    path = tmp_path / "c.csv"
    _openface_csv(path, [
        (1, 0.95, 0, {"AU01": 1}),       # success 0 -> missing
        (2, 0.79, 1, {"AU02": 1}),       # below 0.8 -> missing
        (3, 0.80, 1, {"AU04": 1}),       # exactly 0.8 -> valid
        (4, 0.85, 1, {"AU05": 1}),       # two rows for frame 4:
        (4, 0.97, 1, {"AU06": 1}),       # the more confident one is kept
        (5, 0.99, 1, {"AU07": 1}),       # frame 5 beyond a 4-frame clip: ignored
    ])
    report = Report()
    au, valid = au_labels.read_openface_csv(str(path), 4, report=report)
    np.testing.assert_array_equal(valid, [False, False, True, True])
    assert au[0].sum() == 0 and au[1].sum() == 0      # missing, never positive
    assert au[2, _col("AU04")] == 1
    assert au[3, _col("AU06")] == 1 and au[3, _col("AU05")] == 0
    assert report.counts["au/openface_rows_beyond_clip"] == 1
    # A lower threshold makes frame 2 valid.
    _, valid = au_labels.read_openface_csv(str(path), 4, confidence_threshold=0.5)
    assert valid[1]


def test_openface_csv_without_au_columns_names_the_file(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("frame, confidence, success, AU01_c\n1, 0.9, 1, 1\n")
    with pytest.raises(au_labels.AULabelError, match="bad.csv.*AU02_c"):
        au_labels.read_openface_csv(str(path), 1)


def _audfer_line(key, bits, prefix=""):
    return (prefix + key + " " + " ".join(str(b) for b in bits)).strip()


def test_read_audfer_txt_keys_and_rejections(tmp_path):
    ones = [1] + [0] * 17          # AU01 only
    last = [0] * 17 + [1]          # AU45 only
    lines = [
        "\ufeff" + _audfer_line("02522.csv/7", ones),          # BOM on line 1
        _audfer_line("2522/8", last, prefix="12 "),            # extra leading token
        _audfer_line("data\\02522.csv\\9", ones),              # backslashes
        "",                                                     # blank: skipped
        _audfer_line("02522/10", [0] * 17),                    # 17 values only
        _audfer_line("02522/11", [2] + [0] * 17),              # not 0/1
        _audfer_line("nokey/x", ones),                         # no frame index
        _audfer_line("abc/3", ones),                           # no clip id
        _audfer_line("02522/7", last),                         # repeated key
        _audfer_line("00017/1", last) + "   ",                 # trailing spaces
    ]
    path = tmp_path / "AU_DFEW.txt"
    path.write_bytes("\r\n".join(lines).encode("utf-8"))
    report = Report()
    table = au_labels.read_audfer_txt(str(path), report)
    assert sorted(table) == ["00017", "02522"]
    assert sorted(table["02522"]) == [7, 8, 9]
    np.testing.assert_array_equal(table["02522"][7], ones)   # first line kept
    np.testing.assert_array_equal(table["02522"][8], last)
    assert table["02522"][9].dtype == np.uint8
    assert report.counts["au/lines_read"] == 9
    assert report.counts["au/lines_accepted"] == 4
    rejected = sum(v for k, v in report.counts.items() if k.startswith("au/rejected/"))
    assert rejected == 5
    assert not report.problems            # bad AU lines never abort or raise
    assert any(":5" in w.origin for w in report.warnings)


def test_read_audfer_txt_ferv39k_keys(tmp_path):
    path = tmp_path / "AU_FERV39K.txt"
    bits = [0, 1] + [0] * 16
    path.write_text(_audfer_line("Action/Happy/0267/07", bits) + "\n"
                    + _audfer_line("/x/2_ClipsforFaceCrop/Action/Happy/267.csv/08", bits))
    table = au_labels.read_audfer_txt(str(path), dataset="ferv39k")
    assert list(table) == ["Action/Happy/0267"]
    assert sorted(table["Action/Happy/0267"]) == [7, 8]


def test_align_audfer_stem_and_lexicographic():
    frames = [f"/c/{k}.jpg" for k in range(1, 13)]
    entries = {2: np.ones(18, np.uint8), 13: np.ones(18, np.uint8)}
    au, valid, beyond = au_labels.align_audfer(frames, entries, frame_index="stem")
    assert np.flatnonzero(valid).tolist() == [1] and beyond == 1
    # Lexicographic order 1, 10, 11, 12, 2, ...: k = 2 is 10.jpg (index 9).
    au, valid, beyond = au_labels.align_audfer(frames, entries, frame_index="lexicographic")
    assert np.flatnonzero(valid).tolist() == [9] and au[9].all()


def test_clip_au_target_majority_vote_hand_computed():
    au = np.zeros((6, 18), np.uint8)
    valid = np.array([True, True, True, False, True, True])
    # AU01: frames 0,1 positive; AU02: frame 0 only; AU04: frame 3 (invalid) only.
    au[[0, 1], 0] = 1
    au[0, 1] = 1
    au[3, 2] = 1
    au[[0, 1, 2, 4], 3] = 1    # AU05 positive on 4 frames
    # Sampled indices with padding repeats: distinct {0, 1, 2, 3, 4}; 3 invalid,
    # so n = 4. AU01: 2 >= 2 -> 1 (tie positive); AU02: 1 < 2 -> 0; AU04: the
    # only positive is invalid -> 0; AU05: 4 >= 2 -> 1.
    target, has = clip_au_target(au, valid, [0, 1, 2, 3, 4, 4, 4, 4])
    expected = np.zeros(18, np.float32)
    expected[[0, 3]] = 1
    np.testing.assert_array_equal(target, expected)
    assert target.dtype == np.float32 and has == 1.0
    # Repeats count once: [0, 0, 0, 2] -> distinct {0, 2}, n = 2. AU02: 1 >= 1.
    target, _ = clip_au_target(au, valid, [0, 0, 0, 2])
    assert target[1] == 1 and target[0] == 1
    # With padding counted as separate votes AU02 would be 3 of 4; with {2} only
    # it is 0 of 1.
    target, _ = clip_au_target(au, valid, [2, 2, 2, 2])
    assert target[1] == 0


def test_clip_au_target_no_valid_frame_gives_zero_mask():
    au = np.ones((4, 18), np.uint8)
    valid = np.array([False, False, True, False])
    target, has = clip_au_target(au, valid, [0, 1, 3, 3])
    assert has == 0.0 and not target.any()      # never all ones
    target, has = clip_au_target(au, valid)     # au_vote = all
    assert has == 1.0 and target.all()
    with pytest.raises(IndexError):
        clip_au_target(au, valid, [4])


def test_au_source_folder_naming_rule(tmp_path):
    report = Report()
    src = au_labels.AUSource(str(tmp_path), "ferv39k", report)
    cands = [os.path.relpath(p, tmp_path) for p in src.csv_candidates("Action/Happy/0267")]
    assert cands == ["Action/Happy/0267.csv", "Action_Happy_0267.csv", "267.csv",
                     "Action/Happy/0267/0267.csv"]
    au, valid, why = src.lookup("Action/Happy/0267", ["/f/01.jpg", "/f/02.jpg"])
    assert why is None and not valid.any() and au.shape == (2, 18)
    assert report.counts["au/no_csv"] == 1
