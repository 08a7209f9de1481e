"""Helpers shared by the dataset readers: roots, text lines, frame folders.

Pure Python (no NumPy, no TensorFlow). Rules from
../shared/spec/datasets.md sections 0 and 9:

- Roots: the documented layout under the user's root, then one extra nesting
  level (archives often unpack to `X/X/`).
- Frame files: `.jpg/.jpeg/.png` in any case; other files are ignored. Frames
  are ordered by the trailing integer of the file stem (`1.jpg`,
  `00001_00012.jpg`, `07.png` sort as 1, 12, 7), never lexicographically
  (lexicographic order puts `10.jpg` before `2.jpg`, a known bug of most public
  loaders). A stem without a trailing integer, or an integer used twice, is an
  error for that clip.
- Text files: CRLF, lone CR, a UTF-8 BOM, tabs, trailing spaces and blank lines
  are accepted.
- Corrupt frames: a size-0 file or one whose first bytes are not a JPEG/PNG
  signature is an error at index time (a full decode is the `validate` step of
  the pipeline, not done here).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from typing import Iterable, Optional, Sequence

from audfer_jax.data.records import DatasetError, Report

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

# File signatures: JPEG (ISO/IEC 10918-1, SOI marker FFD8 then a marker FF),
# PNG (PNG spec section 5.2, the 8-byte signature).
_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

_TRAILING_INT = re.compile(r"(\d+)$")

ON_ERROR_CHOICES = ("raise", "skip")

log = logging.getLogger("audfer_jax.data.readers")


class FrameFolderError(ValueError):
    """A clip's frame folder cannot be used.

    Attributes:
        reason: short reason class ("missing frame folder", "corrupt frame", ...).
        detail: the paths and values involved.
    """

    def __init__(self, reason: str, detail: str):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


@dataclasses.dataclass(frozen=True)
class Line:
    """One non-blank line of a text file.

    Attributes:
        number: 1-based line number in the file (blank lines are counted).
        text: the line without its end-of-line characters, BOM or trailing
            whitespace.
        raw: the same line as bytes (for files with mixed encodings, e.g. MAFW
            captions).
    """
    number: int
    text: str
    raw: bytes


def trailing_int(stem: str) -> Optional[int]:
    """The integer at the end of a file stem (`00001_00012` -> 12), or None."""
    m = _TRAILING_INT.search(stem)
    return int(m.group(1)) if m else None


def is_image_name(name: str) -> bool:
    """True for `.jpg/.jpeg/.png` names in any case."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def split_lines(data: bytes) -> list[tuple[int, bytes]]:
    """Splits file bytes into `(line_number, bytes)` of the non-blank lines.

    Accepts CRLF, lone CR and LF line ends and a leading UTF-8 BOM; strips
    trailing whitespace (spaces, tabs) of each line; skips blank lines but
    keeps counting them so that numbers match a text editor.
    """
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    out = []
    for i, raw in enumerate(re.split(rb"\r\n|\r|\n", data), start=1):
        raw = raw.rstrip()
        if raw:
            out.append((i, raw))
    return out


def read_lines(path: str, report: Optional[Report] = None, *,
               encoding: str = "utf-8") -> list[Line]:
    """Reads the non-blank lines of a text file, tolerant of CRLF, CR, BOM.

    Args:
        path: the file.
        report: where lines that do not decode are recorded as problems
            ("label fields not ASCII/UTF-8"); without one they raise.
        encoding: strict decoding applied to each line.

    Returns:
        `Line` records of every non-blank line that decodes.

    Raises:
        FileNotFoundError: when `path` does not exist.
        DatasetError: for an undecodable line when `report` is None.
    """
    with open(path, "rb") as f:
        data = f.read()
    lines = []
    own = Report() if report is None else report
    for number, raw in split_lines(data):
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError as e:
            own.add(f"{path}:{number}", "line not " + encoding.upper(),
                    f"{e.reason} at byte {e.start}: {raw[:60]!r}")
            continue
        lines.append(Line(number, text.lstrip("\ufeff"), raw))
    if report is None and own.problems:
        raise DatasetError(own, path)
    return lines


def find_base(root: str, markers: Sequence[str]) -> Optional[str]:
    """The folder at `root` or one level below it that holds any of `markers`.

    Args:
        root: the user's root.
        markers: relative paths whose presence identifies the dataset base
            (e.g. `EmoLabel_DataSplit`).

    Returns:
        `root` itself if it holds a marker, else the first (sorted) sub-folder
        that does, else None.
    """
    for base in _one_level(root):
        if any(os.path.exists(os.path.join(base, m)) for m in markers):
            return base
    return None


