"""Per-frame Action Unit labels: OpenFace 2.0 CSVs and AU-DFER text files.

Both become, per clip, `au_frames [num_frames, 18] uint8` (0/1 presence in the
`audfer_jax.au.AU_NAMES` order) and `au_valid [num_frames] bool` aligned with the
clip's frames (sorted by the trailing integer of the stem). A frame without an
entry is *missing* (`au_valid` False), never negative.

Spec: ../shared/spec/datasets.md sections 6a (OpenFace), 6b (AU-DFER files) and
6c (clip-level vote, `clip_au_target`).

AU sources accepted by `AUSource` (the `au_source` argument of `read_split`):

- a folder of OpenFace 2.0 `FeatureExtraction` CSVs, one per clip. The CSV of a
  clip is the first of these that exists (paths relative to the folder):
  1. `<key>.csv` (FERV39k: `Scene/Emotion/id.csv`, a tree mirroring the frames),
  2. `<key with "/" replaced by "_">.csv` (FERV39k: `Action_Happy_0267.csv`),
  3. `<last component of the key as an int, unpadded>.csv` (DFEW/MAFW `2522.csv`),
  4. `<key>/<last component of the key>.csv` (OpenFace run with `-out_dir`
     per clip).
  A clip without a CSV gets `au_valid` all False (counted as `au/no_csv`).
- an AU-DFER text file (`AU_DFEW.txt`, `AU_FERV39K.txt`, section 6b).
"""

from __future__ import annotations

import csv
import io
import os
import re
from typing import Optional, Sequence, Union

import numpy as np

from audfer_jax.au import AU_NAMES, NUM_AUS
from audfer_jax.data.readers import common
from audfer_jax.data.records import Report

# OpenFace 2.0 presence columns are `AUxx_c`; intensity `AUxx_r` exists for all
# but AU28 (OpenFace wiki, "Action Units"; datasets.md 6a).
PRESENCE_COLUMNS = tuple(f"{name}_c" for name in AU_NAMES)
DEFAULT_CONFIDENCE_THRESHOLD = 0.8   # datasets.md 6a: below it a row is missing.
FRAME_INDEX_CHOICES = ("stem", "lexicographic")
# Number of line numbers quoted per rejection reason (datasets.md 6b "Report").
_QUOTED_LINES = 10


class AULabelError(ValueError):
    """An AU label file cannot be used at all (e.g. a CSV without AU columns)."""


# --------------------------------------------------------------------------
# OpenFace 2.0 CSVs (datasets.md 6a)
# --------------------------------------------------------------------------

def read_openface_csv(path: str, num_frames_or_frame_files: Union[int, Sequence[str]],
                      *, confidence_threshold: float = DEFAULT_CONFIDENCE_THRESHOLD,
                      report: Optional[Report] = None) -> tuple[np.ndarray, np.ndarray]:
    """Reads one OpenFace 2.0 `FeatureExtraction` CSV into per-frame AU presence.

    Column names carry a leading space (`" AU01_c"`); they are stripped and
    columns are found by name, never by position. `face_id` may be absent
    (older builds). A row is valid when `success == 1` and `confidence >=
    confidence_threshold`; when several rows share a frame, the most confident
    one is kept. Presence values (`1`, `1.00`, ...) are present when >= 0.5.

    Frame mapping: OpenFace's `frame` is 1-based. On an image folder OpenFace
    reads the files in plain lexicographic order, so frame k is the k-th file of
    `sorted(frame_files)` (with `1.jpg..16.jpg`, frame 2 is `10.jpg`); it is
    mapped back to its position in `frame_files` (temporal order). With an int
    (a video), frame k is index k - 1.

    Args:
        path: the CSV file.
        num_frames_or_frame_files: the clip's frame count (video input), or its
            `[num_frames]` frame paths in temporal order (image-folder input).
        confidence_threshold: rows below it are missing (datasets.md 6a: 0.8).
        report: optional; receives `au/...` counts and a warning for rows that
            do not parse or whose frame is outside the clip.

    Returns:
        `au [num_frames, 18] uint8` (0/1) and `valid [num_frames] bool`.

    Raises:
        AULabelError: naming the file when the header lacks `frame`,
            `confidence`, `success` or any of the 18 `AUxx_c` columns.
        FileNotFoundError: when the file does not exist.
    """
    n, position = _openface_positions(num_frames_or_frame_files)
    with open(path, "rb") as f:
        data = f.read()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    reader = csv.reader(io.StringIO(data.decode("utf-8", errors="replace"), newline=""))
    header = next(reader, None)
    if header is None:
        raise AULabelError(f"{path}: empty OpenFace CSV (expected a header line)")
    columns = _openface_columns(header, path)
    au, valid, bad_rows, outside = _openface_rows(reader, columns, n, position,
                                                  confidence_threshold)
    if report is not None:
        report.count("au/openface_csvs")
        if bad_rows:
            report.count("au/openface_bad_rows", len(bad_rows))
            report.warn(f"{path}:{bad_rows[0]}", "unparsable OpenFace row",
                        f"{len(bad_rows)} row(s), lines {bad_rows[:_QUOTED_LINES]}")
        if outside:
            report.count("au/openface_rows_beyond_clip", outside)
            report.warn(path, "OpenFace frame outside the clip",
                        f"{outside} row(s) with frame not in 1..{n}")
    return au, valid


