"""tf.data input pipeline: prepared TFRecords -> batches of uint8 clips.

Reads the TFDS datasets written by `audfer-jax prepare` (located by
`prepare.version_dir` from the data config, opened with
`tfds.builder_from_directory`, so no builder code is needed to read), shards
the records per process, samples frames (`sampling_tf`), decodes *only the
sampled frames* (JPEG bytes are stored; a crop window is decoded with
`decode_and_crop_jpeg` where possible), augments (`augment`; with
`augment_device` the train clips come out unaugmented at the crop source size
`augment_device.host_frame_size` and the train step augments them), votes the
AU target, and batches. Clips stay uint8 until the device
(../shared/spec/engineering.md section 5).

Batch contract (layout.md): ``clips [B, T, H, W, 3] uint8`` (``[B, V, T, H, W,
3]`` for multi-view evaluation), ``labels [B] int32``, ``au_targets [B, 18]
float32``, ``au_mask [B] float32``, ``mask [B] float32``, ``index [B] int32``.

Exact resume: the epoch's order is a function of (seed, epoch) only (seeded file
order and seeded shuffle buffer over a fixed record order), every random draw
of a clip is a stateless op keyed by (seed, epoch, clip index), and
`start_batch` skips records before they are decoded. A run restarted at
(epoch, start_batch) therefore sees bit-identical batches (same TF version).

Shuffling: TFDS stores the records in an order hashed from the clip keys, so
each process's contiguous shard `[n*i/P, n*(i+1)/P)` is a random subset; within
it the order comes from a seeded file order plus a `shuffle_buffer`-clip
buffer (a buffer shuffle, not a full permutation, to bound host memory).

`index` is the clip's position in the reader's list at prepare time: a stable
clip identity across processes and epochs (gaps where clips were skipped).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Iterable, Optional

import numpy as np

from audfer_jax import classes
from audfer_jax import paths
from audfer_jax.au import NUM_AUS
from audfer_jax.data import config as data_config_lib
from audfer_jax.data import prepare as prepare_lib
from audfer_jax.data import sampling

AUGMENTS = data_config_lib.AUGMENTS
DataConfig = data_config_lib.DataConfig
default_data_config = data_config_lib.default_data_config


@dataclasses.dataclass
class DataInfo:
    """Sizes and classes of a prepared fold.

    Attributes:
        num_train, num_test: clips per split (all processes together).
        class_names: canonical class names, label order.
        train_class_counts: `[C] int64` training clips per class.
    """
    num_train: int
    num_test: int
    class_names: tuple[str, ...]
    train_class_counts: np.ndarray


def _typed(data_config) -> DataConfig:
    """The validated `DataConfig` of a `DataConfig`, ConfigDict or mapping."""
    return DataConfig.from_config(data_config)


def prepared_path(data_config) -> str:
    """Version folder of the prepared fold the config names."""
    dc = _typed(data_config)
    if not dc.data_dir:
        raise ValueError("config.data.data_dir is empty: set it to the root of "
                         "the prepared data (`audfer-jax prepare --data_dir`)")
    return prepare_lib.version_dir(dc.data_dir, dc.name, dc.fold, dc.frame_set, dc.au_source,
                                   dc.prepare_size)


def with_demo_raw_dir(data_config) -> DataConfig:
    """The typed config, with `raw_dir` set to the demo set's folder when it is needed.

    A config that names the demo set (`name == 'demo'`) without a `raw_dir`
    reads the release from ``<data_dir>/demo_raw`` (a local folder for a
    ``gs://`` data_dir: `demo.raw_dir_for`); any other config is returned
    as it is (typed).
    """
    dc = _typed(data_config)
    if dc.name != "demo" or dc.raw_dir:
        return dc
    from audfer_jax.data import demo  # pylint: disable=g-import-not-at-top
    return dc.replace(raw_dir=demo.raw_dir_for(dc.data_dir))


def ensure_prepared(data_config, log=print, demo_clips: int = 2000,
                    progress_bar: bool = True, *, demo_seed: int = 0,
                    demo_image_size: int = 112, keep_demo_release: bool = False) -> str:
    """Prepares the configured fold if needed; returns its path.

    The one place that writes the demo set for a config: for `name == 'demo'`
    with no `raw_dir`, the fold is prepared from `with_demo_raw_dir`'s folder,
    where `audfer_jax.data.demo.write_demo_dataset` first writes the set
    (`demo_clips` clips, `demo_seed`, frames of `demo_image_size` pixels) when
    its `DFEW/` folder is missing. Call it from one process only (process 0)
    before building datasets.

    Args:
        data_config: the data config (`DataConfig`, ConfigDict or mapping).
        log: where progress lines go.
        demo_clips, demo_seed, demo_image_size: the demo set to write.
        progress_bar: TFDS's progress bars while writing records.
        keep_demo_release: write a missing demo set even when the fold is
            already prepared (the trainer: a demo run's closing lines point
            `predict` at one of its test clips); otherwise it is written only
            when the fold must be prepared from it.

    Raises:
        ValueError: the fold is not prepared and there is no `raw_dir` to
            prepare it from; bad data (`prepare`).
    """
    dc = _typed(data_config)
    path = prepared_path(dc)
    prepared = prepare_lib.is_prepared(path)
    raw = dc.raw_dir
    if not raw and dc.name == "demo":
        raw = with_demo_raw_dir(dc).raw_dir
        if (keep_demo_release or not prepared) and not paths.isdir(paths.join(raw, "DFEW")):
            from audfer_jax.data import demo  # pylint: disable=g-import-not-at-top
            demo.write_demo_dataset(raw, int(demo_clips), int(demo_seed), int(demo_image_size))
    if prepared:
        return path
    if not raw:
        raise ValueError(f"{path} is not prepared and config.data.raw_dir is empty; "
                         f"run `audfer-jax prepare --dataset {dc.name} ...`")
    prepare_lib.prepare(dc.name, raw, dc.data_dir, dc.fold, frame_set=dc.frame_set,
                        au_source=dc.au_source, prepare_size=dc.prepare_size, log=log,
                        progress_bar=progress_bar)
    return path


def _require_prepared(data_config) -> str:
    data_config = _typed(data_config)
    path = prepared_path(data_config)
    if not prepare_lib.is_prepared(path):
        raise FileNotFoundError(
            f"no prepared data at {path}; run `audfer-jax prepare --dataset "
            f"{data_config.name} --raw_dir ... --data_dir {data_config.data_dir} "
            f"--fold {data_config.fold}` (or pipeline.ensure_prepared)")
    return path


def make_device_augment(data_config):
    """The train step's device-side clip augmentation of the config, or None.

    See `augment_device.make_device_augment`: with `augment_device` on and a
    random recipe, train batches leave this pipeline unaugmented at
    `augment_device.host_frame_size` and this function finishes them on the
    device.
    """
    from audfer_jax.data import augment_device  # pylint: disable=g-import-not-at-top
    return augment_device.make_device_augment(_typed(data_config))


_VERIFIED: set[str] = set()


def dataset_info(data_config) -> DataInfo:
    """Split sizes, class names and training class counts, without decoding.

    Also checks, once per process and fold, that the prepared files are all
    there with the sizes and counts `prepare` recorded
    (`prepare.verify_prepared`: file sizes only, no record read).

    Raises:
        FileNotFoundError: the fold is not prepared.
        prepare.DamagedDataError: a shard is missing or cut, or the index
            disagrees with the recorded counts (one line naming the file).
    """
    path = _require_prepared(data_config)
    if path not in _VERIFIED:
        prepare_lib.verify_prepared(path)
        _VERIFIED.add(path)
    train = prepare_lib.load_index(path, "train")
    test = prepare_lib.load_index(path, "test")
    names = classes.class_names(_typed(data_config).name)
    counts = np.bincount(train["label"].astype(np.int64), minlength=len(names))
    return DataInfo(num_train=int(train["label"].size), num_test=int(test["label"].size),
                    class_names=tuple(names), train_class_counts=counts)


def train_au_statistics(data_config) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All-frame AU votes of every training clip, read without decoding.

    Returns:
        (au_targets `[N, 18] float32`, au_mask `[N] float32`, labels `[N] int32`)
        for the prior / pos_weight estimators of `audfer_jax.au`.
    """
    index = prepare_lib.load_index(_require_prepared(data_config), "train")
    return (index["au_target_all"].astype(np.float32).reshape(-1, NUM_AUS),
            index["has_au_all"].astype(np.float32),
            index["label"].astype(np.int32))


def shard_range(n: int, process_index: int, process_count: int) -> tuple[int, int]:
    """[start, end) of a process's records: disjoint, complete, sizes differ <= 1."""
    return n * process_index // process_count, n * (process_index + 1) // process_count


def _process(process_index, process_count) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax  # pylint: disable=g-import-not-at-top
        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} outside 0..{process_count - 1}")
    return int(process_index), int(process_count)


