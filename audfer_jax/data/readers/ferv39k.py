"""FERV39k reader: official setup lists and face-crop folders -> `Clip` records.

Layout (../shared/spec/datasets.md section 2), under the user's root or one
level below it (`FERV39K/FERV39k/...`):

    FERV39k/
      2_ClipsforFaceCrop/<Scene>/<Emotion>/<id>/<NN>.jpg   (also doubly nested)
      4_setups/All_scenes/train_All.csv, test_All.csv

Split line: `Action/Happy/0267 Happy` (relative path, space or comma, class
name). Line 1 is a header only if its last token is not a class name (the
published counts hold when line 1 is data). Clip key `Scene/Emotion/id` with the
id padded to 4 digits (ids are unique only within Scene/Emotion); the path's
Emotion folder must name the same class as the label. One official split
(`fold` is ignored and set to 0); the reader checks that train and test are
disjoint. Class order: `audfer_jax.classes.FERV39K_CLASSES` (AU-DFER order).
"""

from __future__ import annotations

import logging
import os
import re
from typing import Optional

from audfer_jax import classes as classes_lib
from audfer_jax.data.readers import clips as clips_lib
from audfer_jax.data.readers import common
from audfer_jax.data.readers.au_labels import (DEFAULT_CONFIDENCE_THRESHOLD, AUSource,
                                               normalise_clip_key)
from audfer_jax.data.records import Clip, Report

log = logging.getLogger("audfer_jax.data.readers")

_MARKERS = ("4_setups", "2_ClipsforFaceCrop")
FRAME_ROOTS = ("2_ClipsforFaceCrop/2_ClipsforFaceCrop", "2_ClipsforFaceCrop")


def split_file_candidates(split: str) -> list[str]:
    """Split list paths tried, relative to the FERV39k folder, in order."""
    return [f"4_setups/All_scenes/{split}_All.csv", f"4_setups/All_scenes/{split}_all.csv",
            f"4_setups/All_scenes/{split}_All.txt"]


def _is_class(token: str) -> bool:
    try:
        classes_lib.label_from_name(token, "ferv39k")
        return True
    except ValueError:
        return False


def parse_split_list(path: str, report: Report) -> list[tuple[str, int, str, str]]:
    """Parses one FERV39k split list.

    Returns:
        `(key, label, origin, path as written)` per valid line; problems (unknown
        label, emotion folder disagreeing with the label, short path) go to
        `report`.
    """
    lines = common.read_lines(path, report)
    out = []
    names = classes_lib.class_names("ferv39k")
    for i, line in enumerate(lines):
        origin = f"{path}:{line.number}"
        tokens = [t for t in re.split(r"[,\s]+", line.text.strip()) if t]
        if i == 0 and tokens and not _is_class(tokens[-1]):
            log.info("%s: line 1 read as a header: %r", path, line.text)
            continue
        if len(tokens) < 2:
            report.add(origin, "expected `<Scene>/<Emotion>/<id> <Label>`", repr(line.text))
            continue
        written, label_name = tokens[0], tokens[-1]
        try:
            label = classes_lib.label_from_name(label_name, "ferv39k")
        except ValueError:
            report.add(origin, "unknown label", f"{label_name!r}; allowed {list(names)}")
            continue
        key = normalise_clip_key(written, "ferv39k")
        if key is None:
            report.add(origin, "bad clip path",
                       f"{written!r} (expected <Scene>/<Emotion>/<id>)")
            continue
        emotion = key.split("/")[1]
        if not _is_class(emotion) or classes_lib.label_from_name(emotion, "ferv39k") != label:
            report.add(origin, "emotion folder disagrees with label",
                       f"path {written!r} is in {emotion!r}, label is {label_name!r}")
            continue
        out.append((key, label, origin, written))
    return out


def read_ferv39k(root: str, split: str, fold: Optional[int] = None, *,
                 frame_set: Optional[str] = None, au_source: Optional[str] = None,
                 on_error: str = "raise", report: Optional[Report] = None,
                 check_frames: bool = True, check_leakage: bool = True,
                 split_file: Optional[str] = None,
                 confidence_threshold: float = DEFAULT_CONFIDENCE_THRESHOLD,
                 frame_index: str = "stem", report_file: Optional[str] = None
                 ) -> list[Clip]:
    """Reads the official FERV39k train or test split.

    Args:
        root: the FERV39k folder, or a folder holding it (one nesting level).
        split: "train" or "test".
        fold: ignored (one official split); clips get fold 0.
        frame_set: frame root path (default `2_ClipsforFaceCrop`, searched one
            level down as well).
        au_source: folder of OpenFace CSVs or `AU_FERV39K.txt` (`au_labels`).
        on_error, report, check_frames, check_leakage, split_file,
        confidence_threshold, frame_index, report_file: as in
            `dfew.read_dfew`.

    Returns:
        `Clip` records in list order, keys `Scene/Emotion/id`.

    Raises:
        ValueError: bad `split` or `on_error`.
        FileNotFoundError: no FERV39k layout, split list or frame root.
        DatasetError: with on_error="raise", listing every problem.
    """
    common.check_on_error(on_error)
    if split not in ("train", "test"):
        raise ValueError(f"FERV39k split must be 'train' or 'test', got {split!r}")
    if fold not in (None, 0, 1):
        log.warning("FERV39k has one official split; fold=%r ignored", fold)
    report = Report() if report is None else report
    first = len(report.problems)
    base = common.find_base(root, _MARKERS)
    if base is None:
        raise FileNotFoundError(f"no FERV39k layout under {root!r} or one level below "
                                f"it: expected one of {list(_MARKERS)}")
    frame_root, tried = common.resolve_path(base, (frame_set,) if frame_set else FRAME_ROOTS)
    if frame_root is None:
        raise FileNotFoundError("FERV39k frame root not found; tried " + ", ".join(tried))
    if split_file is None:
        split_file, tried = common.resolve_path(base, split_file_candidates(split))
        if split_file is None:
            raise FileNotFoundError(f"FERV39k {split} list not found; tried "
                                    + ", ".join(tried))
        other, _ = common.resolve_path(
            base, split_file_candidates("test" if split == "train" else "train"))
    else:
        other = None
    log.info("ferv39k %s: list %s, frames %s", split, split_file, frame_root)

    entries = []
    for key, label, origin, written in parse_split_list(split_file, report):
        scene, emotion, cid = key.split("/")
        raw_id = written.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
        folders = [os.path.join(frame_root, scene, emotion, c)
                   for c in dict.fromkeys([cid, raw_id, str(int(cid)) if cid.isdigit() else cid])]
        entries.append(clips_lib.Entry(key=key, label=label, origin=origin, folders=folders))
    entries = clips_lib.drop_duplicates(entries, report)
    if check_leakage and other is not None:
        keys = {k: o for k, _, o, _ in parse_split_list(other, Report())}
        entries = clips_lib.check_disjoint(entries, keys, "in train and test", report)
    au = None
    if au_source is not None:
        au = AUSource(au_source, "ferv39k", report,
                      confidence_threshold=confidence_threshold, frame_index=frame_index,
                      full_length=False)
    result = clips_lib.build_clips(entries, dataset="ferv39k", split=split, fold=0,
                                   classes=classes_lib.class_names("ferv39k"),
                                   report=report, check_frames=check_frames, au=au)
    common.finish(report, first, on_error, split_file, report_file)
    return result
