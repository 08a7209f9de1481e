"""Damaged or incomplete prepared data: one line naming the shard (issue 19).

A tiny prepared DFEW fold (the `clip_fixtures` reader stand-in, as in
test_pipeline.py) is copied, damaged in one way per test, and read back:
a missing shard and a cut shard are caught at start-up from what `prepare`
recorded in dataset_info.json; flipped bytes are caught while reading, named
by shard and byte offset, and the run's checkpoints are left as they were.
"""

from __future__ import annotations

import os
import shutil
import struct
import sys

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
pytest.importorskip("tensorflow_datasets")

import audfer_jax.data.readers as readers_pkg  # noqa: E402
from audfer_jax import train  # noqa: E402
from audfer_jax.data import pipeline  # noqa: E402
from audfer_jax.data import prepare as prepare_lib  # noqa: E402

import clip_fixtures  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
import _train_fakes as fakes  # noqa: E402

TRAIN_LENGTHS = [8] * 16
TEST_LENGTHS = [8] * 7        # labels i % 7: every class once
SIZE = 32


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """`(data_dir, version folder)` of an intact prepared fold, never modified."""
    root = tmp_path_factory.mktemp("damage")
    raw = str(root / "raw")
    train_clips = clip_fixtures.make_clips(raw, TRAIN_LENGTHS, "train", size=SIZE)
    test_clips = clip_fixtures.make_clips(raw, TEST_LENGTHS, "test", start=len(TRAIN_LENGTHS),
                                          size=SIZE)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(readers_pkg, "read_split",
                   clip_fixtures.fake_reader({"train": train_clips, "test": test_clips}),
                   raising=False)
        out = prepare_lib.prepare("dfew", raw, str(root / "data"), 1, log=lambda s: None,
                                  progress_bar=False)
    return str(root / "data"), out[0].path


def _copy(prepared, tmp_path):
    """A private copy of the prepared data; `(data config, version folder)`."""
    data_dir, version = prepared
    shutil.copytree(data_dir, tmp_path / "data")
    config = pipeline.default_data_config()
    config.data_dir = str(tmp_path / "data")
    config.image_size = SIZE
    config.shuffle_buffer = 4
    return config, str(tmp_path / "data" / os.path.relpath(version, data_dir))


def _shard(version, split="train"):
    names = [n for n in os.listdir(version) if f"-{split}.tfrecord-" in n]
    assert len(names) == 1
    return os.path.join(version, names[0])


def _record_starts(path):
    """Byte offsets of the records of a TFRecord file, from its length headers.

    TFRecord framing: uint64 little-endian length, uint32 CRC of it, the
    payload, uint32 CRC of the payload.
    """
    starts, pos, size = [], 0, os.path.getsize(path)
    with open(path, "rb") as f:
        while pos < size:
            f.seek(pos)
            (length,) = struct.unpack("<Q", f.read(8))
            starts.append(pos)
            pos += 8 + 4 + length + 4
    assert pos == size
    return starts


def test_intact_copy_passes_the_start_up_check(prepared, tmp_path):
    config, _ = _copy(prepared, tmp_path)
    info = pipeline.dataset_info(config)
    assert (info.num_train, info.num_test) == (len(TRAIN_LENGTHS), len(TEST_LENGTHS))


def test_missing_shard_is_named_at_start_up(prepared, tmp_path):
    config, version = _copy(prepared, tmp_path)
    shard = _shard(version, "test")
    os.remove(shard)
    with pytest.raises(prepare_lib.DamagedDataError) as e:
        pipeline.dataset_info(config)
    assert str(e.value).startswith(f"{shard}: shard missing from the prepared data (1 test "
                                   "shard(s) recorded); prepare that fold again")
    assert "\n" not in str(e.value)


def test_truncated_shard_is_named_at_start_up(prepared, tmp_path):
    config, version = _copy(prepared, tmp_path)
    shard = _shard(version)
    size = os.path.getsize(shard)
    with open(shard, "r+b") as f:
        f.truncate(size - 1000)
    with pytest.raises(prepare_lib.DamagedDataError) as e:
        pipeline.dataset_info(config)
    assert str(e.value).startswith(
            f"{shard}: {size - 1000} bytes, but prepare wrote {size} ({len(TRAIN_LENGTHS)} "
            "records); the copy is incomplete or damaged; prepare that fold again")


def _flip_middle(shard):
    """Flips 64 bytes in the middle of `shard`; returns the start of their record."""
    starts = _record_starts(shard)
    middle = os.path.getsize(shard) // 2
    with open(shard, "r+b") as f:
        f.seek(middle)
        data = bytes(b ^ 0xFF for b in f.read(64))
        f.seek(middle)
        f.write(data)
    return max(s for s in starts if s <= middle)


def test_flipped_bytes_name_the_shard_and_offset_and_keep_the_checkpoints(prepared, tmp_path):
    config, version = _copy(prepared, tmp_path)
    cfg = fakes.micro_config(**{"num_epochs": 1, "checkpoint_every_steps": 1,
                                "keep_checkpoints": 5, "eval_batch_size": 8})
    cfg.data = config
    model = fakes.MicroModel(num_classes=7, num_frames=16, image_size=SIZE)
    workdir = tmp_path / "run"
    first = train.train_and_evaluate(cfg, str(workdir), model=model)
    assert first["steps"] == 2                       # 16 clips / batch 8
    saved = {p: os.path.getmtime(workdir / "checkpoints" / p)
             for p in os.listdir(workdir / "checkpoints")}

    shard = _shard(version)
    offset = _flip_middle(shard)
    pipeline.dataset_info(config)                    # same sizes: not caught at start-up
    cfg.num_epochs = 2                               # resume into epoch 2
    with pytest.raises(prepare_lib.DamagedDataError) as e:
        train.train_and_evaluate(cfg, str(workdir), model=model)
    assert str(e.value) == (
            f"{shard}: corrupted record at byte offset {offset} (checksum or length check "
            f"failed); prepare that fold again (remove {version} and rerun `audfer-jax "
            "prepare`, or let `audfer-jax train` prepare it) or copy it again")
    assert {p: os.path.getmtime(workdir / "checkpoints" / p)
            for p in os.listdir(workdir / "checkpoints")} == saved
    assert np.isfinite(first["last"]["loss"])
