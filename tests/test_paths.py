"""Tests of audfer_jax.paths on local paths and URL strings (no server needed).

The same functions against a real GCS API server are in test_gcs.py.
"""

from __future__ import annotations

import os

import pytest

from audfer_jax import paths


def test_resolve_local_and_urls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert paths.resolve("runs/x") == os.path.join(str(tmp_path), "runs", "x")
    assert paths.resolve("~/r") == os.path.join(os.path.expanduser("~"), "r")
    # The bug of issue 15: abspath made gs://bkt/run into <cwd>/gs:/bkt/run.
    assert paths.resolve("gs://bkt/run") == "gs://bkt/run"
    assert paths.resolve("gs://bkt/run//") == "gs://bkt/run"
    assert paths.resolve("s3://b/k") == "s3://b/k"
    with pytest.raises(ValueError, match="unsupported URL scheme 'http'"):
        paths.resolve("http://example.com/x")
    with pytest.raises(ValueError, match="empty path"):
        paths.resolve("")


def test_is_remote_join_dirname_basename():
    assert paths.is_remote("gs://b")
    with pytest.raises(ValueError, match="unsupported URL scheme 'GS'"):
        paths.is_remote("GS://b")
    assert not paths.is_remote("/a/gs://b") and not paths.is_remote("rel/x")
    assert paths.join("gs://b/run", "best", "6") == "gs://b/run/best/6"
    assert paths.join("gs://b/run/", "x") == "gs://b/run/x"
    assert paths.join("/l/run", "best") == os.path.join("/l/run", "best")
    # Like os.path.join: an absolute or URL part replaces what precedes it.
    assert paths.join("/l/run", "gs://b/x", "y") == "gs://b/x/y"
    assert paths.join("gs://b/run", "/abs") == "/abs"
    assert paths.dirname("gs://b/run/best/6/") == "gs://b/run/best"
    assert paths.dirname(paths.dirname("gs://b/run/best/6")) == "gs://b/run"
    assert paths.dirname("/l/run/best/6/") == "/l/run/best"
    assert paths.basename("gs://b/run/6/") == "6" and paths.basename("/l/run/6/") == "6"


def test_local_files_and_folders(tmp_path):
    root = str(tmp_path / "r")
    assert not paths.exists(root) and paths.glob(root, "*") == []
    paths.makedirs(paths.join(root, "a", "b"))
    paths.makedirs(paths.join(root, "a", "b"))          # exists already: fine
    paths.write_text(paths.join(root, "a", "x.json"), "\u00e9")
    paths.write_bytes(paths.join(root, "a", "y.bin"), b"\x00\xff")
    with open(os.path.join(root, "a", "x.json"), "rb") as f:
        assert f.read() == "\u00e9".encode("utf-8")        # UTF-8 whatever the locale
    assert paths.listdir(paths.join(root, "a")) == ["b", "x.json", "y.bin"]
    assert paths.glob(paths.join(root, "a"), "*.json") == [os.path.join(root, "a", "x.json")]
    assert paths.isdir(paths.join(root, "a", "b")) and not paths.isfile(paths.join(root, "a", "b"))
    assert paths.isfile(paths.join(root, "a", "y.bin"))
    assert paths.read_bytes(paths.join(root, "a", "y.bin")) == b"\x00\xff"
    with paths.open(paths.join(root, "a", "x.json")) as f:
        assert f.read() == "\u00e9"
    with pytest.raises(ValueError, match="open_append"):
        paths.open(paths.join(root, "a", "x.json"), "a")
    paths.replace(paths.join(root, "a", "y.bin"), paths.join(root, "a", "z.bin"))
    assert sorted(os.listdir(os.path.join(root, "a"))) == ["b", "x.json", "z.bin"]
    paths.remove(paths.join(root, "a", "z.bin"))
    paths.remove(paths.join(root, "a", "z.bin"))            # missing: fine
    paths.rmtree(paths.join(root, "a", "b"))
    paths.rmtree(paths.join(root, "a", "b"))                # missing: fine
    assert os.listdir(os.path.join(root, "a")) == ["x.json"]
    with pytest.raises(FileNotFoundError, match="no such folder"):
        paths.listdir(paths.join(root, "nope"))


def test_local_append_keeps_earlier_lines(tmp_path):
    path = str(tmp_path / "m.jsonl")
    with open(path, "w") as f:
        f.write("0\n")
    with paths.open_append(path) as f:
        f.write("1\n")
        f.flush()
        with open(path) as g:
            assert g.read() == "0\n1\n"
        f.write("2\n")
    with open(path) as g:
        assert g.read() == "0\n1\n2\n"
