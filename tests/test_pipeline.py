"""tf.data pipeline: batch contract, sampled frames, sharding, eval padding,
exact resume, augmentations.

The fixture frames are uniform grey images whose level encodes the frame
number, so crops, flips and resizes keep it and a decoded batch reveals which
frames were sampled.
"""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
pytest.importorskip("tensorflow_datasets")

import audfer_jax.data.readers as readers_pkg  # noqa: E402
from audfer_jax.data import augment, pipeline, sampling  # noqa: E402
from audfer_jax.data import prepare as prepare_lib  # noqa: E402

import clip_fixtures  # noqa: E402

TRAIN_LENGTHS = [5, 8, 16, 20, 30, 12, 9, 11, 17, 25, 14, 10]
TEST_LENGTHS = [6, 19, 8, 26, 13]
SIZE = 24


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipe")
    raw = str(root / "raw")
    train = clip_fixtures.make_clips(raw, TRAIN_LENGTHS, "train", size=SIZE)
    test = clip_fixtures.make_clips(raw, TEST_LENGTHS, "test", start=len(TRAIN_LENGTHS),
                                    size=SIZE)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(readers_pkg, "read_split",
                   clip_fixtures.fake_reader({"train": train, "test": test}), raising=False)
        prepare_lib.prepare("dfew", raw, str(root / "data"), 1, log=lambda s: None)
    config = pipeline.default_data_config()
    config.data_dir = str(root / "data")
    config.image_size = SIZE
    config.shuffle_buffer = 6
    # index (reader order) -> clip
    return config, {i: c for i, c in enumerate(train)}, {i: c for i, c in enumerate(test)}


def _cfg(config, **kw):
    c = config.copy_and_resolve_references()
    for k, v in kw.items():
        c[k] = v
    return c


def _indices(clips):
    """`[..., T, H, W, 3]` grey clips -> frame indices `[..., T]`."""
    return clip_fixtures.level_to_index(clips.astype(np.float64).mean(axis=(-3, -2, -1)))


def _vote(clip, idx):
    frames = [i for i in sorted(set(idx.tolist())) if clip.au_valid[i]]
    if not frames:
        return np.zeros(18, np.float32), 0.0
    return (2 * clip.au_frames[frames].sum(0) >= len(frames)).astype(np.float32), 1.0


def _train(config, **kw):
    kw.setdefault("process_index", 0)
    kw.setdefault("process_count", 1)
    return list(pipeline.create_train_dataset(config, **kw))


def test_default_config_has_contract_fields():
    c = pipeline.default_data_config()
    for name in ("name", "data_dir", "raw_dir", "au_source", "fold", "frame_set",
                 "prepare_size", "num_frames", "image_size", "sampling", "num_segments",
                 "frames_per_segment", "sampling_rate", "jitter", "pad",
                 "reference_quirks", "augment", "eval_temporal_views",
                 "eval_spatial_views", "au_vote", "shuffle_buffer", "cache"):
        assert name in c, name
    assert (c.num_frames, c.image_size, c.num_segments, c.frames_per_segment) == (16, 112, 8, 2)


def test_info_and_au_statistics(prepared):
    config, train, test = prepared
    info = pipeline.dataset_info(config)
    assert (info.num_train, info.num_test) == (len(train), len(test))
    assert info.class_names[0] == "happy"
    np.testing.assert_array_equal(info.train_class_counts,
                                  np.bincount([c.label for c in train.values()], minlength=7))
    targets, mask, labels = pipeline.train_au_statistics(config)
    assert targets.shape == (len(train), 18) and targets.dtype == np.float32
    index = prepare_lib.load_index(pipeline.prepared_path(config), "train")
    for row, i in enumerate(index["index"]):
        clip = train[int(i)]
        ref, has = _vote(clip, np.arange(clip.num_frames))
        np.testing.assert_array_equal(targets[row], ref)
        assert mask[row] == has and labels[row] == clip.label


