"""The clip record every reader produces and every later stage consumes.

Contract: ../shared/spec/datasets.md section 0.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np


@dataclasses.dataclass
class Clip:
    """One clip of a split, as read from a dataset's release files.

    Attributes:
        key: canonical clip key: DFEW `02522`, FERV39k `Action/Happy/0267`, MAFW
            `03747`.
        label: int class index in the canonical order of `audfer_jax.classes`
            (-1 for an unlabelled clip).
        frames: frame paths sorted by the trailing integer of the file stem.
        split: "train" or "test".
        fold: 1..5 for DFEW and MAFW, 0 for single-split datasets.
        origin: the source `file:line` the clip came from, quoted by later errors.
        au_frames: optional `[num_frames, 18] uint8` per-frame AU presence, aligned
            with `frames`, in `audfer_jax.au.AU_NAMES` order.
        au_valid: optional `[num_frames] bool`, True where `au_frames` has an entry.
        multi_label: optional tuple of class indices of a compound label (MAFW).
    """
    key: str
    label: int
    frames: list[str]
    split: str
    fold: int
    origin: str
    au_frames: Optional[np.ndarray] = None
    au_valid: Optional[np.ndarray] = None
    multi_label: Optional[tuple[int, ...]] = None

    @property
    def num_frames(self) -> int:
        """Frames counted from the folder (never taken from a manifest)."""
        return len(self.frames)


@dataclasses.dataclass
class Problem:
        """One bad input: where it is and what is wrong with it."""
        origin: str   # `file:line`, or a path
        reason: str   # short reason class, e.g. "missing frame folder"
        detail: str = ""

        def __str__(self) -> str:
                return f"{self.origin}: {self.reason}" + (f" ({self.detail})" if self.detail else "")


@dataclasses.dataclass
class Report:
        """Collects the problems and counts of one read or prepare run.

        Readers append to it; with `on_error="raise"` they raise one
        `DatasetError` listing every problem once the whole manifest is scanned;
        with `on_error="skip"` they drop the offending clips and keep going.
        """
        problems: list[Problem] = dataclasses.field(default_factory=list)
        warnings: list[Problem] = dataclasses.field(default_factory=list)
        counts: dict[str, int] = dataclasses.field(default_factory=dict)

        def add(self, origin: str, reason: str, detail: str = "") -> None:
                self.problems.append(Problem(origin, reason, detail))

        def warn(self, origin: str, reason: str, detail: str = "") -> None:
                self.warnings.append(Problem(origin, reason, detail))

        def count(self, name: str, n: int = 1) -> None:
                self.counts[name] = self.counts.get(name, 0) + n

        def summary(self, limit: int = 50) -> str:
                """The first `limit` problems as `file:line: reason`, then counts by reason."""
                lines = [str(p) for p in self.problems[:limit]]
                if len(self.problems) > limit:
                        lines.append(f"... and {len(self.problems) - limit} more")
                by_reason: dict[str, int] = {}
                for p in self.problems:
                        by_reason[p.reason] = by_reason.get(p.reason, 0) + 1
                lines += [f"{n} x {r}" for r, n in sorted(by_reason.items())]
                return "\n".join(lines)


class DatasetError(ValueError):
        """Bad dataset input. The message lists every problem as `file:line: reason`."""

        def __init__(self, report: Report, what: str = "dataset"):
                self.report = report
                super().__init__(f"{len(report.problems)} problem(s) in {what}:\n"
                                                  + report.summary())