def _openface_positions(num_frames_or_frame_files: Union[int, Sequence[str]]
                        ) -> tuple[int, Optional[list[int]]]:
    """`(num_frames, position)`: OpenFace frame k - 1 -> temporal index `position[k - 1]`.

    `position` is None for a video (an int frame count: frame k is index k - 1);
    for an image folder it maps the lexicographic file order back to the
    temporal order of the given frame paths.
    """
    if isinstance(num_frames_or_frame_files, (int, np.integer)):
        return int(num_frames_or_frame_files), None
    files = list(num_frames_or_frame_files)
    where = {p: i for i, p in enumerate(files)}
    return len(files), [where[p] for p in common.lexicographic(files)]


def _openface_columns(header: list[str], path: str) -> tuple[int, int, int, list[int]]:
    """`(frame, confidence, success, [18 AUxx_c])` column indices, found by name.

    Raises:
        AULabelError: a required column is missing.
    """
    names = [h.strip() for h in header]
    col = {name: i for i, name in enumerate(names)}
    missing = [c for c in ("frame", "confidence", "success") + PRESENCE_COLUMNS
               if c not in col]
    if missing:
        raise AULabelError(f"{path}:1: not an OpenFace 2.0 CSV; missing columns "
                           f"{missing} (found {len(names)} columns)")
    return col["frame"], col["confidence"], col["success"], [col[c] for c in PRESENCE_COLUMNS]


def _openface_rows(reader, columns: tuple[int, int, int, list[int]], n: int,
                   position: Optional[list[int]], confidence_threshold: float
                   ) -> tuple[np.ndarray, np.ndarray, list[int], int]:
    """Reads the data rows of an OpenFace CSV (`read_openface_csv` for the rules).

    Returns:
        `(au [n, 18] uint8, valid [n] bool, line numbers of unparsable rows,
        count of rows whose frame is outside 1..n)`.
    """
    i_frame, i_conf, i_succ, i_au = columns
    width = max([i_frame, i_conf, i_succ] + i_au) + 1
    au = np.zeros((n, NUM_AUS), np.uint8)
    valid = np.zeros((n,), bool)
    best_conf = np.full((n,), -np.inf)
    bad_rows, outside = [], 0
    for line_no, row in enumerate(reader, start=2):
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        try:
            if len(row) < width:
                raise ValueError("short row")
            frame = int(float(row[i_frame]))
            conf = float(row[i_conf])
            success = float(row[i_succ]) >= 0.5
            values = [float(row[i]) >= 0.5 for i in i_au]
        except ValueError:
            bad_rows.append(line_no)
            continue
        if not 1 <= frame <= n:
            outside += 1
            continue
        idx = frame - 1 if position is None else position[frame - 1]
        # Keep the most confident row of a frame, valid or not.
        if conf <= best_conf[idx]:
            continue
        best_conf[idx] = conf
        ok = success and conf >= confidence_threshold
        valid[idx] = ok
        au[idx] = values if ok else 0
    return au, valid, bad_rows, outside


# --------------------------------------------------------------------------
# AU-DFER text files (datasets.md 6b)
# --------------------------------------------------------------------------