def test_train_batch_contract_and_sampled_frames(prepared):
    config, train, _ = prepared
    batches = _train(config, global_batch_size=4, seed=3, epoch=0)
    assert len(batches) == len(train) // 4
    b = batches[0]
    assert b["clips"].shape == (4, 16, SIZE, SIZE, 3) and b["clips"].dtype == np.uint8
    assert b["labels"].dtype == np.int32 and b["index"].dtype == np.int32
    assert b["au_targets"].shape == (4, 18) and b["au_targets"].dtype == np.float32
    assert b["mask"].tolist() == [1.0] * 4
    for b in batches:
        for j in range(4):
            clip = train[int(b["index"][j])]
            n = clip.num_frames
            idx = _indices(b["clips"][j])
            assert b["labels"][j] == clip.label
            assert idx.min() >= 0 and idx.max() <= n - 1
            starts = idx[0::2]
            # Former-DFER 8 x 2: pairs of consecutive frames (clamped), starts sorted.
            np.testing.assert_array_equal(idx[1::2], np.minimum(starts + 1, n - 1))
            if n > 8:
                assert np.all(np.diff(starts) >= 0)
                a = (n - 1) // 8
                if a > 0:
                    assert all(a * i <= s < a * (i + 1) for i, s in enumerate(starts))
            else:   # edge-padded range
                np.testing.assert_array_equal(
                    idx, sampling.eval_indices(n, sampling.SamplingSpec())[0])
            ref, has = _vote(clip, idx)
            np.testing.assert_array_equal(b["au_targets"][j], ref)
            assert b["au_mask"][j] == has


def test_au_vote_all(prepared):
    config, train, _ = prepared
    b = _train(_cfg(config, au_vote="all", augment="none"), global_batch_size=6, seed=0,
               epoch=0)[0]
    for j in range(6):
        clip = train[int(b["index"][j])]
        ref, _ = _vote(clip, np.arange(clip.num_frames))
        np.testing.assert_array_equal(b["au_targets"][j], ref)


def test_exact_resume_and_epoch_dependence(prepared):
    config, _, _ = prepared
    full = _train(config, global_batch_size=2, seed=7, epoch=4)
    resumed = _train(config, global_batch_size=2, seed=7, epoch=4, start_batch=3)
    assert len(resumed) == len(full) - 3
    for a, b in zip(full[3:], resumed):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    other = _train(config, global_batch_size=2, seed=7, epoch=5)
    order = np.concatenate([b["index"] for b in full])
    assert sorted(order.tolist()) == list(range(len(order)))
    assert not np.array_equal(order, np.concatenate([b["index"] for b in other]))


def test_cache_keeps_order_and_resume(prepared):
    config, train, _ = prepared
    cfg = _cfg(config, cache=True, augment="none")
    full = _train(cfg, global_batch_size=3, seed=2, epoch=1)
    resumed = _train(cfg, global_batch_size=3, seed=2, epoch=1, start_batch=1)
    assert sorted(np.concatenate([b["index"] for b in full]).tolist()) == sorted(train)
    for a, b in zip(full[1:], resumed):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_train_shards_disjoint_and_complete(prepared):
    config, train, _ = prepared
    seen = []
    for p in range(3):
        batches = _train(config, global_batch_size=3, seed=1, epoch=0, process_index=p,
                         process_count=3)
        seen.append(np.concatenate([b["index"] for b in batches]).tolist())
    flat = [i for s in seen for i in s]
    assert len(flat) == len(set(flat)) == len(train)
    assert sorted(flat) == sorted(train)
    # Uneven shards (12 clips on 5 processes: 2, 2, 2, 3, 3): every process
    # still runs 12 // 5 = 2 steps, on disjoint clips.
    seen = []
    for p in range(5):
        batches = _train(config, global_batch_size=5, seed=1, epoch=0, process_index=p,
                         process_count=5)
        assert len(batches) == 2
        seen += np.concatenate([b["index"] for b in batches]).tolist()
    assert len(seen) == len(set(seen)) == 10
    with pytest.raises(ValueError, match="divisible"):
        pipeline.create_train_dataset(config, global_batch_size=4, seed=0, epoch=0,
                                      process_index=0, process_count=3)


