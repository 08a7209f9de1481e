"""Third-party clip lists (manifests) -> `Clip` records.

Formats (../shared/spec/datasets.md section 5), detected from the first line:

- three-field (Former-DFER, DFER-CLIP, IAL): `<clip_dir> <num_frames> <label>`,
  e.g. `<prefix>/DFEW_Face/02522 66 5`; no header.
- two-field (MAE-DFER): `<clip_dir> <label>`, e.g.
  `<prefix>/DFEW/Clip/jpg_256/02522 5`; no header.
- header CSV (S2D): columns found by name, e.g. `video_name,label` / `02522,5`
  or `path,id` / `Crime/Angry/0063,0`.

- Rebasing: the prefix is dropped; the last path component (DFEW, MAFW) or the
  last three (FERV39k) are resolved against `frame_root`.
- Integer labels are 0-based in the source codebase's class order, declared by
  `source_order` (`SOURCE_ORDERS`); the default exists only for DFEW
  (`official_minus1`, used by every known codebase). Class names are accepted
  too. FERV39k labels are cross-checked against the Emotion folder of the path.
- `labels_from` (clips read from the official split files): labels come from
  there, the manifest only selects clips; a disagreement or a clip missing
  from the official split is an error.
- `num_frames` is a hint: the folder is recounted and a mismatch is a warning.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from typing import Mapping, Optional, Sequence, Union

from audfer_jax import classes as classes_lib
from audfer_jax.data.readers import clips as clips_lib
from audfer_jax.data.readers import common
from audfer_jax.data.readers.au_labels import (DEFAULT_CONFIDENCE_THRESHOLD, AUSource,
                                               normalise_clip_key)
from audfer_jax.data.records import Clip, Report

log = logging.getLogger("audfer_jax.data.readers")

_CANONICAL_7 = ("happy", "sad", "neutral", "angry", "surprise", "disgust", "fear")
_ALPHABETICAL_7 = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
_MAE_DFER_MAFW = ("anger", "disgust", "fear", "happiness", "neutral", "sadness",
                  "surprise", "contempt", "anxiety", "helplessness", "disappointment")
_DFER_CLIP_MAFW = ("happiness", "sadness", "neutral", "anger", "surprise", "disgust",
                   "fear", "contempt", "anxiety", "helplessness", "disappointment")
_ALPHABETICAL_MAFW = tuple(sorted(_MAE_DFER_MAFW))

# Integer label orders per source codebase and dataset (datasets.md section 4).
SOURCE_ORDERS: dict[str, dict[str, tuple[str, ...]]] = {
    "official_minus1": {"dfew": _CANONICAL_7},
    "former_dfer": {"dfew": _CANONICAL_7, "ferv39k": _CANONICAL_7},
    "dfer_clip": {"dfew": _CANONICAL_7, "ferv39k": _CANONICAL_7, "mafw": _DFER_CLIP_MAFW},
    "mae_dfer": {"dfew": _CANONICAL_7, "ferv39k": _CANONICAL_7, "mafw": _MAE_DFER_MAFW},
    "s2d": {"dfew": _CANONICAL_7, "ferv39k": _ALPHABETICAL_7, "mafw": _ALPHABETICAL_MAFW},
}
FORMATS = ("three_field", "two_field", "header_csv")
_CLIP_COLUMNS = ("video_name", "path", "video", "clip", "name", "file")
_LABEL_COLUMNS = ("label", "emotion", "class", "id")


def label_map(dataset: str, source_order: str) -> list[int]:
    """Canonical index of each integer label of `source_order` for `dataset`.

    Raises:
        ValueError: unknown order, or one not defined for the dataset.
    """
    if source_order not in SOURCE_ORDERS:
        raise ValueError(f"unknown source_order {source_order!r}; expected one of "
                         f"{sorted(SOURCE_ORDERS)}")
    orders = SOURCE_ORDERS[source_order]
    if dataset not in orders:
        defined = sorted(k for k, v in SOURCE_ORDERS.items() if dataset in v)
        raise ValueError(f"source_order {source_order!r} is not defined for {dataset}; "
                         f"choose one of {defined}")
    return [classes_lib.label_from_name(n, dataset) for n in orders[dataset]]


def detect_format(first_line: str) -> str:
    """"header_csv" for a comma line, else "three_field"/"two_field" by token count.

    Raises:
        ValueError: for any other shape.
    """
    if "," in first_line:
        return "header_csv"
    n = len(first_line.split())
    if n == 3:
        return "three_field"
    if n == 2:
        return "two_field"
    raise ValueError(f"cannot tell the manifest format from {first_line!r} (expected "
                     "`<clip_dir> <num_frames> <label>`, `<clip_dir> <label>` or a "
                     "header CSV)")


def read_manifest(path: str, dataset: str, frame_root: str, *,
                  source_order: Optional[str] = None, split: str = "train",
                  fold: Optional[int] = None, format: Optional[str] = None,
                  labels_from: Optional[Union[Sequence[Clip], Mapping[str, int]]] = None,
                  au_source: Optional[str] = None, on_error: str = "raise",
                  report: Optional[Report] = None, check_frames: bool = True,
                  confidence_threshold: float = DEFAULT_CONFIDENCE_THRESHOLD,
                  frame_index: str = "stem", report_file: Optional[str] = None
                  ) -> list[Clip]:
    """Reads a third-party manifest (module doc for the formats).

    Args:
        path: the manifest file.
        dataset: "dfew", "ferv39k", "mafw" or "demo".
        frame_root: folder the clip paths are rebased onto (the folder holding
            `<id>/` for DFEW/MAFW, `<Scene>/` for FERV39k).
        source_order: order of integer labels (`SOURCE_ORDERS`); default
            `official_minus1` for DFEW, required otherwise.
        split: written into the clips ("train"/"test").
        fold: written into the clips (0 if None).
        format: one of `FORMATS`; detected from line 1 if None.
        labels_from: official clips (or `{key: label}`) that supply the labels.
        au_source: folder of OpenFace CSVs or an AU-DFER .txt (`au_labels`).
        on_error, report, check_frames, confidence_threshold, frame_index,
        report_file: as in `dfew.read_dfew`.

    Returns:
        `Clip` records in manifest order, labels in the canonical order.

    Raises:
        ValueError: bad arguments, integer labels without `source_order`, an
            undetectable format.
        DatasetError: with on_error="raise", listing every problem.
    """
    common.check_on_error(on_error)
    dataset = dataset.lower()
    names = classes_lib.class_names(dataset)
    key_dataset = "dfew" if dataset == "demo" else dataset
    if source_order is None and key_dataset == "dfew":
        source_order = "official_minus1"
    mapping = label_map(key_dataset, source_order) if source_order else None
    official = None
    if labels_from is not None:
        official = (dict(labels_from) if isinstance(labels_from, Mapping)
                    else {c.key: c.label for c in labels_from})
    labels = _Labels(dataset=dataset, key_dataset=key_dataset, names=names,
                     source_order=source_order, mapping=mapping, official=official)
    report = Report() if report is None else report
    first = len(report.problems)
    lines = common.read_lines(path, report)
    if not lines:
        report.add(path, "empty manifest")
        common.finish(report, first, on_error, path, report_file)
        return []
    fmt = format or detect_format(lines[0].text)
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    layout = _layout(fmt, lines, path)
    entries = []
    for line in lines[layout.skip:]:
        entry = _entry(line, f"{path}:{line.number}", layout, labels, frame_root, report)
        if entry is not None:
            entries.append(entry)
    entries = clips_lib.drop_duplicates(entries, report)
    au = None
    if au_source is not None:
        au = AUSource(au_source, key_dataset, report,
                      confidence_threshold=confidence_threshold, frame_index=frame_index,
                      full_length=True)
    result = clips_lib.build_clips(entries, dataset=dataset, split=split, fold=fold or 0,
                                   classes=names, report=report,
                                   check_frames=check_frames, au=au)
    common.finish(report, first, on_error, path, report_file)
    return result


@dataclasses.dataclass(frozen=True)
class _Layout:
    """Where a manifest's fields are.

    Attributes:
        fmt: one of `FORMATS`.
        skip: header lines before the first clip line.
        width: fields per line (at least this many for a header CSV).
        clip, label: field indices of the clip path and the label.
        frames: field index of the frame count, or None.
    """
    fmt: str
    skip: int
    width: int
    clip: int
    label: int
    frames: Optional[int]


@dataclasses.dataclass(frozen=True)
class _Labels:
    """How a manifest's label fields become canonical labels.

    Attributes:
        dataset: the dataset read ("demo" included); `key_dataset` its key
            conventions ("dfew" for "demo").
        names: canonical class names.
        source_order: `SOURCE_ORDERS` name of integer labels, or None.
        mapping: canonical index per integer label (`label_map`), or None.
        official: `{key: label}` of the official split, when it supplies labels.
    """
    dataset: str
    key_dataset: str
    names: tuple[str, ...]
    source_order: Optional[str]
    mapping: Optional[list[int]]
    official: Optional[dict[str, int]]


def _layout(fmt: str, lines: list, path: str) -> _Layout:
    """The field positions of format `fmt` (a header CSV's from its header line).

    Raises:
        ValueError: a header CSV without a clip column and a label column.
    """
    if fmt == "header_csv":
        header = [h.strip().lower() for h in lines[0].text.split(",")]
        i_clip = next((header.index(c) for c in _CLIP_COLUMNS if c in header), None)
        i_label = next((header.index(c) for c in _LABEL_COLUMNS
                        if c in header and header.index(c) != i_clip), None)
        if i_clip is None or i_label is None:
            raise ValueError(f"{path}:{lines[0].number}: header {header} lacks a clip "
                             f"column {_CLIP_COLUMNS} and a label column {_LABEL_COLUMNS}")
        return _Layout(fmt, skip=1, width=2, clip=i_clip, label=i_label, frames=None)
    if fmt == "three_field":
        return _Layout(fmt, skip=0, width=3, clip=0, label=2, frames=1)
    return _Layout(fmt, skip=0, width=2, clip=0, label=1, frames=None)


def _entry(line, origin: str, layout: _Layout, labels: _Labels, frame_root: str,
           report: Report) -> Optional[clips_lib.Entry]:
    """One manifest line -> a clip entry, or None (the problem goes to `report`).

    Raises:
        ValueError: an integer label without `source_order` or official labels.
    """
    fmt = layout.fmt
    fields = ([f.strip() for f in line.text.split(",")] if fmt == "header_csv"
              else line.text.split())
    if len(fields) < layout.width or (fmt != "header_csv" and len(fields) != layout.width):
        report.add(origin, f"expected {layout.width} fields ({fmt})", repr(line.text))
        return None
    written = fields[layout.clip]
    key = normalise_clip_key(written, labels.key_dataset)
    if key is None:
        report.add(origin, "bad clip path", f"{written!r}")
        return None
    label = _parse_label(fields[layout.label], origin, labels, report)
    if label is _SKIP:
        return None
    label = _check_label(label, key, written, origin, labels, report)
    if label is _SKIP:
        return None
    hint = None
    if layout.frames is not None:
        if not fields[layout.frames].isdigit():
            report.add(origin, "num_frames not an integer", repr(fields[layout.frames]))
            return None
        hint = int(fields[layout.frames])
    return clips_lib.Entry(key=key, label=label, origin=origin,
                           folders=_folders(frame_root, key, written, labels.key_dataset),
                           num_frames_hint=hint)


# Returned by the label checks for a line that was reported and is skipped.
_SKIP = object()


def _parse_label(raw: str, origin: str, labels: _Labels, report: Report):
    """A label field -> canonical label, None (the official split gives it) or `_SKIP`.

    Raises:
        ValueError: an integer label without `source_order` or official labels.
    """
    if re.fullmatch(r"-?\d+", raw):
        mapping = labels.mapping
        if mapping is None and labels.official is None:
            raise ValueError(
                f"{origin}: integer label {raw} for {labels.dataset} needs source_order, "
                f"one of {sorted(k for k, v in SOURCE_ORDERS.items() if labels.key_dataset in v)}")
        value = int(raw)
        if mapping is not None and not 0 <= value < len(mapping):
            report.add(origin, "label out of range",
                       f"{value}; allowed 0..{len(mapping) - 1} ({labels.source_order})")
            return _SKIP
        return mapping[value] if mapping is not None else None
    try:
        return classes_lib.label_from_name(raw, labels.dataset)
    except ValueError:
        report.add(origin, "unknown label", f"{raw!r}; allowed {list(labels.names)}")
        return _SKIP


def _check_label(label: Optional[int], key: str, written: str, origin: str,
                 labels: _Labels, report: Report):
    """Cross-checks a label with FERV39k's emotion folder and the official split.

    Returns:
        The label (the official one when `labels.official` is set), or `_SKIP`
        after reporting a disagreement.
    """
    names = labels.names
    if labels.key_dataset == "ferv39k" and label is not None:
        emotion = key.split("/")[1]
        try:
            folder_label = classes_lib.label_from_name(emotion, labels.dataset)
        except ValueError:
            folder_label = None
        if folder_label != label:
            report.add(origin, "emotion folder disagrees with label",
                       f"{written!r} is in {emotion!r}, label maps to "
                       f"{names[label]!r} ({labels.source_order or 'name'})")
            return _SKIP
    official = labels.official
    if official is not None:
        if key not in official:
            report.add(origin, "clip not in the official split", key)
            return _SKIP
        if label is not None and official[key] != label:
            report.add(origin, "label disagrees with the official split",
                       f"{key}: manifest {names[label]!r}, official "
                       f"{names[official[key]]!r}")
            return _SKIP
        label = official[key]
    return label


def _folders(frame_root: str, key: str, written: str, dataset: str) -> list[str]:
    """Candidate frame folders of one manifest clip (rebasing rule)."""
    last = written.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    if dataset == "ferv39k":
        scene, emotion, cid = key.split("/")
        ids = [cid, last, str(int(cid)) if cid.isdigit() else cid]
        return [os.path.join(frame_root, scene, emotion, c) for c in dict.fromkeys(ids)]
    ids = [key, last, str(int(key))]
    return [os.path.join(frame_root, c) for c in dict.fromkeys(ids)]