def _local_batch(global_batch_size: int, process_count: int) -> int:
    if global_batch_size % process_count:
        raise ValueError(f"global batch {global_batch_size} is not divisible by "
                         f"the process count {process_count}")
    return global_batch_size // process_count


def _tf():
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    # TF must never take the accelerator from JAX (engineering.md section 5).
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        # Already initialised: only possible if GPUs were hidden or absent
        # when TF first started (tensorflow-cpu has none).
        if tf.config.get_visible_devices("GPU"):
            raise
    return tf


@functools.lru_cache(maxsize=16)
def _builder(path: str):
    """The read-only TFDS builder of a prepared folder (cached: ~0.3 s each)."""
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    return tfds.builder_from_directory(path)


@functools.lru_cache(maxsize=1)
def _skip_decoding() -> type:
    """`tfds.decode.SkipDecoding` for a sequence feature, without its deprecated path.

    TFDS maps the identity over the frames with `tf.map_fn(dtype=decoder.dtype)`,
    which reads `TensorInfo.dtype`: two deprecation warnings per dataset read
    (twice a fold in a sweep). Skipping the decoding of a sequence is the
    identity on the sequence.
    """
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    class SkipSequenceDecoding(tfds.decode.SkipDecoding):
        def decode_batch_example(self, serialized_example):
            return serialized_example

    return SkipSequenceDecoding


