"""Tests of audfer_jax.data.readers.common (datasets.md sections 0 and 9)."""

from __future__ import annotations

import os

import pytest

from audfer_jax.data.readers import common
from audfer_jax.data.records import DatasetError, Report

_JPEG_HEAD = b"\xff\xd8\xff\xe0" + b"\0" * 16
_PNG_HEAD = b"\x89PNG\r\n\x1a\n" + b"\0" * 16


def _touch(folder, names, data=_JPEG_HEAD):
    os.makedirs(folder, exist_ok=True)
    for n in names:
        with open(os.path.join(folder, n), "wb") as f:
            f.write(data)


def test_trailing_integer_order_not_lexicographic(tmp_path):
    folder = str(tmp_path / "c")
    _touch(folder, ["00001_00012.jpg", "7.JPG", "1.jpeg", "readme.txt", "thumbs.db"])
    _touch(folder, ["0003.PNG"], _PNG_HEAD)
    names = [os.path.basename(p) for p in common.list_frames(folder)]
    assert names == ["1.jpeg", "0003.PNG", "7.JPG", "00001_00012.jpg"]
    assert common.trailing_int("00001_00012") == 12
    assert common.trailing_int("frame") is None


def test_frame_folder_errors(tmp_path):
    with pytest.raises(common.FrameFolderError, match="missing frame folder"):
        common.list_frames(str(tmp_path / "none"))
    _touch(str(tmp_path / "a"), ["1.jpg", "01.jpg"])
    with pytest.raises(common.FrameFolderError, match="repeated frame number"):
        common.list_frames(str(tmp_path / "a"))
    _touch(str(tmp_path / "b"), ["1.jpg", "2.jpg"])
    _touch(str(tmp_path / "b"), ["3.jpg"], b"")
    _touch(str(tmp_path / "b"), ["4.png"], b"BM....")
    with pytest.raises(common.FrameFolderError) as err:
        common.list_frames(str(tmp_path / "b"))
    assert err.value.reason == "corrupt frame"
    assert "3.jpg (size 0)" in err.value.detail and "4.png (bad magic bytes" in err.value.detail
    assert len(common.list_frames(str(tmp_path / "b"), check_frames=False)) == 4


def test_split_lines_line_ends_bom_and_numbers():
    data = b"\xef\xbb\xbfa,1\r\n\r\nb,2  \rc,3\t\n\n"
    assert common.split_lines(data) == [(1, b"a,1"), (3, b"b,2"), (4, b"c,3")]


def test_read_lines_reports_undecodable_lines(tmp_path):
    path = tmp_path / "f.csv"
    path.write_bytes(b"ok\n\xff\xfe bad\nfine\n")
    report = Report()
    lines = common.read_lines(str(path), report)
    assert [(l.number, l.text) for l in lines] == [(1, "ok"), (3, "fine")]
    assert report.problems[0].origin.endswith("f.csv:2")
    with pytest.raises(DatasetError, match="f.csv:2"):
        common.read_lines(str(path))


def test_find_base_one_nesting_level(tmp_path):
    os.makedirs(tmp_path / "X" / "X" / "EmoLabel_DataSplit")
    found = common.find_base(str(tmp_path / "X"), ["EmoLabel_DataSplit"])
    assert found == str(tmp_path / "X" / "X")
    assert common.find_base(str(tmp_path), ["EmoLabel_DataSplit"]) is None   # two levels
    path, tried = common.resolve_path(str(tmp_path / "X"), ["Clip", "X/EmoLabel_DataSplit"])
    assert path == str(tmp_path / "X" / "X" / "EmoLabel_DataSplit")
    assert tried[0] == str(tmp_path / "X" / "Clip")