def _one_level(root: str) -> list[str]:
    out = [root]
    try:
        subs = sorted(e.path for e in os.scandir(root) if e.is_dir())
    except OSError:
        subs = []
    return out + subs


def resolve_path(base: str, relatives: Sequence[str]) -> tuple[Optional[str], list[str]]:
    """Finds the first existing `base/rel` or `base/<sub>/rel` (one nesting).

    Absolute entries of `relatives` are tried as they are.

    Returns:
        (the path found or None, every path tried) so that errors can list them.
    """
    tried = []
    for rel in relatives:
        if os.path.isabs(rel):
            tried.append(rel)
            if os.path.exists(rel):
                return rel, tried
            continue
        for b in _one_level(base):
            p = os.path.join(b, rel)
            tried.append(p)
            if os.path.exists(p):
                return p, tried
    return None, tried


def list_frames(folder: str, *, check_frames: bool = True) -> list[str]:
    """Frame paths of one clip folder, sorted by the stem's trailing integer.

    Args:
        folder: the clip's frame folder.
        check_frames: also reject size-0 files and files whose first bytes are
            not a JPEG or PNG signature (one small read per frame).

    Returns:
        `[num_frames]` paths (`folder/name`), in temporal order.

    Raises:
        FrameFolderError: missing folder, no images, a stem without trailing
            integer, a repeated integer, or corrupt frames (naming each).
    """
    try:
        names = [e.name for e in os.scandir(folder)
                 if is_image_name(e.name) and not e.is_dir()]
    except FileNotFoundError:
        raise FrameFolderError("missing frame folder", folder) from None
    except NotADirectoryError:
        raise FrameFolderError("frame folder is not a directory", folder) from None
    if not names:
        raise FrameFolderError("no images in frame folder",
                               f"{folder} (expected .jpg/.jpeg/.png files)")
    keyed = []
    seen: dict[int, str] = {}
    for name in names:
        k = trailing_int(os.path.splitext(name)[0])
        if k is None:
            raise FrameFolderError("frame name without trailing integer",
                                   os.path.join(folder, name))
        if k in seen:
            raise FrameFolderError(
                "repeated frame number",
                f"{os.path.join(folder, seen[k])} and {name} are both frame {k}")
        seen[k] = name
        keyed.append((k, name))
    keyed.sort()
    frames = [os.path.join(folder, name) for _, name in keyed]
    if check_frames:
        bad = [f"{os.path.basename(p)} ({why})" for p in frames
               if (why := frame_defect(p)) is not None]
        if bad:
            shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            raise FrameFolderError("corrupt frame", f"{folder}: {shown}")
    return frames


def frame_defect(path: str) -> Optional[str]:
    """Why a frame file is unusable (`"size 0"`, `"bad magic bytes"`), or None.

    Only the first 8 bytes are read; a full decode happens in `validate`.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        return f"unreadable: {e.strerror}"
    if not head:
        return "size 0"
    ext = os.path.splitext(path)[1].lower()
    if head.startswith(_JPEG_MAGIC) or head.startswith(_PNG_MAGIC):
        return None
    return f"bad magic bytes {head[:4].hex()} for {ext}"


def lexicographic(frames: Iterable[str]) -> list[str]:
    """The order in which OpenFace 2.0 reads an image folder.

    OpenFace sorts the file paths of a folder as plain strings, so its frame
    k (1-based) is the k-th path of this list, not `k.jpg`.
    """
    return sorted(frames)


def check_on_error(on_error: str) -> None:
    """Raises ValueError unless `on_error` is "raise" or "skip"."""
    if on_error not in ON_ERROR_CHOICES:
        raise ValueError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}")


def finish(report: Report, first_problem: int, on_error: str, what: str,
           report_file: Optional[str] = None) -> None:
    """Ends a read: raise one error, or log the skipped problems.

    Args:
        report: the run's report.
        first_problem: index of the first problem of this read in
            `report.problems` (a shared report may already hold others).
        on_error: "raise" raises one `DatasetError` listing every new problem;
            "skip" logs them (and writes them to `report_file` if given).
        what: names the input in the message (a split file, a manifest).
        report_file: optional path of a text file for the problem list.

    Raises:
        DatasetError: with `on_error="raise"` when this read found problems.
    """
    new = report.problems[first_problem:]
    if not new:
        return
    sub = Report(problems=list(new), warnings=[], counts={})
    if on_error == "raise":
        raise DatasetError(sub, what)
    text = sub.summary()
    log.warning("skipped %d problem(s) in %s:\n%s", len(new), what, text)
    if report_file:
        with open(report_file, "a", encoding="utf-8") as f:
            f.write(f"# {what}\n{text}\n")