def normalise_clip_key(text: str, dataset: str) -> Optional[str]:
    """The canonical clip key of a path-like key, or None if it has no id.

    DFEW, MAFW, demo: last component, extension dropped, int, `%05d`
    (`/x/DFEW_Face/2522.mp4` -> `02522`). FERV39k: last three components, id
    padded to 4 digits (`prefix/Action/Happy/267` -> `Action/Happy/0267`).
    Rebasing rule of datasets.md section 5.
    """
    parts = [p for p in text.replace("\\", "/").split("/") if p and p != "."]
    if not parts:
        return None
    dataset = dataset.lower()
    if dataset == "ferv39k":
        if len(parts) < 3:
            return None
        scene, emotion, cid = parts[-3], parts[-2], os.path.splitext(parts[-1])[0]
        if cid.isdigit():
            cid = f"{int(cid):04d}"
        return f"{scene}/{emotion}/{cid}"
    stem = parts[-1]
    # Drop `.mp4`, `.csv`, ... but keep ids that are purely numeric.
    stem = re.sub(r"\.[A-Za-z0-9]+$", "", stem)
    if not stem.isdigit():
        return None
    return f"{int(stem):05d}"


def read_audfer_txt(path: str, report: Optional[Report] = None, *,
                    dataset: str = "dfew") -> dict[str, dict[int, np.ndarray]]:
    """Parses an AU-DFER per-frame AU file (`AU_DFEW.txt`, `AU_FERV39K.txt`).

    Line format (datasets.md 6b): whitespace-separated; the last 18 tokens are
    0/1 in the `AU_NAMES` order; the token before them is the key
    (`02522.csv/7`, `02522/7`, `Action/Happy/0267/07`); anything before the key
    is ignored. The key is normalised (`\\` -> `/`, `.csv` before the last `/`
    dropped); its last component is the frame index k (int), the rest the clip
    key, matched with `normalise_clip_key`. CR, BOM and blank lines are
    accepted. Bad lines never abort the read: they are rejected, counted by
    reason and listed (first 10 line numbers per reason) as report warnings.
    A repeated (clip, frame) keeps its first line.

    Args:
        path: the text file.
        report: receives counts `au/lines_read`, `au/lines_accepted`,
            `au/rejected/<reason>` and warnings; optional.
        dataset: how clip keys are normalised ("dfew", "ferv39k", "mafw").

    Returns:
        `{clip_key: {k: [18] uint8}}`.

    Raises:
        FileNotFoundError: when the file does not exist.
    """
    return _parse_audfer(path, dataset.lower(), report)


def _parse_audfer(path: str, dataset: str, report: Optional[Report]
                  ) -> dict[str, dict[int, np.ndarray]]:
    with open(path, "rb") as f:
        data = f.read()
    out: dict[str, dict[int, np.ndarray]] = {}
    rejected: dict[str, list[int]] = {}
    n_read = n_ok = 0

    def reject(reason: str, number: int) -> None:
        rejected.setdefault(reason, []).append(number)

    for number, raw in common.split_lines(data):
        n_read += 1
        tokens = raw.decode("utf-8", errors="replace").split()
        if len(tokens) < NUM_AUS + 1:
            reject("fewer than 19 tokens (key + 18 AU values)", number)
            continue
        try:
            values = [float(t) for t in tokens[-NUM_AUS:]]
        except ValueError:
            reject("AU values not 0/1", number)
            continue
        if any(v not in (0.0, 1.0) for v in values):
            reject("AU values not 0/1", number)
            continue
        key = tokens[-NUM_AUS - 1].replace("\\", "/").rstrip("/")
        head, _, last = key.rpartition("/")
        if not head or not last.isdigit():
            reject("key without /<frame index>", number)
            continue
        head = re.sub(r"\.csv$", "", head, flags=re.IGNORECASE)
        clip_key = normalise_clip_key(head, dataset)
        if clip_key is None:
            reject("unmatched key", number)
            continue
        frames = out.setdefault(clip_key, {})
        k = int(last)
        if k in frames:
            reject("repeated (clip, frame) key", number)
            continue
        frames[k] = np.asarray(values, np.uint8)
        n_ok += 1
    if report is not None:
        report.count("au/lines_read", n_read)
        report.count("au/lines_accepted", n_ok)
        for reason, numbers in rejected.items():
            report.count(f"au/rejected/{reason}", len(numbers))
            report.warn(f"{path}:{numbers[0]}", f"AU line rejected: {reason}",
                        f"{len(numbers)} line(s), first lines {numbers[:_QUOTED_LINES]}")
    return out


