"""DFEW reader: official split CSVs and frame folders -> `Clip` records.

Layout (../shared/spec/datasets.md section 1), under the user's root or one
level below it:

    DFEW/
      Clip/clip_224x224/<id>/*.jpg              frame_set="full" (default)
      Clip/clip_224x224_16f/<id>/1.jpg..16.jpg  frame_set="16f"
      EmoLabel_DataSplit/{train,test}(single-labeled)/set_1.csv .. set_5.csv

Also accepted: split folders `(single_labeled)`, bare `train/`/`test/`, and the
older release `data/<id>/<id>_<k>.jpg` + `label/single_{train,test}set_<k>.csv`.
Any other frame set (`Clip/jpg_256`, a self-extracted one) is given as a path
(absolute, or relative to the DFEW folder).

Split CSV: header `video_name,label` (columns found by name, extra columns
tolerated), ids written `2522` or `02522` (normalised `%05d`, folder looked up
padded then unpadded), official labels 1 Happy, 2 Sad, 3 Neutral, 4 Angry,
5 Surprise, 6 Disgust, 7 Fear; canonical label = official - 1 (AU-DFER order,
`audfer_jax.classes`). Label 0 (not single-labelled) is an error in a split
file. Protocol: 5-fold CV with disjoint test sets, so the reader also checks
that no id is in train and test of one fold or in two test folds.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Optional

from audfer_jax import classes as classes_lib
from audfer_jax.data.readers import clips as clips_lib
from audfer_jax.data.readers import common
from audfer_jax.data.readers.au_labels import DEFAULT_CONFIDENCE_THRESHOLD, AUSource
from audfer_jax.data.records import Clip, Report

log = logging.getLogger("audfer_jax.data.readers")

FOLDS = (1, 2, 3, 4, 5)
FRAME_SETS = {"full": ("Clip/clip_224x224", "data"),
              "16f": ("Clip/clip_224x224_16f",)}
_MARKERS = ("EmoLabel_DataSplit", "label", "Clip")
NUM_OFFICIAL_LABELS = 7   # official labels 1..7 (datasets.md section 1)


def split_file_candidates(split: str, fold: int) -> list[str]:
    """Split CSV paths tried, relative to the DFEW folder, in order."""
    names = [f"EmoLabel_DataSplit/{split}(single-labeled)/set_{fold}.csv",
             f"EmoLabel_DataSplit/{split}(single_labeled)/set_{fold}.csv",
             f"EmoLabel_DataSplit/{split}_(single-labeled)/set_{fold}.csv",
             f"EmoLabel_DataSplit/{split}/set_{fold}.csv",
             f"label/single_{split}set_{fold}.csv"]
    return names


def find_dfew_base(root: str) -> str:
    """The DFEW folder at `root` or one level below it.

    Raises:
        FileNotFoundError: naming `root` and the folders looked for.
    """
    base = common.find_base(root, _MARKERS)
    if base is None:
        raise FileNotFoundError(
            f"no DFEW layout under {root!r} or one level below it: expected one of "
            f"{list(_MARKERS)} (see data/README.md)")
    return base


def find_split_file(base: str, split: str, fold: int) -> str:
    """The split CSV of `split`/`fold`.

    Raises:
        FileNotFoundError: listing every path tried.
    """
    path, tried = common.resolve_path(base, split_file_candidates(split, fold))
    if path is None:
        raise FileNotFoundError(f"DFEW {split} split of fold {fold} not found; tried "
                                + ", ".join(tried))
    return path


def find_frame_root(base: str, frame_set: str) -> str:
    """The frame folder of `frame_set` ("full", "16f" or a path).

    Raises:
        FileNotFoundError: listing every path tried.
    """
    rels = FRAME_SETS.get(frame_set, (frame_set,))
    path, tried = common.resolve_path(base, rels)
    if path is None or not os.path.isdir(path):
        raise FileNotFoundError(f"DFEW frame set {frame_set!r} not found; tried "
                                + ", ".join(tried))
    return path


def normalise_id(text: str) -> Optional[str]:
    """`2522`, `02522`, `02522.mp4` -> `02522`; None when not an id."""
    text = re.sub(r"\.[A-Za-z0-9]+$", "", text.strip())
    return f"{int(text):05d}" if text.isdigit() else None


def parse_split_csv(path: str, report: Report) -> list[tuple[str, int, str]]:
    """Parses one DFEW split CSV.

    Returns:
        `(key, canonical label, origin)` per valid line; problems (bad id,
        label 0, label out of range, missing columns, undecodable line) go to
        `report`.
    """
    lines = common.read_lines(path, report)
    if not lines:
        report.add(path, "empty split file", "expected header `video_name,label`")
        return []
    out = []
    fields0 = _fields(lines[0].text)
    names = [f.lower() for f in fields0]
    if "video_name" in names and "label" in names:
        i_id, i_label = names.index("video_name"), names.index("label")
        body = lines[1:]
    elif len(fields0) >= 2 and all(f.isdigit() for f in fields0[:2]):
        report.warn(f"{path}:{lines[0].number}", "no header",
                    "reading columns 1-2 as video_name,label")
        i_id, i_label, body = 0, 1, lines
    else:
        report.add(f"{path}:{lines[0].number}", "bad header",
                   f"expected columns video_name,label; found {fields0}")
        return []
    width = max(i_id, i_label) + 1
    for line in body:
        origin = f"{path}:{line.number}"
        fields = _fields(line.text)
        if len(fields) < width:
            report.add(origin, "expected video_name,label", repr(line.text))
            continue
        key = normalise_id(fields[i_id])
        if key is None:
            report.add(origin, "bad clip id", f"{fields[i_id]!r} (expected an integer id)")
            continue
        raw = fields[i_label]
        if not raw.lstrip("-").isdigit():
            report.add(origin, "label not an integer",
                       f"{raw!r}; allowed 1..{NUM_OFFICIAL_LABELS}")
            continue
        value = int(raw)
        if value == 0:
            report.add(origin, "label 0 (not single-labelled)",
                       f"clip {key}; allowed 1..{NUM_OFFICIAL_LABELS} in a split file")
            continue
        if not 1 <= value <= NUM_OFFICIAL_LABELS:
            report.add(origin, "label out of range",
                       f"{value}; allowed 1..{NUM_OFFICIAL_LABELS}")
            continue
        out.append((key, value - 1, origin))
    return out


def _fields(text: str) -> list[str]:
    parts = text.split(",") if "," in text else text.split()
    return [p.strip() for p in parts]


def _keys_of(path: Optional[str]) -> dict[str, str]:
    """`{key: origin}` of a split file, ignoring its problems (leakage checks)."""
    if path is None:
        return {}
    return {k: o for k, _, o in parse_split_csv(path, Report())}


def read_dfew(root: str, split: str, fold: Optional[int], *, frame_set: Optional[str] = None,
              au_source: Optional[str] = None, on_error: str = "raise",
              report: Optional[Report] = None, check_frames: bool = True,
              check_leakage: bool = True, split_file: Optional[str] = None,
              confidence_threshold: float = DEFAULT_CONFIDENCE_THRESHOLD,
              frame_index: str = "stem", report_file: Optional[str] = None,
              dataset: str = "dfew") -> list[Clip]:
    """Reads one split of one DFEW fold.

    Args:
        root: the DFEW folder, or a folder holding it (one nesting level).
        split: "train" or "test".
        fold: 1..5.
        frame_set: "full" (`Clip/clip_224x224`, default, falling back to the
            older `data/`), "16f" (`Clip/clip_224x224_16f`) or a path. Logged:
            results differ by points between sets.
        au_source: folder of OpenFace CSVs or an AU-DFER .txt (`au_labels`).
        on_error: "raise" one `DatasetError` after the whole scan, or "skip"
            the offending clips.
        report: collects problems, warnings and counts (a new one if None).
        check_frames: reject size-0 and bad-magic frame files.
        check_leakage: also parse the other split of the fold and the other
            folds' test files, and reject shared ids.
        split_file: explicit split CSV instead of the layout's.
        confidence_threshold: OpenFace rows below it are missing.
        frame_index: "stem" | "lexicographic", meaning of AU-DFER's k.
        report_file: with "skip", file the problem list is appended to.
        dataset: name written in messages ("demo" reads the demo set).

    Returns:
        `Clip` records in split-file order; `label` = official - 1.

    Raises:
        ValueError: bad `split`, `fold` or `on_error`.
        FileNotFoundError: no DFEW layout, split file or frame set.
        DatasetError: with on_error="raise", listing every problem.
    """
    common.check_on_error(on_error)
    if split not in ("train", "test"):
        raise ValueError(f"DFEW split must be 'train' or 'test', got {split!r}")
    if fold not in FOLDS:
        raise ValueError(f"DFEW needs fold in {FOLDS}, got {fold!r}")
    report = Report() if report is None else report
    first = len(report.problems)
    base = find_dfew_base(root)
    frame_set = frame_set or "full"
    frame_root = find_frame_root(base, frame_set)
    path = split_file or find_split_file(base, split, fold)
    log.info("%s %s fold %d: split file %s, frame set %r -> %s", dataset, split, fold,
             path, frame_set, frame_root)

    parsed = parse_split_csv(path, report)
    entries = [clips_lib.Entry(key=k, label=y, origin=o,
                               folders=[os.path.join(frame_root, k),
                                        os.path.join(frame_root, str(int(k)))])
               for k, y, o in parsed]
    entries = clips_lib.drop_duplicates(entries, report)
    if check_leakage and split_file is None:
        other = "test" if split == "train" else "train"
        other_path, _ = common.resolve_path(base, split_file_candidates(other, fold))
        entries = clips_lib.check_disjoint(entries, _keys_of(other_path),
                                           f"in train and test of fold {fold}", report)
        if split == "test":
            for f in FOLDS:
                if f == fold:
                    continue
                p, _ = common.resolve_path(base, split_file_candidates("test", f))
                entries = clips_lib.check_disjoint(
                    entries, _keys_of(p), f"in the test sets of folds {fold} and {f}",
                    report)
    au = None
    if au_source is not None:
        au = AUSource(au_source, dataset, report,
                      confidence_threshold=confidence_threshold, frame_index=frame_index,
                      full_length=frame_set != "16f")
    result = clips_lib.build_clips(entries, dataset=dataset, split=split, fold=fold,
                                   classes=classes_lib.class_names("dfew"),
                                   report=report, check_frames=check_frames, au=au)
    common.finish(report, first, on_error, path, report_file)
    return result