def _read(data_config, split: str, start: int, end: int, *, shuffle_seed=None):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    builder = _builder(_require_prepared(data_config))
    read_config = tfds.ReadConfig(try_autocache=False, shuffle_seed=shuffle_seed,
                                  add_tfds_id=False)
    return builder.as_dataset(
        split=f"{split}[{start}:{end}]", shuffle_files=shuffle_seed is not None,
        read_config=read_config, decoders={"frames": _skip_decoding()()})


def _num_examples(data_config, split: str) -> int:
    builder = _builder(_require_prepared(data_config))
    return int(builder.info.splits[split].num_examples)


class _Checked:
    """An iterable of NumPy batches whose read errors name the damaged shard.

    A corrupted or cut record surfaces as `tf.errors.DataLossError` from the
    iterator, a vanished shard as `NotFoundError`; both become one
    `prepare.DamagedDataError` line (`prepare.damaged_record_error`).
    """

    def __init__(self, batches, path: str, split: str):
        self._batches, self._path, self._split = batches, path, split

    def __iter__(self):
        tf = _tf()
        it = iter(self._batches)
        while True:
            try:
                batch = next(it)
            except StopIteration:
                return
            except (tf.errors.DataLossError, tf.errors.NotFoundError) as e:
                raise prepare_lib.damaged_record_error(self._path, self._split, e) from None
            yield batch