def align_audfer(frames: Sequence[str], entries: dict[int, np.ndarray], *,
                 frame_index: str = "stem") -> tuple[np.ndarray, np.ndarray, int]:
    """Places one clip's AU-DFER entries on its frames.

    Args:
        frames: `[num_frames]` frame paths in temporal order.
        entries: `{k: [18] uint8}` from `read_audfer_txt`.
        frame_index: "stem": k is the frame whose stem ends in integer k (as the
            reference reads it); "lexicographic": k is the k-th file in plain
            lexicographic order (if OpenFace produced the labels on unpadded
            folders). datasets.md 6b "Meaning of k".

    Returns:
        `au [num_frames, 18] uint8`, `valid [num_frames] bool`, and the number of
        entries whose k names no frame of the clip.

    Raises:
        ValueError: for an unknown `frame_index`.
    """
    if frame_index not in FRAME_INDEX_CHOICES:
        raise ValueError(f"frame_index must be one of {FRAME_INDEX_CHOICES}, "
                         f"got {frame_index!r}")
    n = len(frames)
    if frame_index == "stem":
        where = {common.trailing_int(os.path.splitext(os.path.basename(p))[0]): i
                 for i, p in enumerate(frames)}
    else:
        pos = {p: i for i, p in enumerate(frames)}
        where = {k: pos[p] for k, p in enumerate(common.lexicographic(frames), start=1)}
    au = np.zeros((n, NUM_AUS), np.uint8)
    valid = np.zeros((n,), bool)
    beyond = 0
    for k, values in entries.items():
        i = where.get(k)
        if i is None:
            beyond += 1
            continue
        au[i] = values
        valid[i] = True
    return au, valid, beyond


# --------------------------------------------------------------------------
# The au_source of read_split
# --------------------------------------------------------------------------

