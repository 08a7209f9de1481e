"""`prepare`: resumable, robust to corrupt frames, CLI and summary."""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("tensorflow_datasets")

import audfer_jax.data.readers as readers_pkg  # noqa: E402
from audfer_jax.cli import prepare as prepare_cli  # noqa: E402
from audfer_jax.data import prepare as prepare_lib  # noqa: E402
from audfer_jax.data import records  # noqa: E402

import clip_fixtures  # noqa: E402


@pytest.fixture()
def clips(tmp_path):
    raw = str(tmp_path / "raw")
    train = clip_fixtures.make_clips(raw, [6, 8, 5, 7, 9], "train")
    test = clip_fixtures.make_clips(raw, [6, 5], "test", start=5)
    return raw, {"train": train, "test": test}


def _quiet(_):
    pass


def test_resolve_folds():
    assert prepare_lib.resolve_folds("dfew", "all") == [1, 2, 3, 4, 5]
    assert prepare_lib.resolve_folds("dfew", "3") == [3]
    assert prepare_lib.resolve_folds("ferv39k", None) == [0]
    with pytest.raises(ValueError, match="not valid"):
        prepare_lib.resolve_folds("dfew", 6)
    with pytest.raises(ValueError, match="unknown dataset"):
        prepare_lib.resolve_folds("afew", 1)


def test_resumable_skip_and_redo(tmp_path, clips, monkeypatch):
    raw, by_split = clips
    data = str(tmp_path / "data")
    calls = []

    def interrupted(dataset, root, split, fold=None, **kw):
        if split == "test":
            raise KeyboardInterrupt  # the process dies while writing the fold
        return by_split[split]

    monkeypatch.setattr(readers_pkg, "read_split", interrupted, raising=False)
    with pytest.raises(KeyboardInterrupt):
        prepare_lib.prepare("dfew", raw, data, [1], log=_quiet)
    path = prepare_lib.version_dir(data, "dfew", 1)
    assert not prepare_lib.is_prepared(path)
    # Leave a stale temporary folder as a killed run would.
    os.makedirs(os.path.join(os.path.dirname(path), "incomplete.ABC_1.0.0"), exist_ok=True)

    monkeypatch.setattr(readers_pkg, "read_split",
                        clip_fixtures.fake_reader(by_split, calls), raising=False)
    first = prepare_lib.prepare("dfew", raw, data, [1, 2], log=_quiet)
    assert [r.skipped for r in first] == [False, False]
    assert prepare_lib.is_prepared(path)
    assert not any("incomplete" in n for n in os.listdir(os.path.dirname(path)))
    n_calls = len(calls)
    lines = []
    again = prepare_lib.prepare("dfew", raw, data, "all", log=lines.append)
    # Folds 1 and 2 are skipped without reading anything; 3..5 are prepared.
    assert [r.skipped for r in again] == [True, True, False, False, False]
    assert len(calls) == n_calls + 3 * 2
    assert any("already prepared" in line for line in lines)
    np.testing.assert_array_equal(again[0].class_counts["train"],
                                  np.bincount([c.label for c in by_split["train"]], minlength=7))


def _corrupt(clip, how):
    path = clip.frames[2]
    if how == "garbage":
        with open(path, "wb") as f:
            f.write(b"not an image at all")
    elif how == "empty":
        open(path, "wb").close()
    else:  # truncated: a valid JPEG header, data cut short
        with open(path, "rb") as f:
            data = f.read()
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("how", ["garbage", "empty", "truncated"])
def test_corrupt_frame_skip(tmp_path, clips, monkeypatch, how):
    raw, by_split = clips
    bad = _corrupt(by_split["train"][1], how)
    monkeypatch.setattr(readers_pkg, "read_split", clip_fixtures.fake_reader(by_split),
                        raising=False)
    res = prepare_lib.prepare("dfew", raw, str(tmp_path / "data"), 1, on_error="skip",
                              log=_quiet)[0]
    assert prepare_lib.is_prepared(res.path)
    assert int(res.class_counts["train"].sum()) == 4       # the other clips are kept
    assert int(res.class_counts["test"].sum()) == 2
    assert len(res.report.problems) == 1
    report = open(os.path.join(os.path.dirname(res.path), prepare_lib.REPORT_NAME)).read()
    assert bad in report and by_split["train"][1].origin in report
    reason = {"garbage": "not a JPEG", "empty": "size 0", "truncated": "corrupt"}[how]
    assert reason in report


def test_corrupt_frame_raise_lists_every_problem(tmp_path, clips, monkeypatch):
    raw, by_split = clips
    bad1 = _corrupt(by_split["train"][0], "garbage")
    bad2 = _corrupt(by_split["train"][3], "empty")
    monkeypatch.setattr(readers_pkg, "read_split", clip_fixtures.fake_reader(by_split),
                        raising=False)
    data = str(tmp_path / "data")
    with pytest.raises(records.DatasetError) as err:
        prepare_lib.prepare("dfew", raw, data, 1, log=_quiet)
    assert bad1 in str(err.value) and bad2 in str(err.value)
    path = prepare_lib.version_dir(data, "dfew", 1)
    assert not prepare_lib.is_prepared(path)
    assert bad1 in open(os.path.join(os.path.dirname(path), prepare_lib.REPORT_NAME)).read()


def test_header_validation_misses_truncation_full_catches_it(tmp_path, clips, monkeypatch):
    raw, by_split = clips
    # A noisy JPEG of the clip's size whose entropy-coded data is cut at 70 %:
    # the header (and so the size) is intact, the pixels are not.
    import io
    from PIL import Image
    clip = by_split["test"][0]
    noise = np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="JPEG", quality=95)
    data = buf.getvalue()
    with open(clip.frames[2], "wb") as f:
        f.write(data[: int(len(data) * 0.7)])
    monkeypatch.setattr(readers_pkg, "read_split", clip_fixtures.fake_reader(by_split),
                        raising=False)
    res = prepare_lib.prepare("dfew", raw, str(tmp_path / "a"), 1, validate="header",
                              on_error="skip", log=_quiet)[0]
    assert not res.report.problems
    res = prepare_lib.prepare("dfew", raw, str(tmp_path / "b"), 1, validate="full",
                              on_error="skip", log=_quiet)[0]
    assert len(res.report.problems) == 1


def test_cli_main_prints_summary(tmp_path, clips, monkeypatch, capsys):
    raw, by_split = clips
    monkeypatch.setattr(readers_pkg, "read_split", clip_fixtures.fake_reader(by_split),
                        raising=False)
    rc = prepare_cli.main(["--dataset", "dfew", "--raw_dir", raw, "--data_dir",
                           str(tmp_path / "data"), "--fold", "4", "--on_error", "skip"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "happy" in out and "fear" in out
    train_line = [l for l in out.splitlines() if l.split()[:2] == ["4", "train"]][0]
    expected = np.bincount([c.label for c in by_split["train"]], minlength=7)
    assert [int(v) for v in train_line.split()[2:9]] == expected.tolist()
    assert prepare_cli.main(["--dataset", "dfew", "--raw_dir", str(tmp_path / "nope"),
                             "--data_dir", str(tmp_path / "d")]) == 1
