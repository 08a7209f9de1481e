"""What the per-dataset TFDS builders share: config, features, example writer.

A builder reads the user's copy of a release fully offline from
`dl_manager.manual_dir` through `audfer_jax.data.readers.read_split`
(../shared/spec/engineering.md section 6) and writes one TFDS dataset per
(fold, frame set, AU source, prepare size), i.e. per `ClipBuilderConfig`.

Each example stores the *encoded JPEG bytes* of every frame of the clip (never
decoded pixels): the input pipeline decodes only the frames it samples. Frames
that are not JPEG (MAFW's PNG face crops), and all frames when `prepare_size`
is set, are decoded once here and re-encoded as JPEG at quality
`JPEG_QUALITY`.

Bad frames (empty file, unknown magic bytes, and with `validate="full"` any
frame PIL cannot fully decode) are collected into a `records.Report`; with
`on_error="skip"` the clip is left out and preparation goes on, with
`on_error="raise"` the whole split is scanned first and one `DatasetError`
listing every problem is raised at the end (TFDS then discards the split).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import re
from typing import Any, Iterator, Optional

import numpy as np
import tensorflow_datasets as tfds

from audfer_jax import classes
from audfer_jax.au import NUM_AUS
from audfer_jax.data import records

VERSION = tfds.core.Version("1.0.0")
# Quality of the JPEGs written when a frame has to be re-encoded (PNG source or
# `prepare_size`). 95 keeps re-encoding error below the sensor noise of the
# releases' own JPEG face crops (a choice of this library, not a reference value).
JPEG_QUALITY = 95
SPLITS = ("train", "test")
VALIDATE_MODES = ("header", "full")

_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def config_name(fold: int, frame_set: Optional[str] = None,
                au_source: Optional[str] = None,
                prepare_size: Optional[int] = None,
                reader_options: Optional[dict] = None) -> str:
    """Name of the prepared dataset config, e.g. ``fold1-16f-au_openface-112px``.

    The name is also the folder under ``<data_dir>/<builder>/``, so every
    setting that changes the stored data is in it. A frame set given as a path
    contributes its last component; extra reader options a short hash.
    """
    parts = [f"fold{int(fold)}"]
    parts.append(_slug(frame_set) if frame_set else "default")
    if au_source:
        parts.append("au_" + _slug(au_source))
    if prepare_size:
        parts.append(f"{int(prepare_size)}px")
    if reader_options:
        text = repr(sorted((str(k), repr(v)) for k, v in reader_options.items()))
        parts.append("opt" + hashlib.sha1(text.encode()).hexdigest()[:8])
    return "-".join(parts)


def _slug(text: str) -> str:
    text = str(text).rstrip("/\\")
    text = re.split(r"[/\\]", text)[-1] or "x"
    return re.sub(r"[^A-Za-z0-9_.]+", "_", text)


@dataclasses.dataclass(eq=False)
class ClipBuilderConfig(tfds.core.BuilderConfig):
    """One prepared variant of a dataset.

    Attributes:
        fold: 1..5 (DFEW, MAFW) or 0 for a single-split dataset (FERV39k).
        frame_set: reader frame set (`full` | `16f` | path; None = reader default).
        au_source: reader AU source (None = no AU labels).
        prepare_size: resize the shorter side to this many pixels at prepare
            time (None keeps the stored size).
        reader_options: extra keyword options for `read_split`.

    How bad input is handled (`validate`, `on_error`) does not change the data
    of a clip, so it is an argument of the builder, not part of the config.
    """
    fold: int = 1
    frame_set: Optional[str] = None
    au_source: Optional[str] = None
    prepare_size: Optional[int] = None
    reader_options: dict = dataclasses.field(default_factory=dict)


def make_config(fold: int, frame_set: Optional[str] = None,
                au_source: Optional[str] = None,
                prepare_size: Optional[int] = None, *,
                reader_options: Optional[dict] = None) -> ClipBuilderConfig:
    """A `ClipBuilderConfig` named by `config_name`."""
    name = config_name(fold, frame_set, au_source, prepare_size, reader_options)
    return ClipBuilderConfig(
        name=name, version=VERSION,
        description=(f"fold {fold}, frame set {frame_set or 'default'}, "
                     f"AU source {au_source or 'none'}, "
                     f"size {prepare_size or 'as stored'}"),
        fold=int(fold), frame_set=frame_set, au_source=au_source,
        prepare_size=prepare_size, reader_options=dict(reader_options or {}))


def check_frame_bytes(data: bytes) -> Optional[str]:
    """Cheap check of one encoded frame: None if plausible, else the reason."""
    if not data:
        return "empty file (size 0)"
    if data.startswith(_JPEG_MAGIC):
        return None
    if data.startswith(_PNG_MAGIC):
        return None
    return f"not a JPEG or PNG (first bytes {data[:4].hex()})"


def _decode(data: bytes):
    """Fully decodes one frame with PIL (raises OSError/ValueError on damage)."""
    from PIL import Image  # pylint: disable=g-import-not-at-top
    image = Image.open(io.BytesIO(data))
    image.load()
    return image.convert("RGB")


def _encode_jpeg(image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


def encode_frames(paths: list[str], *, prepare_size: Optional[int],
                  validate: str) -> tuple[list[bytes], int, int]:
    """Reads, checks and (when needed) re-encodes the frames of one clip.

    Args:
        paths: frame files in temporal order.
        prepare_size: shorter side in pixels after resizing, or None.
        validate: "header" or "full" (see `ClipBuilderConfig`).

    Returns:
        (JPEG bytes per frame, height, width of the stored frames).

    Raises:
        ValueError: naming the frame and the reason when one is unreadable.
    """
    from PIL import Image  # pylint: disable=g-import-not-at-top
    out, size = [], None
    for path in paths:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ValueError(f"{path}: unreadable ({e})") from None
        reason = check_frame_bytes(data)
        if reason:
            raise ValueError(f"{path}: {reason}")
        is_jpeg = data.startswith(_JPEG_MAGIC)
        try:
            if prepare_size or not is_jpeg or validate == "full":
                image = _decode(data)
            else:  # header only: PIL parses the size without decoding
                image = Image.open(io.BytesIO(data))
        except Exception as e:  # PIL raises several types on damaged data
            raise ValueError(f"{path}: corrupt image ({e})") from None
        if prepare_size:
            w, h = image.size
            scale = prepare_size / min(w, h)
            new = (max(1, round(w * scale)), max(1, round(h * scale)))
            if new != (w, h):
                image = image.resize(new, Image.BILINEAR)
        if prepare_size or not is_jpeg:
            data = _encode_jpeg(image)
        this = (image.size[1], image.size[0])
        if size is not None and this != size:
            raise ValueError(f"{path}: frame size {this} differs from the "
                             f"clip's first frame {size}")
        size = this
        out.append(data)
    return out, size[0], size[1]


def vote_all(au_frames: np.ndarray, au_valid: np.ndarray) -> tuple[np.ndarray, float]:
    """All-frame clip AU target (datasets.md section 6c, `au_vote = all`).

    Uses the readers' `clip_au_target` when available so that there is one
    NumPy reference of the vote.

    Returns:
        (target `[18] float32`, has_au float).
    """
    n = au_frames.shape[0]
    try:
        from audfer_jax.data.readers import clip_au_target  # pylint: disable=g-import-not-at-top
    except ImportError:
        clip_au_target = None
    if clip_au_target is not None:
        target, has = clip_au_target(au_frames, au_valid, np.arange(n))
        return np.asarray(target, np.float32), float(has)
    valid = au_valid.astype(bool)
    count = int(valid.sum())
    if count == 0:
        return np.zeros(NUM_AUS, np.float32), 0.0
    pos = au_frames[valid].astype(np.int64).sum(0)
    return (2 * pos >= count).astype(np.float32), 1.0


class ClipDatasetBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of the per-dataset builders (not registered itself).

    Subclasses set `READER_NAME` (the `read_split` dataset name), `CLASS_SET`
    (the `audfer_jax.classes` name), `BUILDER_CONFIGS` and
    `MANUAL_DOWNLOAD_INSTRUCTIONS`.
    """
    VERSION = VERSION
    RELEASE_NOTES = {"1.0.0": "Encoded JPEG frames, per-frame AU labels."}
    READER_NAME = ""
    CLASS_SET = ""

    def __init__(self, *args, validate: str = "full", on_error: str = "raise",
                 **kwargs):
        """Args as `tfds.core.GeneratorBasedBuilder`, plus:

        validate: "header" checks size and magic bytes of every frame, "full"
            also decodes every frame once (datasets.md section 9).
        on_error: "raise" | "skip" (datasets.md section 9).
        """
        if validate not in VALIDATE_MODES:
            raise ValueError(f"validate {validate!r} not in {VALIDATE_MODES}")
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error {on_error!r} not in ('raise', 'skip')")
        self.validate = validate
        self.on_error = on_error
        super().__init__(*args, **kwargs)
        self.report = records.Report()
        # Per split: what the sidecar index needs, collected while writing.
        self.index_rows: dict[str, list[dict[str, Any]]] = {}

    def _info(self) -> tfds.core.DatasetInfo:
        names = list(classes.class_names(self.CLASS_SET))
        features = tfds.features.FeaturesDict({
            "key": tfds.features.Text(),
            "origin": tfds.features.Text(),
            "index": tfds.features.Scalar(np.int32),
            "label": tfds.features.ClassLabel(names=names),
            "multi_hot": tfds.features.Tensor(shape=(len(names),), dtype=np.uint8),
            "num_frames": tfds.features.Scalar(np.int32),
            "frames": tfds.features.Sequence(
                tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg")),
            "au_frames": tfds.features.Tensor(shape=(None, NUM_AUS), dtype=np.uint8),
            "au_valid": tfds.features.Tensor(shape=(None,), dtype=np.bool_),
            "au_target_all": tfds.features.Tensor(shape=(NUM_AUS,), dtype=np.float32),
            "has_au_all": tfds.features.Scalar(np.float32),
        })
        return self.dataset_info_from_configs(
            features=features, supervised_keys=None,
            description=f"{self.READER_NAME.upper()} clips as encoded JPEG frames")

    def _split_generators(self, dl_manager):
        from audfer_jax.data.readers import read_split  # pylint: disable=g-import-not-at-top
        cfg = self.builder_config
        options = dict(cfg.reader_options)
        if cfg.frame_set is not None:
            options["frame_set"] = cfg.frame_set
        if cfg.au_source is not None:
            options["au_source"] = cfg.au_source
        fold = cfg.fold if cfg.fold else None
        raw = str(dl_manager.manual_dir)
        generators = {}
        for split in SPLITS:
            clips = read_split(self.READER_NAME, raw, split, fold,
                               on_error=self.on_error, report=self.report, **options)
            self.report.count(f"{split} clips listed", len(clips))
            generators[split] = self._generate_examples(clips, split)
        return generators

    def _generate_examples(self, clips: list[records.Clip],
                           split: str) -> Iterator[tuple[str, dict[str, Any]]]:
        cfg = self.builder_config
        num_classes = classes.num_classes(self.CLASS_SET)
        rows = self.index_rows.setdefault(split, [])
        failed = 0
        for index, clip in enumerate(clips):
            try:
                if clip.label < 0 or clip.label >= num_classes:
                    raise ValueError(f"label {clip.label} outside 0..{num_classes - 1}")
                frames, _, _ = encode_frames(clip.frames,
                                             prepare_size=cfg.prepare_size,
                                             validate=self.validate)
            except ValueError as e:
                failed += 1
                self.report.add(clip.origin, "bad clip", f"clip {clip.key}: {e}")
                self.report.count(f"{split} clips skipped")
                continue
            n = len(frames)
            if clip.au_frames is not None:
                au_frames = np.asarray(clip.au_frames, np.uint8).reshape(n, NUM_AUS)
                au_valid = (np.ones(n, bool) if clip.au_valid is None
                            else np.asarray(clip.au_valid, bool).reshape(n))
            else:
                au_frames = np.zeros((n, NUM_AUS), np.uint8)
                au_valid = np.zeros(n, bool)
            target, has_au = vote_all(au_frames, au_valid)
            multi = np.zeros(num_classes, np.uint8)
            multi[list(clip.multi_label or (clip.label,))] = 1
            rows.append({"key": clip.key, "index": index, "label": clip.label,
                         "num_frames": n, "au_target_all": target,
                         "has_au_all": has_au})
            self.report.count(f"{split} clips written")
            yield clip.key, {
                "key": clip.key, "origin": clip.origin, "index": index,
                "label": clip.label, "multi_hot": multi, "num_frames": n,
                "frames": frames, "au_frames": au_frames, "au_valid": au_valid,
                "au_target_all": target, "has_au_all": np.float32(has_au),
            }
        if failed and self.on_error == "raise":
            raise records.DatasetError(self.report, f"{self.name} {split}")
