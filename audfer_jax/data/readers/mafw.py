"""MAFW reader: official fold lists and frame folders -> `Clip` records.

Layout (../shared/spec/datasets.md section 3), under the user's root or one
level below it:

    MAFW/
      data/frames/<id>/... | data/faces/<id>/... | frames_crop_align_224/<id>/*.png
      Train & Test Set/{single,compound}/{no_caption,with_caption}/set_{1..5}/{train,test}.txt

The split root is literally `Train & Test Set` (spaces, ampersand); some copies
rename it, so it is the `split_root` option. The frame set is the `frame_set`
option (a path); without it the reader uses the only one of the three folders
above that exists and refuses to guess when several do (failed reproductions
mostly come from self-extracted faces).

Lines: `03747.mp4 anger` (no_caption) or
`03747.mp4<TAB>anger<TAB><Chinese caption><TAB><English caption>`
(with_caption), CRLF line ends. Fields 1-2 are decoded strictly as ASCII (an
error names the line); captions are decoded GBK, then GB18030, then with
replacement characters, and never fail. Ids drop `.mp4` and are `%05d`.

Labels: class names in the DFER-CLIP order (`audfer_jax.classes.MAFW_CLASSES`).
`label_type="compound"` reads names joined by `_` (or `-`) into
`Clip.multi_label` (sorted class indices); `Clip.label` is the class index
when the compound has one name and -1 otherwise. Compound labels are read and
reported, not trained on. Default: `label_type="single"`, `caption="no_caption"`.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Callable, Optional

from audfer_jax import classes as classes_lib
from audfer_jax.data.readers import clips as clips_lib
from audfer_jax.data.readers import common
from audfer_jax.data.readers.au_labels import DEFAULT_CONFIDENCE_THRESHOLD, AUSource
from audfer_jax.data.records import Clip, Report

log = logging.getLogger("audfer_jax.data.readers")

FOLDS = (1, 2, 3, 4, 5)
DEFAULT_SPLIT_ROOT = "Train & Test Set"
FRAME_SET_CANDIDATES = ("data/faces", "frames_crop_align_224", "data/frames")
LABEL_TYPES = ("single", "compound")
CAPTIONS = ("no_caption", "with_caption")
CAPTION_ENCODINGS = ("gbk", "gb18030")


def decode_caption(raw: bytes) -> str:
    """Decodes a caption field: GBK, then GB18030, then UTF-8 with replacement."""
    for enc in CAPTION_ENCODINGS:
        try:
            return raw.decode(enc)
        except UnicodeDecodeError:
            pass
    return raw.decode("utf-8", errors="replace")


def parse_fold_list(path: str, report: Report, *, label_type: str = "single"
                    ) -> list[tuple[str, int, Optional[tuple[int, ...]], str]]:
    """Parses one MAFW `train.txt`/`test.txt`.

    Returns:
        `(key, label, multi_label, origin)` per valid line; problems (non-ASCII
        label fields, bad id, unknown class name) go to `report`.
    """
    with open(path, "rb") as f:
        data = f.read()
    names = classes_lib.class_names("mafw")
    out = []
    for number, raw in common.split_lines(data):
        origin = f"{path}:{number}"
        fields = raw.split(b"\t") if b"\t" in raw else raw.split()
        fields = [f.strip() for f in fields]
        if len(fields) < 2:
            report.add(origin, "expected `<id>.mp4 <label>`", repr(raw[:80]))
            continue
        try:
            vid, text = fields[0].decode("ascii"), fields[1].decode("ascii")
        except UnicodeDecodeError:
            report.add(origin, "label fields not ASCII", repr(raw[:80]))
            continue
        for caption in fields[2:]:
            decode_caption(caption)
        if len(fields) > 2:
            report.count("captioned_lines")
        stem = re.sub(r"\.[A-Za-z0-9]+$", "", vid)
        if not stem.isdigit():
            report.add(origin, "bad clip id", f"{vid!r} (expected <digits>.mp4)")
            continue
        key = f"{int(stem):05d}"
        parts = [p for p in re.split(r"[_-]", text) if p] if label_type == "compound" else [text]
        try:
            idx = [classes_lib.label_from_name(p, "mafw") for p in parts]
        except ValueError:
            report.add(origin, "unknown label",
                       f"{text!r}; allowed {list(names)}"
                       + (" joined by '_' or '-'" if label_type == "compound" else ""))
            continue
        if not idx:
            report.add(origin, "unknown label", f"{text!r}")
            continue
        if label_type == "compound":
            multi = tuple(sorted(set(idx)))
            out.append((key, multi[0] if len(multi) == 1 else -1, multi, origin))
        else:
            out.append((key, idx[0], None, origin))
    return out


def find_frame_root(base: str, frame_set: Optional[str]) -> str:
    """The MAFW frame folder: `frame_set`, or the only existing candidate.

    Raises:
        FileNotFoundError: nothing found (listing the paths tried).
        ValueError: several candidates exist and `frame_set` is not given.
    """
    if frame_set:
        path, tried = common.resolve_path(base, (frame_set,))
        if path is None:
            raise FileNotFoundError(f"MAFW frame set not found; tried {', '.join(tried)}")
        return path
    found, tried = [], []
    for rel in FRAME_SET_CANDIDATES:
        p, t = common.resolve_path(base, (rel,))
        tried += t
        if p is not None:
            found.append(p)
    if not found:
        raise FileNotFoundError("no MAFW frame set found; tried " + ", ".join(tried)
                                + " (pass frame_set=PATH)")
    if len(found) > 1:
        raise ValueError(f"several MAFW frame sets exist ({found}); choose one with "
                         "frame_set=PATH (results differ between them)")
    return found[0]


def read_mafw(root: str, split: str, fold: Optional[int], *, frame_set: Optional[str] = None,
              au_source: Optional[str] = None, on_error: str = "raise",
              report: Optional[Report] = None, check_frames: bool = True,
              check_leakage: bool = True, split_root: str = DEFAULT_SPLIT_ROOT,
              label_type: str = "single", caption: str = "no_caption",
              split_file: Optional[str] = None,
              confidence_threshold: float = DEFAULT_CONFIDENCE_THRESHOLD,
              frame_index: str = "stem", report_file: Optional[str] = None) -> list[Clip]:
    """Reads one split of one MAFW fold.

    Args:
        root: the MAFW folder, or a folder holding it (one nesting level).
        split: "train" or "test".
        fold: 1..5.
        frame_set: frame folder path (module doc for the default).
        au_source: folder of OpenFace CSVs (MAFW has no published AU labels).
        split_root: the `Train & Test Set` folder (renamed in some copies).
        label_type: "single" | "compound".
        caption: "no_caption" | "with_caption" (which lists to read).
        on_error, report, check_frames, check_leakage, split_file,
        confidence_threshold, frame_index, report_file: as in
            `dfew.read_dfew`.

    Returns:
        `Clip` records in list order.

    Raises:
        ValueError: bad `split`, `fold`, `label_type`, `caption`, `on_error`,
            or an ambiguous frame set.
        FileNotFoundError: no MAFW layout, fold list or frame set.
        DatasetError: with on_error="raise", listing every problem.
    """
    _check_arguments(on_error, split, fold, label_type, caption)
    report = Report() if report is None else report
    first = len(report.problems)
    markers = (split_root, "Labels", "data", "frames_crop_align_224")
    base = common.find_base(root, markers)
    if base is None:
        raise FileNotFoundError(f"no MAFW layout under {root!r} or one level below it: "
                                f"expected one of {list(markers)}")
    frame_root = find_frame_root(base, frame_set)

    def list_path(s: str, f: int) -> Optional[str]:
        return common.resolve_path(
            base, (os.path.join(split_root, label_type, caption, f"set_{f}", f"{s}.txt"),))[0]

    path = split_file or list_path(split, fold)
    if path is None:
        expected = os.path.join(base, split_root, label_type, caption, f"set_{fold}",
                                f"{split}.txt")
        raise FileNotFoundError(f"MAFW list not found: {expected} (set split_root= if "
                                "the folder is renamed)")
    log.info("mafw %s fold %d: list %s, frames %s", split, fold, path, frame_root)

    entries = [clips_lib.Entry(key=k, label=y, origin=o, multi_label=m,
                               folders=[os.path.join(frame_root, k),
                                        os.path.join(frame_root, str(int(k)))])
               for k, y, m, o in parse_fold_list(path, report, label_type=label_type)]
    entries = clips_lib.drop_duplicates(entries, report)
    if check_leakage and split_file is None:
        entries = _drop_leaked(entries, list_path, split, fold, label_type, report)
    au = None
    if au_source is not None:
        au = AUSource(au_source, "mafw", report, confidence_threshold=confidence_threshold,
                      frame_index=frame_index, full_length=False)
    result = clips_lib.build_clips(entries, dataset="mafw", split=split, fold=fold,
                                   classes=classes_lib.class_names("mafw"),
                                   report=report, check_frames=check_frames, au=au)
    common.finish(report, first, on_error, path, report_file)
    return result


def _check_arguments(on_error: str, split: str, fold: Optional[int], label_type: str,
                     caption: str) -> None:
    """Raises ValueError for an argument of `read_mafw` outside its choices."""
    common.check_on_error(on_error)
    if split not in ("train", "test"):
        raise ValueError(f"MAFW split must be 'train' or 'test', got {split!r}")
    if fold not in FOLDS:
        raise ValueError(f"MAFW needs fold in {FOLDS}, got {fold!r}")
    if label_type not in LABEL_TYPES:
        raise ValueError(f"label_type must be one of {LABEL_TYPES}, got {label_type!r}")
    if caption not in CAPTIONS:
        raise ValueError(f"caption must be one of {CAPTIONS}, got {caption!r}")


def _drop_leaked(entries: list, list_path: Callable[[str, int], Optional[str]], split: str,
                 fold: int, label_type: str, report: Report) -> list:
    """Drops (and reports) clips listed in another split as well.

    The other split of the fold, and for a test split every other fold's test
    split.

    Args:
        entries: the split's `clips_lib.Entry` list.
        list_path: `(split, fold) -> path of its list, or None`.
    """
    def keys(p: Optional[str]) -> dict[str, str]:
        if p is None:
            return {}
        return {k: o for k, _, _, o in parse_fold_list(p, Report(), label_type=label_type)}

    other = "test" if split == "train" else "train"
    entries = clips_lib.check_disjoint(entries, keys(list_path(other, fold)),
                                       f"in train and test of fold {fold}", report)
    if split == "test":
        for f in FOLDS:
            if f != fold:
                entries = clips_lib.check_disjoint(
                    entries, keys(list_path("test", f)),
                    f"in the test sets of folds {fold} and {f}", report)
    return entries