def _finish(ds):
    tf = _tf()
    ds = ds.prefetch(2)
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_optimization.inject_prefetch = False
    # One thread per op: clips are processed in parallel by the map already,
    # and splitting small per-clip ops across threads cost ~20 % more CPU
    # per clip here (measured with `audfer-jax bench input`).
    options.threading.max_intra_op_parallelism = 1
    return ds.with_options(options)


# ---------------------------------------------------------------------------
# Per-clip processing (inside tf.data).
# ---------------------------------------------------------------------------

def _clip_seed(tf, seed: int, epoch: int, index):
    """`[2]` stateless seed of one clip: a function of (seed, epoch, index) only."""
    base = tf.constant([seed % (2 ** 31), epoch % (2 ** 31)], tf.int64)
    return tf.random.experimental.stateless_fold_in(base, tf.cast(index, tf.int64))


def _decode_all(tf, frames):
    return tf.map_fn(lambda b: tf.io.decode_jpeg(b, channels=3), frames,
                     fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))


def _train_frames(tf, frames, config, seeds):
    """`[U] string` JPEGs -> `[U, S, S, 3] uint8` augmented frames."""
    from audfer_jax.data import augment, augment_device  # pylint: disable=g-import-not-at-top
    size = int(config.image_size)
    kind = config.augment          # validated by DataConfig
    if kind == "none":
        return augment.to_uint8(augment.resize(_decode_all(tf, frames), size))
    if config.augment_device:
        # The device augments (augment_device.py): frames at the crop source
        # size, resized only when stored at another size.
        x = _decode_all(tf, frames)
        src = augment_device.host_frame_size(config)
        shape = tf.shape(x)
        return tf.cond((shape[1] == src) & (shape[2] == src), lambda: x,
                       lambda: augment.to_uint8(augment.resize(x, src)))
    if kind == "mae_dfer":
        x = tf.cast(_decode_all(tf, frames), tf.float32)
        x = augment.rand_augment(x, seeds[1])
        shape = tf.shape(x)
        box = augment.crop_box(seeds[2], shape[1], shape[2], log_ratio=True, swap=False)
        x = x[:, box[0]:box[0] + box[2], box[1]:box[1] + box[3], :]
        x = augment.maybe_flip(augment.resize(x, size, fast_shrink=True), seeds[3])
        return augment.random_erasing(augment.to_uint8(x), seeds[4])
    shape = tf.io.extract_jpeg_shape(frames[0])
    box = augment.crop_box(seeds[2], shape[0], shape[1], log_ratio=False, swap=True)
    x = tf.map_fn(lambda b: tf.io.decode_and_crop_jpeg(b, box, channels=3), frames,
                  fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))
    # Flipping before the resize gives the same pixels up to float rounding
    # (TF's bilinear and area resizes are mirror-symmetric; checked to 2e-3),
    # on uint8 frames: 4x fewer bytes than after the resize.
    x = augment.resize(augment.maybe_flip(x, seeds[3]), size, fast_shrink=True)
    if kind == "m3dfel":
        x = augment.color_jitter(x, seeds[1])
    return augment.to_uint8(x)


def _make_train_fn(data_config, seed: int, epoch: int):
    tf = _tf()
    from audfer_jax.data import augment_device, sampling_tf  # pylint: disable=g-import-not-at-top
    spec = sampling.spec_from_config(data_config)
    k = sampling.num_uniforms(spec)
    vote_sampled = data_config.au_vote == "sampled"
    # Output side: the model input, or the crop source when the device augments.
    size = int(data_config.image_size)
    if augment_device.uses_device_augment(data_config):
        size = augment_device.host_frame_size(data_config)

    # No Python control flow on tensors here, so AutoGraph has nothing to convert.
    @tf.autograph.experimental.do_not_convert
    def fn(ex):
        seeds = tf.random.experimental.stateless_split(_clip_seed(tf, seed, epoch, ex["index"]), 5)
        u = tf.random.stateless_uniform([k], seeds[0], dtype=tf.float64)
        idx = sampling_tf.train_indices(ex["num_frames"], spec, u)
        uniq, pos = tf.unique(idx)
        frames = _train_frames(tf, tf.gather(ex["frames"], uniq), data_config, seeds)
        clip = tf.gather(frames, pos)
        if vote_sampled:
            target, has = sampling_tf.au_vote(ex["au_frames"], ex["au_valid"], idx)
        else:
            target, has = ex["au_target_all"], ex["has_au_all"]
        return {
            "clips": tf.ensure_shape(clip, [spec.num_frames, size, size, 3]),
            "labels": tf.cast(ex["label"], tf.int32),
            "au_targets": tf.ensure_shape(tf.cast(target, tf.float32), [NUM_AUS]),
            "au_mask": tf.cast(has, tf.float32),
            "mask": tf.constant(1.0, tf.float32),
            "index": tf.cast(ex["index"], tf.int32),
        }
    return fn


