"""TFDS builders: stored features, re-encoding, resizing, reading back."""

from __future__ import annotations

import os

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
tfds = pytest.importorskip("tensorflow_datasets")

import audfer_jax.data.readers as readers_pkg  # noqa: E402
from audfer_jax.data import prepare as prepare_lib  # noqa: E402
from audfer_jax.data.tfds import builders, common  # noqa: E402

import clip_fixtures  # noqa: E402


def _read_all(path, split):
    builder = tfds.builder_from_directory(path)
    ds = builder.as_dataset(split=split, shuffle_files=False,
                            decoders={"frames": tfds.decode.SkipDecoding()})
    return {ex["key"].decode(): ex for ex in tfds.as_numpy(ds)}


def test_config_names():
    assert common.config_name(1) == "fold1-default"
    assert common.config_name(3, "16f", "/x/OpenFace/", 112) == "fold3-16f-au_OpenFace-112px"
    assert common.config_name(0, "/data/frames_crop_align_224") == "fold0-frames_crop_align_224"
    a = common.config_name(1, reader_options={"label_type": "compound"})
    b = common.config_name(1, reader_options={"label_type": "single"})
    assert a != b and a.startswith("fold1-default-opt")
    assert set(builders.BUILDERS) == {"dfew", "ferv39k", "mafw", "demo"}
    for cls in builders.BUILDERS.values():
        assert "manual_dir" in cls.MANUAL_DOWNLOAD_INSTRUCTIONS or cls.MANUAL_DOWNLOAD_INSTRUCTIONS


def test_builder_stores_bytes_and_au(tmp_path, monkeypatch):
    raw = str(tmp_path / "raw")
    train = clip_fixtures.make_clips(raw, [5, 9, 12], "train")
    test = clip_fixtures.make_clips(raw, [7], "test", start=3)
    monkeypatch.setattr(readers_pkg, "read_split",
                        clip_fixtures.fake_reader({"train": train, "test": test}), raising=False)
    res = prepare_lib.prepare("dfew", raw, str(tmp_path / "data"), 2, log=lambda s: None)
    path = res[0].path
    assert path.endswith(os.path.join("dfew", "fold2-default", "1.0.0"))
    info = tfds.builder_from_directory(path).info
    assert info.splits["train"].num_examples == 3 and info.splits["test"].num_examples == 1
    assert info.features["label"].names[0] == "happy"
    got = _read_all(path, "train")
    for i, clip in enumerate(train):
        ex = got[clip.key]
        assert ex["num_frames"] == len(clip.frames) and ex["label"] == clip.label
        assert ex["index"] == i
        assert ex["origin"].decode() == clip.origin
        # Frames stored as the source file bytes, in order (no re-encoding).
        for stored, frame in zip(ex["frames"], clip.frames):
            with open(frame, "rb") as f:
                assert stored == f.read()
        np.testing.assert_array_equal(ex["au_frames"], clip.au_frames)
        np.testing.assert_array_equal(ex["au_valid"], clip.au_valid)
        valid = clip.au_valid
        expected = (2 * clip.au_frames[valid].sum(0) >= valid.sum()).astype(np.float32)
        np.testing.assert_array_equal(ex["au_target_all"], expected)
        assert ex["has_au_all"] == 1.0
        assert ex["multi_hot"].tolist() == np.eye(7, dtype=np.uint8)[clip.label].tolist()
    # The sidecar index agrees with the records.
    index = prepare_lib.load_index(path, "train")
    assert sorted(index["key"].tolist()) == sorted(got)
    for key, label, target in zip(index["key"], index["label"], index["au_target_all"]):
        assert label == got[key]["label"]
        np.testing.assert_array_equal(target, got[key]["au_target_all"])


