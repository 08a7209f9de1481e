"""Dataset readers: official release layouts and manifests -> `Clip` records.

Pure Python and NumPy (no TensorFlow). Spec: ../shared/spec/datasets.md
sections 0-6 and 9.

- `read_split(dataset, root, split, fold, ...)`: DFEW, FERV39k, MAFW and the
  synthetic demo set (DFEW layout) from their official split files.
- `read_manifest(path, dataset, frame_root, source_order=...)`: third-party
  clip lists (Former-DFER, MAE-DFER, S2D formats).
- `clip_au_target(au_frames, au_valid, indices)`: the clip-level AU majority
  vote (NumPy reference of the input pipeline's version).
- `au_labels.read_openface_csv`, `au_labels.read_audfer_txt`: per-frame AUs.

Errors: with `on_error="raise"` (default) a reader scans everything, then raises
one `audfer_jax.data.records.DatasetError` listing every problem as
`file:line: reason`; with `on_error="skip"` it drops only the offending clips
and records them in the `Report`.
"""

from __future__ import annotations

import os
from typing import Optional

from audfer_jax.data.readers.au_labels import clip_au_target
from audfer_jax.data.readers.dfew import find_dfew_base, read_dfew
from audfer_jax.data.readers.ferv39k import read_ferv39k
from audfer_jax.data.readers.mafw import read_mafw
from audfer_jax.data.readers.manifests import read_manifest
from audfer_jax.data.records import Clip, Report

DATASETS = ("dfew", "ferv39k", "mafw", "demo")

__all__ = ["DATASETS", "clip_au_target", "read_manifest", "read_split"]


def read_split(dataset: str, root: str, split: str, fold: Optional[int] = None, *,
               frame_set: Optional[str] = None, au_source: Optional[str] = None,
               on_error: str = "raise", report: Optional[Report] = None,
               **options) -> list[Clip]:
    """Reads one split of a dataset from its official release layout.

    Args:
        dataset: "dfew", "ferv39k", "mafw", or "demo" (the synthetic set of
            `audfer_jax.data.demo`, in the DFEW layout; with `au_source=None`
            its `OpenFace/` folder is used when present).
        root: the dataset folder or a folder holding it (one nesting level).
        split: "train" or "test".
        fold: 1..5 for DFEW, MAFW and demo (demo: None or 0 means 1); ignored
            for FERV39k.
        frame_set: DFEW "full" | "16f" | path; FERV39k and MAFW a path.
        au_source: folder of OpenFace 2.0 CSVs or an AU-DFER .txt file
            (`au_labels` module doc for the CSV naming rule). Fills
            `au_frames [num_frames, 18] uint8` and `au_valid [num_frames] bool`.
        on_error: "raise" or "skip".
        report: collects problems, warnings and counts (`class/<name>`,
            `clips_under_16`, `au/...`).
        **options: passed to the dataset reader (`read_dfew`, `read_ferv39k`,
            `read_mafw`): check_frames, check_leakage, split_file,
            confidence_threshold, frame_index, report_file; MAFW split_root,
            label_type, caption.

    Returns:
        `Clip` records in split-file order.

    Raises:
        ValueError: unknown dataset or bad arguments.
        FileNotFoundError: layout, split file or frame set not found.
        DatasetError: with on_error="raise", listing every problem.
    """
    name = dataset.lower()
    kwargs = dict(frame_set=frame_set, au_source=au_source, on_error=on_error,
                  report=report, **options)
    if name == "dfew":
        return read_dfew(root, split, fold, **kwargs)
    if name == "demo":
        # The demo set has DFEW's 5 folds; configs treat it as one split (fold 1).
        fold = 1 if fold in (None, 0) else fold
        if au_source is None:
            candidate = os.path.join(find_dfew_base(root), "OpenFace")
            kwargs["au_source"] = candidate if os.path.isdir(candidate) else None
        return read_dfew(root, split, fold, dataset="demo", **kwargs)
    if name == "ferv39k":
        return read_ferv39k(root, split, fold, **kwargs)
    if name == "mafw":
        return read_mafw(root, split, fold, **kwargs)
    raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")
