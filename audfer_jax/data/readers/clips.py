"""From parsed split lines to `Clip` records: folders, frames, AUs, checks.

Every reader parses its own label files into `Entry` records, then calls
`build_clips`, which applies the rules shared by all datasets
(../shared/spec/datasets.md sections 0 and 9): first existing frame folder,
frames sorted by trailing integer, corrupt frames rejected, AU labels attached,
counts and warnings reported. Duplicates (`drop_duplicates`) and leakage
(`check_disjoint`) are checked here too.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Iterable, Optional, Sequence

import numpy as np

from audfer_jax.data.readers import common
from audfer_jax.data.readers.au_labels import AUSource
from audfer_jax.data.records import Clip, Report

log = logging.getLogger("audfer_jax.data.readers")

# Clips shorter than the 16 frames every backbone samples are accepted and
# padded by the sampler, but counted (datasets.md section 9).
SHORT_CLIP_FRAMES = 16


@dataclasses.dataclass
class Entry:
    """One clip line of a split file or manifest, before its folder is read.

    Attributes:
        key: canonical clip key.
        label: canonical class index (-1 for a compound label without a single
            class).
        origin: `file:line` of the line.
        folders: candidate frame folders, the first existing one is used.
        multi_label: class indices of a compound label (MAFW), or None.
        num_frames_hint: a manifest's frame count, checked against the folder.
    """
    key: str
    label: int
    origin: str
    folders: list[str]
    multi_label: Optional[tuple[int, ...]] = None
    num_frames_hint: Optional[int] = None


def drop_duplicates(entries: Sequence[Entry], report: Report) -> list[Entry]:
    """Removes every clip whose key appears twice, as an error quoting both lines.

    A duplicate is an error even when the labels agree (datasets.md section 9);
    with `on_error="skip"` all lines of that key are dropped, because which one
    is right cannot be known.
    """
    first: dict[str, Entry] = {}
    bad: set[str] = set()
    for e in entries:
        if e.key in first:
            f = first[e.key]
            report.add(e.origin, "duplicate id",
                       f"{e.key} also at {f.origin} (labels {f.label} and {e.label})")
            bad.add(e.key)
        else:
            first[e.key] = e
    return [e for e in entries if e.key not in bad]


def check_disjoint(entries: Sequence[Entry], other: dict[str, str], what: str,
                   report: Report) -> list[Entry]:
    """Leakage check: reports and drops entries whose key is also in `other`.

    Args:
        entries: this split's entries.
        other: `{key: origin}` of a split that must be disjoint from this one
            (the other split of the same fold, or another fold's test set).
        what: describes the rule broken, e.g. "in train and test of fold 1".
        report: receives one problem per leaking clip.
    """
    out = []
    for e in entries:
        if e.key in other:
            report.add(e.origin, "leakage", f"{e.key} {what} (also at {other[e.key]})")
        else:
            out.append(e)
    return out


def build_clips(entries: Iterable[Entry], *, dataset: str, split: str, fold: int,
                classes: Sequence[str], report: Report, check_frames: bool = True,
                au: Optional[AUSource] = None) -> list[Clip]:
    """Reads the frame folders of `entries` and makes `Clip` records.

    Problems (missing folder with every path tried, empty folder, bad frame
    names, corrupt frames naming frame, clip and line, AU errors) go to
    `report.problems` and the clip is left out; the caller raises or skips.
    Counts: `clips`, `class/<name>`, `clips_under_16`, `frames`; a manifest
    frame count that differs from the folder is a warning (the folder wins).

    Args:
        entries: parsed lines.
        dataset: dataset name, for messages.
        split: "train" or "test".
        fold: 1..5, or 0 for single-split datasets.
        classes: class names, for the counts.
        report: the run's report.
        check_frames: reject size-0 / bad-magic frame files (one 8-byte read
            per frame).
        au: AU labels to attach; without it `au_frames`/`au_valid` stay None.

    Returns:
        the clips, in entry order.
    """
    clips = []
    for e in entries:
        folder = next((f for f in e.folders if os.path.isdir(f)), None)
        if folder is None:
            report.add(e.origin, "missing frame folder",
                       f"clip {e.key}; tried {', '.join(e.folders)}")
            continue
        try:
            frames = common.list_frames(folder, check_frames=check_frames)
        except common.FrameFolderError as err:
            report.add(e.origin, err.reason, f"clip {e.key}: {err.detail}")
            continue
        au_frames = au_valid = None
        if au is not None:
            au_frames, au_valid, why = au.lookup(e.key, frames)
            if why is not None:
                report.add(e.origin, "AU labels do not fit the frames",
                           f"clip {e.key}: {why}")
                continue
        if e.num_frames_hint is not None and e.num_frames_hint != len(frames):
            report.warn(e.origin, "num_frames mismatch",
                        f"clip {e.key}: manifest says {e.num_frames_hint}, folder "
                        f"{folder} has {len(frames)} (the folder wins)")
            report.count("num_frames_mismatch")
        clips.append(Clip(key=e.key, label=e.label, frames=frames, split=split,
                          fold=fold, origin=e.origin, au_frames=au_frames,
                          au_valid=au_valid, multi_label=e.multi_label))
    if au is not None:
        au.report_unused()
    count_clips(clips, classes, report)
    return clips


def count_clips(clips: Sequence[Clip], classes: Sequence[str], report: Report) -> None:
    """Adds clip, class, frame and short-clip counts of `clips` to `report`."""
    for c in clips:
        report.count("clips")
        report.count("frames", c.num_frames)
        if 0 <= c.label < len(classes):
            report.count(f"class/{classes[c.label]}")
        if c.multi_label is not None and len(c.multi_label) > 1:
            report.count("compound_multi_class")
        if c.num_frames < SHORT_CLIP_FRAMES:
            report.count("clips_under_16")
    if clips:
        lengths = np.array([c.num_frames for c in clips])
        log.info("%d clips, frames min %d median %d max %d, %d under %d",
                 len(clips), lengths.min(), int(np.median(lengths)), lengths.max(),
                 int((lengths < SHORT_CLIP_FRAMES).sum()), SHORT_CLIP_FRAMES)