def test_eval_indices_views_and_padding(prepared):
    config, _, test = prepared
    spec = sampling.SamplingSpec("uniform", 16)
    cfg = _cfg(config, sampling="uniform", eval_temporal_views=2)
    ds, steps = pipeline.create_eval_dataset(cfg, global_batch_size=4, process_index=0,
                                             process_count=1)
    batches = list(ds)
    assert steps == len(batches) == 2
    b = batches[0]
    assert b["clips"].shape == (4, 2, 16, SIZE, SIZE, 3)
    mask = np.concatenate([b["mask"] for b in batches])
    assert mask.sum() == len(test) and mask.tolist() == [1] * 5 + [0] * 3
    for b in batches:
        for j in range(4):
            if not b["mask"][j]:
                assert b["index"][j] == -1 and not b["clips"][j].any()
                continue
            clip = test[int(b["index"][j])]
            np.testing.assert_array_equal(_indices(b["clips"][j]),
                                          sampling.eval_indices(clip.num_frames, spec, 2))
            ref, _ = _vote(clip, np.arange(clip.num_frames))
            np.testing.assert_array_equal(b["au_targets"][j], ref)


def test_eval_same_steps_on_every_process(prepared):
    config, test_unused, test = prepared
    counts, steps, seen = [], [], []
    for p in range(2):
        ds, n = pipeline.create_eval_dataset(config, global_batch_size=4, process_index=p,
                                             process_count=2)
        batches = list(ds)
        assert len(batches) == n and batches[0]["clips"].shape == (2, 16, SIZE, SIZE, 3)
        steps.append(n)
        counts.append(sum(float(b["mask"].sum()) for b in batches))
        seen += [int(i) for b in batches for i, m in zip(b["index"], b["mask"]) if m]
    assert steps[0] == steps[1] == 2
    assert sum(counts) == len(test) and sorted(seen) == sorted(test)


def test_unprepared_fold_is_a_clear_error(prepared):
    config, _, _ = prepared
    with pytest.raises(FileNotFoundError, match="audfer-jax prepare"):
        pipeline.dataset_info(_cfg(config, fold=3))
    with pytest.raises(ValueError, match="raw_dir is empty"):
        pipeline.ensure_prepared(_cfg(config, fold=3))
    assert pipeline.ensure_prepared(config) == pipeline.prepared_path(config)


def test_recipes_m3dfel_and_mae_dfer(prepared):
    config, _, _ = prepared
    for recipe, size in (("m3dfel", SIZE), ("mae_dfer", 32)):
        b = _train(_cfg(config, augment=recipe, image_size=size,
                        sampling="fixed_rate" if recipe == "mae_dfer" else "uniform"),
                   global_batch_size=4, seed=0, epoch=0)[0]
        assert b["clips"].shape == (4, 16, size, size, 3) and b["clips"].dtype == np.uint8


# --- augmentation primitives --------------------------------------------------

def test_crop_box_within_bounds_and_fallback():
    for s in range(16):
        for h, w in ((24, 24), (30, 17), (5, 60)):
            box = augment.crop_box(tf.constant([s, 1], tf.int64), h, w,
                                   log_ratio=bool(s % 2), swap=not s % 2).numpy()
            y, x, ch, cw = box
            assert 0 <= y and 0 <= x and ch >= 1 and cw >= 1
            assert y + ch <= h and x + cw <= w
    # Impossible scale -> torchvision fallback: centre crop, aspect clamped.
    box = augment.crop_box(tf.constant([0, 0], tf.int64), 10, 40, scale=(2.0, 3.0)).numpy()
    # aspect 40/10 > 4/3: h = 10, w = round(10 * 4/3) = 13, centred at x = 13.
    assert box.tolist() == [0, 13, 10, 13]