def _num_views(data_config: DataConfig) -> tuple[int, int]:
    return data_config.eval_temporal_views, data_config.eval_spatial_views


def _spatial_views(tf, x, size: int, views: int):
    """`[F, H, W, 3]` -> `[views, F, S, S, 3] float32`.

    One view: resize to S x S (aspect not kept, as the references). Several:
    shorter side to S, then `views` S x S crops spread evenly along the longer
    side (they coincide on square frames, as MAE-DFER's 2 crops do).
    """
    from audfer_jax.data import augment  # pylint: disable=g-import-not-at-top
    if views == 1:
        return augment.resize(x, size)[None]
    shape = tf.shape(x)
    h, w = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    scale = size / tf.minimum(h, w)
    nh = tf.maximum(size, tf.cast(tf.round(h * scale), tf.int32))
    nw = tf.maximum(size, tf.cast(tf.round(w * scale), tf.int32))
    x = tf.image.resize(tf.cast(x, tf.float32), tf.stack([nh, nw]), antialias=True)
    out = []
    for v in range(views):
        y0 = ((nh - size) * v) // (views - 1)
        x0 = ((nw - size) * v) // (views - 1)
        out.append(x[:, y0:y0 + size, x0:x0 + size, :])
    return tf.stack(out)


def _make_eval_fn(data_config):
    tf = _tf()
    from audfer_jax.data import augment, sampling_tf  # pylint: disable=g-import-not-at-top
    spec = sampling.spec_from_config(data_config)
    vt, vs = _num_views(data_config)
    size = int(data_config.image_size)

    @tf.autograph.experimental.do_not_convert
    def fn(ex):
        idx = sampling_tf.eval_indices(ex["num_frames"], spec, vt)     # [Vt, T]
        uniq, pos = tf.unique(tf.reshape(idx, [-1]))
        frames = _decode_all(tf, tf.gather(ex["frames"], uniq))
        views = augment.to_uint8(_spatial_views(tf, frames, size, vs))  # [Vs, U, S, S, 3]
        clip = tf.gather(views, tf.reshape(pos, [vt, spec.num_frames]), axis=1)
        clip = tf.reshape(tf.transpose(clip, [1, 0, 2, 3, 4, 5]),
                          [vt * vs, spec.num_frames, size, size, 3])
        if vt * vs == 1:
            clip = clip[0]
        return {
            "clips": clip,
            "labels": tf.cast(ex["label"], tf.int32),
            "au_targets": tf.ensure_shape(tf.cast(ex["au_target_all"], tf.float32), [NUM_AUS]),
            "au_mask": tf.cast(ex["has_au_all"], tf.float32),
            "mask": tf.constant(1.0, tf.float32),
            "index": tf.cast(ex["index"], tf.int32),
        }
    return fn


_CACHE: dict[Any, Any] = {}


def _epoch_seed(seed: int, epoch: int) -> int:
    return int((seed * 1_000_003 + epoch * 7_919 + 17) % (2 ** 31 - 1))