class AUSource:
    """Per-frame AU labels for the clips of a split, from a folder or a file.

    Args:
        path: a folder of OpenFace CSVs or an AU-DFER text file (module doc).
        dataset: "dfew", "ferv39k", "mafw" or "demo" (key normalisation).
        report: receives counts and warnings.
        confidence_threshold: OpenFace rows below it are missing.
        frame_index: "stem" | "lexicographic" (AU-DFER files, `align_audfer`).
        full_length: the clips come from a full-length frame set (DFEW
            `clip_224x224`); AU-DFER keys that stop at 16 on a longer clip are
            then an error (datasets.md 6b: frame k of `_16f` is not frame k of
            the full clip).

    Raises:
        FileNotFoundError: when `path` does not exist.
    """

    def __init__(self, path: str, dataset: str, report: Report, *,
                 confidence_threshold: float = DEFAULT_CONFIDENCE_THRESHOLD,
                 frame_index: str = "stem", full_length: bool = True):
        if not os.path.exists(path):
            raise FileNotFoundError(f"au_source {path!r} does not exist (expected a "
                                    "folder of OpenFace CSVs or an AU-DFER .txt file)")
        if frame_index not in FRAME_INDEX_CHOICES:
            raise ValueError(f"frame_index must be one of {FRAME_INDEX_CHOICES}, "
                             f"got {frame_index!r}")
        self.path = path
        self.dataset = dataset.lower()
        self.report = report
        self.confidence_threshold = confidence_threshold
        self.frame_index = frame_index
        self.full_length = full_length
        self.is_folder = os.path.isdir(path)
        self.table = None if self.is_folder else _parse_audfer(path, self.dataset, report)
        self.used: set[str] = set()

    def report_unused(self) -> None:
        """Counts AU-DFER clip keys that no clip of this read asked for.

        An AU-DFER file covers every fold, so this is information
        (`au/keys_not_in_split`), not an error.
        """
        if self.table is not None:
            self.report.count("au/keys_not_in_split", len(set(self.table) - self.used))

    def csv_candidates(self, key: str) -> list[str]:
        """The CSV paths tried for clip `key`, in order (module doc)."""
        last = key.rsplit("/", 1)[-1]
        names = [f"{key}.csv", f"{key.replace('/', '_')}.csv"]
        if last.isdigit():
            names.append(f"{int(last)}.csv")
        names.append(f"{key}/{last}.csv")
        out = []
        for n in names:
            p = os.path.join(self.path, n)
            if p not in out:
                out.append(p)
        return out

    def lookup(self, key: str, frames: Sequence[str]
               ) -> tuple[np.ndarray, np.ndarray, Optional[str]]:
        """AU labels of one clip.

        Returns:
            `au [num_frames, 18] uint8`, `valid [num_frames] bool` (all False
            without labels) and an error reason for the clip, or None.
        """
        n = len(frames)
        empty = (np.zeros((n, NUM_AUS), np.uint8), np.zeros((n,), bool))
        if self.is_folder:
            for p in self.csv_candidates(key):
                if os.path.isfile(p):
                    try:
                        au, valid = read_openface_csv(
                            p, frames, confidence_threshold=self.confidence_threshold,
                            report=self.report)
                    except (AULabelError, UnicodeDecodeError) as e:
                        self.report.count("au/bad_csv")
                        self.report.warn(p, "unusable OpenFace CSV", str(e))
                        return (*empty, None)
                    self._count(valid)
                    return au, valid, None
            self.report.count("au/no_csv")
            return (*empty, None)
        self.used.add(key)
        entries = self.table.get(key)
        if not entries:
            self.report.count("au/clips_without_au")
            return (*empty, None)
        if (self.full_length and self.dataset in ("dfew", "demo") and n > 16
                and max(entries) <= 16):
            return (*empty, f"AU-DFER keys stop at {max(entries)} but the clip has {n} "
                            "frames: they index the 16-frame set (clip_224x224_16f); "
                            "use frame_set='16f' or OpenFace labels")
        au, valid, beyond = align_audfer(frames, entries, frame_index=self.frame_index)
        if beyond:
            self.report.count("au/indices_beyond_clip", beyond)
        self._count(valid)
        return au, valid, None

    def _count(self, valid: np.ndarray) -> None:
        if valid.any():
            self.report.count("au/clips_with_au")
        else:
            self.report.count("au/clips_without_au")


# --------------------------------------------------------------------------
# Clip-level target (datasets.md 6c)
# --------------------------------------------------------------------------

def clip_au_target(au_frames: np.ndarray, au_valid: np.ndarray,
                   indices: Optional[Sequence[int]] = None
                   ) -> tuple[np.ndarray, np.float32]:
    """Clip-level AU target: per-AU majority vote over the sampled frames.

    NumPy reference of datasets.md 6c. n = number of *distinct* sampled frame
    indices whose AU entry is valid (padding repeats count once); AU j is 1 when
    its positives >= n / 2 (ties positive). With n = 0 the target is all zeros
    and the mask 0, so the AU loss ignores the clip (the reference's all-ones
    target for such clips is deliberately not replicated).

    Args:
        au_frames: `[num_frames, 18] uint8` per-frame presence (0/1).
        au_valid: `[num_frames] bool`.
        indices: sampled frame indices `[T]` int in [0, num_frames); None votes
            over every frame (`au_vote = all`).

    Returns:
        `target [18] float32` in {0, 1} and `has_au` float32 scalar (0 or 1).

    Raises:
        IndexError: for indices outside the clip.
    """
    au_frames = np.asarray(au_frames)
    au_valid = np.asarray(au_valid, bool)
    n_frames = au_valid.shape[0]
    if indices is None:
        chosen = np.arange(n_frames)
    else:
        chosen = np.unique(np.asarray(indices, np.int64))
        if chosen.size and (chosen[0] < 0 or chosen[-1] >= n_frames):
            raise IndexError(f"sampled indices {chosen.tolist()} outside [0, {n_frames})")
    chosen = chosen[au_valid[chosen]]
    n = chosen.size
    if n == 0:
        return np.zeros((au_frames.shape[-1],), np.float32), np.float32(0.0)
    positives = (au_frames[chosen] > 0).sum(axis=0)
    return (2 * positives >= n).astype(np.float32), np.float32(1.0)