def test_color_jitter_zero_strength_is_identity():
    x = tf.random.stateless_uniform([2, 8, 8, 3], [1, 2], 0, 255)
    y = augment.color_jitter(x, tf.constant([3, 4], tf.int64), brightness=0.0,
                             contrast=0.0, saturation=0.0, hue=0.0)
    np.testing.assert_allclose(y.numpy(), x.numpy(), atol=0.05)


def test_random_erasing_one_box_through_all_frames():
    x = tf.fill([3, 20, 20, 3], tf.constant(7, tf.uint8))
    y = augment.random_erasing(x, tf.constant([5, 6], tf.int64), prob=1.0).numpy()
    changed = (y != 7).any(-1)
    assert changed.any()
    rows, cols = np.nonzero(changed.any(0))
    # The erased area is one rectangle, at the same place in every frame.
    box = np.zeros((20, 20), bool)
    box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
    for t in range(3):
        assert not changed[t][~box].any() and changed[t][box].mean() > 0.9
    assert (augment.random_erasing(x, tf.constant([5, 6], tf.int64), prob=0.0).numpy()
            == 7).all()


def test_rand_augment_deterministic_and_same_for_all_frames():
    frame = tf.random.stateless_uniform([1, 16, 16, 3], [0, 9], 0, 255)
    clip = tf.tile(frame, [3, 1, 1, 1])
    for s in range(6):
        seed = tf.constant([s, 11], tf.int64)
        a = augment.rand_augment(clip, seed).numpy()
        b = augment.rand_augment(clip, seed).numpy()
        np.testing.assert_array_equal(a, b)
        assert a.min() >= 0 and a.max() <= 255
        # Identical frames stay identical: one op chain for the whole clip.
        np.testing.assert_allclose(a[0], a[2], atol=1e-3)


@pytest.mark.parametrize("fast", [False, True])
def test_resize_shrink_is_antialiased(fast):
    # A 1-pixel checkerboard halved must average to grey (no aliasing).
    board = (np.indices((32, 32)).sum(0) % 2 * 255).astype(np.uint8)
    x = tf.constant(np.repeat(board[None, :, :, None], 3, -1))
    y = augment.resize(x, 16, fast_shrink=fast).numpy()
    np.testing.assert_allclose(y[:, 2:-2, 2:-2], 127.5, atol=1.0)
    same = augment.resize(x, 32).numpy()
    np.testing.assert_array_equal(same, x.numpy().astype(np.float32))


def test_augment_device_host_does_decode_sample_resize_only(prepared):
    """With augment_device the host hands over the 'none' recipe's frames at the
    crop source size (here image_size: no prepare_size); the device function
    augments them."""
    import jax  # pylint: disable=g-import-not-at-top
    from audfer_jax.data import augment_device  # pylint: disable=g-import-not-at-top
    config, _, _ = prepared
    for recipe in ("former_dfer", "mae_dfer"):
        c = _cfg(config, augment=recipe, augment_device=True, image_size=16)
        host = _train(c, global_batch_size=4, seed=1, epoch=0)
        plain = _train(_cfg(c, augment="none"), global_batch_size=4, seed=1, epoch=0)
        for a, b in zip(host, plain):
            np.testing.assert_array_equal(a["clips"], b["clips"])
            np.testing.assert_array_equal(a["index"], b["index"])
        out = augment_device.make_device_augment(c)(jax.random.PRNGKey(0), host[0]["clips"])
        assert out.shape == (4, 16, 16, 16, 3) and out.dtype == np.uint8
        ref = _train(_cfg(c, augment_device=False), global_batch_size=4, seed=1, epoch=0)
        assert ref[0]["clips"].shape == (4, 16, 16, 16, 3)