def test_png_reencoded_and_prepare_size(tmp_path, monkeypatch):
    raw = str(tmp_path / "raw")
    train = clip_fixtures.make_clips(raw, [4, 6], "train", ext="png", size=40)
    test = clip_fixtures.make_clips(raw, [5], "test", start=2, ext="png", size=40)
    for c in train + test:
        c.au_frames = c.au_valid = None
    monkeypatch.setattr(readers_pkg, "read_split",
                        clip_fixtures.fake_reader({"train": train, "test": test}), raising=False)
    res = prepare_lib.prepare("mafw", raw, str(tmp_path / "data"), 1, prepare_size=20,
                              log=lambda s: None)
    assert "20px" in res[0].path
    ex = _read_all(res[0].path, "train")[train[1].key]
    frames = [tf.io.decode_jpeg(b).numpy() for b in ex["frames"]]
    assert all(b[:3] == b"\xff\xd8\xff" for b in ex["frames"])
    assert frames[0].shape == (20, 20, 3)
    levels = clip_fixtures.level_to_index([f.mean() for f in frames])
    assert levels.tolist() == list(range(6))
    # No AU labels: all invalid, vote masked out.
    assert not ex["au_valid"].any() and ex["has_au_all"] == 0.0
    assert ex["multi_hot"].shape == (11,)


def test_demo_through_real_readers(tmp_path):
    demo = pytest.importorskip("audfer_jax.data.demo")
    if not hasattr(readers_pkg, "read_split"):
        pytest.skip("readers not available")
    raw = str(tmp_path / "raw")
    summary = demo.write_demo_dataset(raw, num_clips=35, seed=1, image_size=32, num_workers=1)
    res = prepare_lib.prepare("demo", raw, str(tmp_path / "data"), 1, log=lambda s: None)
    info = tfds.builder_from_directory(res[0].path).info
    n_test = summary["test_clips_per_fold"][0]
    assert info.splits["test"].num_examples == n_test
    assert info.splits["train"].num_examples == 35 - n_test
    assert int(res[0].class_counts["train"].sum() + res[0].class_counts["test"].sum()) == 35
    got = _read_all(res[0].path, "test")
    ex = next(iter(got.values()))
    assert tf.io.decode_jpeg(ex["frames"][0]).shape == (32, 32, 3)
    assert ex["au_frames"].shape == (ex["num_frames"], 18)
    # The demo's OpenFace CSVs give per-frame AUs for most clips.
    assert np.mean([e["has_au_all"] for e in got.values()]) > 0.5
    # And the input pipeline reads it.
    from audfer_jax.data import pipeline
    config = pipeline.default_data_config()
    config.update(name="demo", data_dir=str(tmp_path / "data"), image_size=32)
    assert pipeline.ensure_prepared(config) == res[0].path
    # `ensure_prepared` writes the demo set (config.data.raw_dir unset) only when
    # the fold must be prepared from it, or, for the trainer
    # (`keep_demo_release`), whenever it is missing; with the given set options.
    release = tmp_path / "data" / "demo_raw" / "DFEW"
    assert not release.exists()
    assert pipeline.ensure_prepared(config, demo_clips=35, demo_seed=1, demo_image_size=32,
                                    keep_demo_release=True) == res[0].path
    frame = os.path.join("Clip", "clip_224x224", "00001", "1.jpg")
    with open(release / frame, "rb") as f, open(os.path.join(raw, "DFEW", frame), "rb") as g:
        assert f.read() == g.read()
    assert pipeline.with_demo_raw_dir(config).raw_dir == str(release.parent)
    batches, steps = pipeline.create_eval_dataset(config, global_batch_size=4,
                                                  process_index=0, process_count=1)
    batches = list(batches)
    assert len(batches) == steps == -(-n_test // 4)
    assert batches[0]["clips"].shape == (4, 16, 32, 32, 3)
    assert sum(float(b["mask"].sum()) for b in batches) == n_test
    labels = sorted(int(l) for b in batches for l, m in zip(b["labels"], b["mask"]) if m)
    assert labels == sorted(int(e["label"]) for e in got.values())