def create_train_dataset(data_config, *, global_batch_size: int, seed: int, epoch: int,
                         start_batch: int = 0, process_index: Optional[int] = None,
                         process_count: Optional[int] = None) -> Iterable[dict[str, np.ndarray]]:
    """One training epoch of this process's local batches.

    Every process yields exactly `num_train // global_batch_size` batches
    (minus `start_batch`), so multi-host steps stay in lockstep.

    Args:
        data_config: a `DataConfig` (or a ConfigDict / mapping of its
            fields, validated here).
        global_batch_size: clips per step over all processes; each process
            yields `global_batch_size // process_count` (drop_remainder).
        seed: run seed.
        epoch: epoch number (0-based or 1-based, only used as a key).
        start_batch: local batches of this epoch to skip (resume); skipped
            records are read but never decoded.
        process_index, process_count: default `jax.process_index()/count()`.

    Returns:
        An iterable of batch dicts of NumPy arrays (module docstring).

    Raises:
        FileNotFoundError: the fold is not prepared.
        ValueError: bad config values or batch size.
    """
    tf = _tf()
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    data_config = _typed(data_config)
    pi, pc = _process(process_index, process_count)
    local = _local_batch(global_batch_size, pc)
    n = _num_examples(data_config, "train")
    start, end = shard_range(n, pi, pc)
    # Every process must run the same number of steps: n // global_batch_size
    # (the shards differ by at most one clip; each holds enough for that).
    steps = n // global_batch_size
    if steps == 0:
        raise ValueError(f"{n} training clips make no batch of {global_batch_size}")
    eseed = _epoch_seed(int(seed), int(epoch))
    if data_config.cache:
        key = (prepared_path(data_config), start, end)
        if key not in _CACHE:
            _CACHE[key] = _read(data_config, "train", start, end).cache()
        ds = _CACHE[key]
    else:
        ds = _read(data_config, "train", start, end, shuffle_seed=eseed)
    buffer = data_config.shuffle_buffer
    if buffer > 1:
        ds = ds.shuffle(buffer, seed=eseed, reshuffle_each_iteration=False)
    ds = ds.take(steps * local)
    if start_batch:
        ds = ds.skip(int(start_batch) * local)
    ds = ds.map(_make_train_fn(data_config, int(seed), int(epoch)),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(local, drop_remainder=True)
    return _Checked(tfds.as_numpy(_finish(ds)), prepared_path(data_config), "train")


def create_eval_dataset(data_config, *, global_batch_size: int,
                        process_index: Optional[int] = None,
                        process_count: Optional[int] = None
                        ) -> tuple[Iterable[dict[str, np.ndarray]], int]:
    """The test split, deterministic, padded so every process runs `num_steps`.

    Padding clips are zeros with ``mask = 0``, ``index = -1``. With
    ``eval_temporal_views * eval_spatial_views = V > 1`` the clips are
    ``[B, V, T, H, W, 3]``; the AU target is the vote over all valid frames.

    Returns:
        (iterable of local batch dicts, num_steps).
    """
    tf = _tf()
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    data_config = _typed(data_config)
    pi, pc = _process(process_index, process_count)
    local = _local_batch(global_batch_size, pc)
    n = _num_examples(data_config, "test")
    start, end = shard_range(n, pi, pc)
    num_steps = max(1, math.ceil(math.ceil(n / pc) / local))
    ds = _read(data_config, "test", start, end)
    ds = ds.map(_make_eval_fn(data_config), num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
    pad = num_steps * local - (end - start)
    if pad:
        spec = ds.element_spec
        zero = {k: tf.zeros([d if d is not None else 0 for d in s.shape], s.dtype)
                for k, s in spec.items()}
        zero["mask"] = tf.constant(0.0)
        zero["index"] = tf.constant(-1, tf.int32)
        ds = ds.concatenate(tf.data.Dataset.from_tensors(zero).repeat(pad))
    ds = ds.batch(local, drop_remainder=True)
    return _Checked(tfds.as_numpy(_finish(ds)), prepared_path(data_config), "test"), num_steps
