"""A release on disk -> TFDS TFRecords, offline (the `audfer-jax prepare` library).

One prepared dataset per fold (train and test splits), written by the TFDS
builders of `audfer_jax.data.tfds` under
``<data_dir>/<builder>/<config>/<version>/``. Beside the data:

* ``index_<split>.npz``: key, index, label, num_frames and the all-frame AU
  vote of every clip, so that class counts and AU statistics never need the
  frames (written from the generator, or rebuilt from the records);
* ``../prepare_report.txt``: counts, every skipped clip with file and reason.

Resumable: a fold whose data is complete is skipped; TFDS writes a fold into a
temporary folder renamed at the end, so an interrupted fold leaves no data and
is redone (its stale temporary folder is removed first; one writer per data
dir assumed).

`data_dir` may be a cloud storage URL (``gs://bkt/data``, see
`audfer_jax.paths`): TFDS writes the records through TensorFlow's filesystems
and the sidecar files go through `audfer_jax.paths`. `raw_dir` must be a
local folder: the release readers list and read frames with local file APIs
(copy a release from a bucket first, e.g. ``gcloud storage rsync``).

Source: ../shared/spec/datasets.md sections 0 and 9, engineering.md section 6.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
from typing import Callable, Optional, Sequence, Union

import numpy as np

from audfer_jax import classes
from audfer_jax import paths
from audfer_jax.data import records

REPORT_NAME = "prepare_report.txt"
_FOLDED = {"dfew": 5, "mafw": 5, "demo": 5, "ferv39k": 0}
# What `prepare` reads (the `--dataset` choices of `audfer-jax prepare`).
DATASETS = tuple(sorted(_FOLDED))


@dataclasses.dataclass
class PreparedFold:
    """What `prepare` did for one fold.

    Attributes:
        dataset: dataset name.
        fold: fold number (0 for single-split).
        path: the prepared version folder (input of `tfds.builder_from_directory`).
        skipped: True when the fold was already prepared.
        class_counts: split -> `[C] int64` clips per class.
        report: problems and counts of this run (empty when skipped).
    """
    dataset: str
    fold: int
    path: str
    skipped: bool
    class_counts: dict[str, np.ndarray]
    report: records.Report


def resolve_folds(dataset: str, folds: Union[None, int, str, Sequence[int]]) -> list[int]:
    """`None`/`'all'` -> every fold of the dataset; an int or list -> checked list.

    Raises:
        ValueError: a fold outside 1..5 (0 only for single-split FERV39k).
    """
    dataset = dataset.lower()
    if dataset not in _FOLDED:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(_FOLDED)}")
    n = _FOLDED[dataset]
    if folds is None or (isinstance(folds, str) and folds.lower() == "all"):
        return list(range(1, n + 1)) if n else [0]
    if isinstance(folds, (int, np.integer)) or isinstance(folds, str):
        folds = [int(folds)]
    out = [int(f) for f in folds]
    allowed = list(range(1, n + 1)) if n else [0]
    bad = [f for f in out if f not in allowed]
    if bad:
        raise ValueError(f"fold(s) {bad} not valid for {dataset}; allowed {allowed} or 'all'")
    return out


def version_dir(data_dir: str, dataset: str, fold: int, frame_set=None,
                au_source=None, prepare_size=None, reader_options=None) -> str:
    """Path of a prepared fold: ``<data_dir>/<builder>/<config>/<version>``."""
    from audfer_jax.data.tfds import builders, common  # pylint: disable=g-import-not-at-top
    cls = builders.builder_class(dataset)
    return paths.join(os.fspath(data_dir), cls.name,
                        common.config_name(fold, frame_set, au_source, prepare_size,
                                           reader_options),
                        str(common.VERSION))


def is_prepared(path: str) -> bool:
    """True when `path` (a version folder) holds a finished TFDS dataset."""
    return paths.isfile(paths.join(path, "dataset_info.json"))


class DamagedDataError(OSError):
    """Prepared data that is incomplete or damaged (a shard missing, cut or corrupted).

    The message is one line naming the file and what to do.
    """


def _refix(path: str) -> str:
    return (f"prepare that fold again (remove {path} and rerun `audfer-jax prepare`, or "
            "let `audfer-jax train` prepare it) or copy it again")


def split_shards(path: str) -> dict[str, tuple[list[str], list[int], int]]:
    """What `prepare` recorded per split in `dataset_info.json`.

    Returns:
        `{split: (shard file paths, records per shard, payload bytes)}`; a
        TFRecord file is its records' payloads plus 16 bytes of framing per
        record (8-byte length, two 4-byte CRC32C checksums; the TFRecord
        format), so a complete split's files add up to
        `payload + 16 * records` bytes.
    """
    import json  # pylint: disable=g-import-not-at-top
    info = json.loads(paths.read_text(paths.join(path, "dataset_info.json")))
    out = {}
    for split in info.get("splits", []):
        lengths = [int(n) for n in split.get("shardLengths", [])]
        template = split.get("filepathTemplate", "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}")
        files = []
        for i in range(len(lengths)):
            name = (template.replace("{DATASET}", info["name"])
                    .replace("{SPLIT}", split["name"])
                    .replace("{FILEFORMAT}", info.get("fileFormat", "tfrecord"))
                    .replace("{SHARD_X_OF_Y}", f"{i:05d}-of-{len(lengths):05d}"))
            files.append(paths.join(path, name))
        out[split["name"]] = (files, lengths, int(split.get("numBytes", 0)))
    return out


def verify_prepared(path: str) -> None:
    """Cheap check of a prepared fold against what `prepare` recorded.

    Every shard named by `dataset_info.json` is present, each split's files
    have the recorded size (payload plus TFRecord framing, `split_shards`),
    and the sidecar index has the recorded number of clips. Reads file sizes
    and the small sidecar files only (no record is read).

    Raises:
        DamagedDataError: one line naming the missing or cut file.
    """
    for split, (files, lengths, payload) in split_shards(path).items():
        sizes = []
        for f in files:
            if not paths.isfile(f):
                raise DamagedDataError(f"{f}: shard missing from the prepared data "
                                       f"({len(files)} {split} shard(s) recorded); "
                                       f"{_refix(path)}")
            sizes.append(_size(f))
        expected = payload + 16 * sum(lengths)
        if payload and sum(sizes) != expected:
            # Name the file that differs; one shard can only be told apart
            # when it is the only one (no per-shard size is recorded).
            which = files[0] if len(files) == 1 else f"the {split} shards of {path}"
            raise DamagedDataError(
                    f"{which}: {sum(sizes)} bytes, but prepare wrote {expected} "
                    f"({sum(lengths)} records); the copy is incomplete or damaged; "
                    f"{_refix(path)}")
        index = paths.join(path, f"index_{split}.npz")
        if paths.isfile(index):
            with np.load(io.BytesIO(paths.read_bytes(index))) as z:
                n = int(z["label"].size)
            if n != sum(lengths):
                raise DamagedDataError(f"{index}: {n} clips, but prepare wrote "
                                       f"{sum(lengths)} {split} records; {_refix(path)}")


def _size(file: str) -> int:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    return int(tf.io.gfile.stat(file).length)


def damaged_record_error(path: str, split: str, error: Exception) -> DamagedDataError:
    """Turns TensorFlow's DataLossError of a split into one line naming the shard.

    TF names the byte offset of the bad record but not the file; the split's
    shards that reach that offset are read through (`tf.data.TFRecordDataset`
    checks each record's CRC32C) until one fails at the same offset. This
    reads data, but only on this error path.

    Args:
        path: the prepared version folder.
        split: 'train' or 'test'.
        error: the `tf.errors.DataLossError` (or another read error).
    """
    import re  # pylint: disable=g-import-not-at-top
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    text = getattr(error, "message", None) or str(error)
    m = re.search(r"(corrupted|truncated) record at (\d+)", text)
    files = split_shards(path).get(split, ([], [], 0))[0]
    if m:
        kind, offset = m.group(1), int(m.group(2))
        for f in files:
            if not paths.isfile(f) or _size(f) <= offset:
                continue
            try:
                for _ in tf.data.TFRecordDataset(f):
                    pass
            except tf.errors.DataLossError as e:
                if f"record at {offset}" in (getattr(e, "message", None) or str(e)):
                    return DamagedDataError(f"{f}: {kind} record at byte offset {offset} "
                                            f"(checksum or length check failed); "
                                            f"{_refix(path)}")
        where = files[0] if len(files) == 1 else f"a {split} shard of {path}"
        return DamagedDataError(f"{where}: {kind} record at byte offset {offset}; "
                                f"{_refix(path)}")
    first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return DamagedDataError(f"{path} ({split} split): reading the prepared data failed: "
                            f"{first}; {_refix(path)}")


def _remove_stale(config_dir: str) -> None:
    """Deletes temporary folders an interrupted TFDS run left behind."""
    if not paths.isdir(config_dir):
        return
    for name in paths.listdir(config_dir):
        if "incomplete" in name.lower():
            paths.rmtree(paths.join(config_dir, name))


def write_index(path: str, split: str, rows: list[dict]) -> str:
    """Writes the per-split sidecar index (see module docstring); returns its path."""
    out = paths.join(path, f"index_{split}.npz")
    buf = io.BytesIO()
    np.savez(buf,
             key=np.array([r["key"] for r in rows], dtype=object).astype(str),
             index=np.array([r["index"] for r in rows], np.int32),
             label=np.array([r["label"] for r in rows], np.int32),
             num_frames=np.array([r["num_frames"] for r in rows], np.int32),
             au_target_all=np.array([r["au_target_all"] for r in rows],
                                    np.float32).reshape(len(rows), -1),
             has_au_all=np.array([r["has_au_all"] for r in rows], np.float32))
    # Written aside and renamed, so that a reader never sees half a file
    # (a GCS object is replaced whole anyway).
    tmp = out + ".tmp"
    paths.write_bytes(tmp, buf.getvalue())
    paths.replace(tmp, out)
    return out


def index_rows_from_records(path: str, split: str) -> list[dict]:
    """Rebuilds the sidecar rows of a split by reading its records (no decoding)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    tf.config.set_visible_devices([], "GPU")
    builder = tfds.builder_from_directory(path)
    ds = builder.as_dataset(split=split, shuffle_files=False,
                            decoders={"frames": tfds.decode.SkipDecoding()})
    keep = ("key", "index", "label", "num_frames", "au_target_all", "has_au_all")
    ds = ds.map(lambda ex: {k: ex[k] for k in keep})
    rows = []
    for ex in tfds.as_numpy(ds):
        row = dict(ex)
        row["key"] = row["key"].decode()
        rows.append(row)
    return rows


def load_index(path: str, split: str) -> dict[str, np.ndarray]:
    """The sidecar index of a prepared split, rebuilt and written if missing."""
    file = paths.join(path, f"index_{split}.npz")
    if not paths.isfile(file):
        write_index(path, split, index_rows_from_records(path, split))
    with np.load(io.BytesIO(paths.read_bytes(file))) as z:
        return {k: z[k] for k in z.files}


def prepare(dataset: str, raw_dir: str, data_dir: str,
            folds: Union[None, int, str, Sequence[int]] = None, *,
            frame_set: Optional[str] = None, au_source: Optional[str] = None,
            prepare_size: Optional[int] = None, on_error: str = "raise",
            validate: str = "full", reader_options: Optional[dict] = None,
            log: Callable[[str], None] = print,
            progress_bar: bool = True) -> list[PreparedFold]:
    """Prepares folds of a dataset into TFDS TFRecords, offline and resumable.

    Args:
        dataset: 'dfew' | 'ferv39k' | 'mafw' | 'demo'.
        raw_dir: the release root (TFDS `manual_dir`), a local folder.
        data_dir: root of the prepared data (passed to TFDS explicitly), a
            local folder or a URL (`gs://...`).
        folds: int, list, 'all' or None (= all).
        frame_set, au_source, reader_options: passed to `read_split`.
        prepare_size: shorter side in pixels to resize frames to, or None.
        on_error: 'raise' (one error listing every problem) or 'skip' (drop the
            offending clips, count and report them).
        validate: 'full' decodes every frame once, 'header' checks size and
            magic bytes only.
        log: where progress lines go.
        progress_bar: TFDS's progress bars (on stderr) while writing records.

    Returns:
        One `PreparedFold` per fold.

    Raises:
        records.DatasetError: with on_error='raise' and any bad input; the
            report file is written first.
        ValueError: bad arguments.
    """
    dataset = dataset.lower()
    # Argument checks first: they need no TensorFlow (seconds to import).
    fold_list = resolve_folds(dataset, folds)
    _check_raw_dir(dataset, raw_dir)
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.set_visible_devices([], "GPU")
    data_dir = paths.resolve(data_dir)
    raw_dir = paths.resolve(raw_dir)
    paths.makedirs(data_dir)
    options = dict(frame_set=frame_set, au_source=au_source, prepare_size=prepare_size,
                   reader_options=reader_options)
    results = [_prepare_fold(dataset, fold, raw_dir, data_dir, options, on_error=on_error,
                             validate=validate, log=log, progress_bar=progress_bar)
               for fold in fold_list]
    log(summary_table(results))
    return results


def _check_raw_dir(dataset: str, raw_dir: str) -> None:
    """Raises ValueError unless `raw_dir` is a local, non-empty folder."""
    if paths.is_remote(raw_dir):
        raise ValueError(f"raw_dir {raw_dir!r}: the release must be a local folder (its "
                         "readers use local file APIs); copy it from the bucket first")
    if not os.path.isdir(raw_dir):
        raise ValueError(f"raw_dir {raw_dir!r} is not a folder; expected the {dataset} "
                         "release root (see data/README.md)")
    if not os.listdir(raw_dir):
        raise ValueError(f"raw_dir {raw_dir!r} is empty; expected the {dataset} "
                         "release root (see data/README.md)")


def _prepare_fold(dataset: str, fold: int, raw_dir: str, data_dir: str, options: dict, *,
                  on_error: str, validate: str, log: Callable[[str], None],
                  progress_bar: bool) -> PreparedFold:
    """Prepares one fold (or skips it when prepared); `prepare` for the arguments.

    Args:
        options: `frame_set`, `au_source`, `prepare_size`, `reader_options`.
    """
    from audfer_jax.data.tfds import builders, common  # pylint: disable=g-import-not-at-top
    cls = builders.builder_class(dataset)
    cfg = common.make_config(fold, options["frame_set"], options["au_source"],
                             options["prepare_size"],
                             reader_options=options["reader_options"])
    if cfg.name in cls.builder_configs:
        cfg = cfg.name  # TFDS wants the predefined object, or its name
    path = version_dir(data_dir, dataset, fold, options["frame_set"], options["au_source"],
                       options["prepare_size"], options["reader_options"])
    config_dir = paths.dirname(path)
    report_path = paths.join(config_dir, REPORT_NAME)
    if is_prepared(path):
        log(f"[prepare] {dataset} fold {fold}: already prepared at {path}, skipped")
        counts = {s: _class_counts(dataset, load_index(path, s)["label"])
                  for s in common.SPLITS}
        return PreparedFold(dataset, fold, path, True, counts, records.Report())
    _remove_stale(config_dir)
    log(f"[prepare] {dataset} fold {fold}: {raw_dir} -> {path}")
    builder = cls(data_dir=data_dir, config=cfg, validate=validate, on_error=on_error)
    _write_records(builder, raw_dir, progress_bar, report_path, dataset, fold)
    counts = {}
    for split in common.SPLITS:
        rows = builder.index_rows.get(split)
        if rows is None:
            rows = index_rows_from_records(path, split)
        write_index(path, split, rows)
        counts[split] = _class_counts(dataset, [r["label"] for r in rows])
    _write_report(report_path, dataset, fold, builder.report, counts)
    if builder.report.problems:
        log(f"[prepare] {len(builder.report.problems)} clip(s) skipped; "
            f"see {report_path}")
    return PreparedFold(dataset, fold, path, False, counts, builder.report)


def _write_records(builder, raw_dir: str, progress_bar: bool, report_path: str,
                   dataset: str, fold: int) -> None:
    """Runs the TFDS builder; on failure writes the report (the error names it) and re-raises."""
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    try:
        # TFDS prints "Downloading and preparing dataset Unknown size ..."
        # on stdout although nothing is downloaded: our own log line says
        # what happens instead.
        with contextlib.redirect_stdout(io.StringIO()):
            tfds.display_progress_bar(progress_bar)
            try:
                builder.download_and_prepare(
                    download_config=tfds.download.DownloadConfig(manual_dir=raw_dir))
            finally:
                tfds.display_progress_bar(True)
    except records.DatasetError as e:
        _write_report(report_path, dataset, fold, e.report, None)
        e.report_path = report_path  # the one-line CLI error points here
        raise
    except Exception:
        _write_report(report_path, dataset, fold, builder.report, None)
        raise


def _class_counts(dataset: str, labels) -> np.ndarray:
    n = classes.num_classes(dataset)
    return np.bincount(np.asarray(labels, np.int64), minlength=n)[:n]


def _write_report(path: str, dataset: str, fold: int, report: records.Report,
                  counts: Optional[dict]) -> None:
    paths.makedirs(paths.dirname(path))
    lines = [f"dataset {dataset} fold {fold}",
             "status: " + ("prepared" if counts is not None else "FAILED")]
    lines += [f"{k}: {v}" for k, v in sorted(report.counts.items())]
    if counts:
        for split, c in counts.items():
            lines.append(f"{split} class counts: {c.tolist()}")
    lines.append(f"{len(report.problems)} problem(s):")
    lines += [str(p) for p in report.problems]
    if report.warnings:
        lines.append(f"{len(report.warnings)} warning(s):")
        lines += [str(w) for w in report.warnings]
    paths.write_text(path, "\n".join(lines) + "\n")


def summary_table(results: list[PreparedFold]) -> str:
    """Class counts per fold and split as a text table."""
    if not results:
        return "(nothing prepared)"
    names = classes.class_names(results[0].dataset)
    width = max(8, max(len(n) for n in names) + 1)
    head = f"{'fold':>4} {'split':<6}" + "".join(f"{n[:width - 1]:>{width}}" for n in names)
    lines = [head + f"{'total':>8}"]
    for r in results:
        for split, c in r.class_counts.items():
            lines.append(f"{r.fold:>4} {split:<6}" + "".join(f"{int(v):>{width}}" for v in c)
                         + f"{int(c.sum()):>8}" + ("  (already prepared)" if r.skipped else ""))
    return "\n".join(lines)
