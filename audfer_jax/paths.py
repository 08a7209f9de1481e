"""Every path a user gives: local folders or cloud storage URLs, one API.

A path is either a local path (made absolute once, by `resolve`) or a URL of
an object store that `etils.epath` knows: ``gs://`` (Google Cloud Storage)
first, ``s3://``, ``az://`` and ``hf://`` where their fsspec filesystem
package is installed (etils/epath/gpath.py, `_URI_SCHEMES`). URLs pass through
unchanged, so that tf.data, TFDS, TensorBoard's writers and Orbax, which take
them natively, get exactly what the user typed.

Which library does the I/O (`etils.epath` decides, per call):

* local paths: the `os` module;
* URLs with TensorFlow installed: TensorFlow's own filesystems
  (`tf.io.gfile`), the same ones tf.data and TFDS use;
* URLs without TensorFlow, or with ``EPATH_USE_TF=false``: fsspec, i.e.
  `gcsfs` for ``gs://`` (install it on such hosts) or `s3fs` for ``s3://``.

Orbax writes its arrays through tensorstore, which has its own GCS and S3
drivers; nothing here is involved.

Object stores have no real folders (`makedirs` is a no-op there, `isdir` is
true when objects exist under the prefix) and no append: `open_append` keeps
the text of an appended file in memory and rewrites the whole object on flush.

Within audfer_jax, this module alone calls `os.path.abspath`, `os.makedirs`,
`os.path.isdir`/`exists`, `os.listdir` and built-in `open` on a user path.
Files the user never names (a frame inside a local release folder, a config
`.py` that must be imported, a video decoded by PyAV) stay on local APIs.
"""

from __future__ import annotations

import builtins
import fnmatch
import os
import posixpath
import re
import time
from typing import IO, Union

from etils import epath

PathLike = Union[str, os.PathLike]

# The URL schemes etils.epath 1.x maps to a filesystem (etils/epath/gpath.py,
# `_URI_SCHEMES`); any other `scheme://` is refused with a clear error.
REMOTE_SCHEMES = ("gs", "s3", "az", "hf")
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def is_remote(path: PathLike) -> bool:
    """True for a URL (``gs://bkt/x``), False for a local path.

    Raises:
        ValueError: a URL whose scheme `etils.epath` does not support
            (e.g. ``http://``), naming the supported ones.
    """
    m = _URL.match(os.fspath(path))
    if m is None:
        return False
    if m.group(1) not in REMOTE_SCHEMES:        # epath matches them lower case only
        raise ValueError(f"{os.fspath(path)!r}: unsupported URL scheme {m.group(1)!r}; "
                         f"expected a local path or one of "
                         f"{', '.join(s + '://' for s in REMOTE_SCHEMES)}")
    return True


def resolve(path: PathLike) -> str:
    """The canonical string of a user path.

    Local: `~` expanded and made absolute (relative to the current directory).
    URL: unchanged except for trailing slashes (``gs://bkt/run/`` ->
    ``gs://bkt/run``).

    Raises:
        ValueError: empty path, or an unsupported URL scheme.
    """
    text = os.fspath(path)
    if not text:
        raise ValueError("empty path")
    if is_remote(text):
        return text.rstrip("/") if not text.endswith("://") else text
    return os.path.abspath(os.path.expanduser(text))


def join(base: PathLike, *parts: str) -> str:
    """`base/part/...`: '/'-joined for URLs, `os.path.join` locally.

    As with `os.path.join`, an absolute or URL part replaces what precedes it.
    """
    base = os.fspath(base)
    if any(_URL.match(os.fspath(p)) for p in parts):
        return join(*parts)
    if is_remote(base):
        return posixpath.join(base, *parts)
    return os.path.join(base, *parts)


def dirname(path: PathLike) -> str:
    """The parent of `path` (``gs://bkt/run/best/6`` -> ``gs://bkt/run/best``)."""
    text = os.fspath(path)
    if is_remote(text):
        return posixpath.dirname(text.rstrip("/"))
    return os.path.dirname(os.path.normpath(text))


def basename(path: PathLike) -> str:
    """The last component of `path`, ignoring a trailing slash."""
    text = os.fspath(path)
    if is_remote(text):
        return posixpath.basename(text.rstrip("/"))
    return os.path.basename(os.path.normpath(text))


def _p(path: PathLike) -> epath.Path:
    return epath.Path(os.fspath(path))


def exists(path: PathLike) -> bool:
    """True when a file or folder (on object stores: an object or a prefix) exists."""
    return _p(path).exists()


def isdir(path: PathLike) -> bool:
    """True for a folder (on object stores: a prefix with objects under it)."""
    return _p(path).is_dir()


def isfile(path: PathLike) -> bool:
    """True for a file (on object stores: an object)."""
    p = _p(path)
    return p.exists() and not p.is_dir()


def makedirs(path: PathLike) -> None:
    """Creates `path` and its parents if missing (a no-op below a bucket)."""
    _p(path).mkdir(parents=True, exist_ok=True)


def listdir(path: PathLike) -> list[str]:
    """Sorted names (not paths) directly inside folder `path`.

    Raises:
        FileNotFoundError: `path` is not a folder.
    """
    if not isdir(path):
        raise FileNotFoundError(f"{os.fspath(path)}: no such folder")
    return sorted(p.name for p in _p(path).iterdir())


def glob(path: PathLike, pattern: str) -> list[str]:
    """Sorted full paths of the entries of folder `path` matching `pattern`.

    `pattern` is an `fnmatch` pattern of one path component (``*.json``,
    ``events.out.tfevents.*``); [] when `path` is not a folder.
    """
    if not isdir(path):
        return []
    return [join(path, n) for n in listdir(path) if fnmatch.fnmatchcase(n, pattern)]


def open(path: PathLike, mode: str = "r") -> IO:  # pylint: disable=redefined-builtin
    """Opens a file for reading or writing: modes 'r', 'rb', 'w', 'wb'.

    Text is UTF-8. Writing to an object store makes the object visible on
    close, whole. For appending use `open_append`.

    Raises:
        ValueError: another mode.
        FileNotFoundError: reading a missing file.
    """
    if mode not in ("r", "rb", "w", "wb"):
        raise ValueError(f"mode {mode!r}: expected 'r', 'rb', 'w' or 'wb' (see open_append)")
    p = _p(path)
    if "b" in mode:
        return p.open(mode)
    return p.open(mode, encoding="utf-8")


def read_text(path: PathLike) -> str:
    """The UTF-8 text of a file."""
    return _p(path).read_text(encoding="utf-8")


def read_bytes(path: PathLike) -> bytes:
    """The bytes of a file."""
    return _p(path).read_bytes()


def write_text(path: PathLike, text: str) -> None:
    """Writes (replaces) a UTF-8 text file; its folder must exist locally."""
    _p(path).write_text(text, encoding="utf-8")


def write_bytes(path: PathLike, data: bytes) -> None:
    """Writes (replaces) a file; its folder must exist locally."""
    _p(path).write_bytes(data)


def replace(src: PathLike, dst: PathLike) -> None:
    """Moves `src` to `dst`, replacing it (atomic locally; copy + delete on stores)."""
    _p(src).replace(os.fspath(dst))


def rmtree(path: PathLike) -> None:
    """Deletes a folder and everything in it; nothing when it is missing."""
    p = _p(path)
    if p.exists():
        p.rmtree()


def remove(path: PathLike) -> None:
    """Deletes one file; nothing when it is missing."""
    _p(path).unlink(missing_ok=True)


class Appender:
    """A UTF-8 text file opened for appending, also on object stores.

    Locally this is a file opened in mode 'a'. An object store has no append
    (a GCS object is immutable and written whole), so for a URL the file's
    text is kept in memory -- its earlier content, read once when opened, plus
    every `write` -- and `flush` rewrites the whole object. A GCS upload
    replaces an object atomically, so a reader sees either the previous or
    the new complete file, never a torn one. `write` also flushes when
    `flush_every_s` seconds have passed since the last flush, which bounds what
    a preempted run loses; the cost is one upload of the whole file per flush
    (a metrics log of a few MB every 30 s by default).

    One writer per file is assumed (process 0 of a run).

    Use as a context manager or call `close`.
    """

    def __init__(self, path: PathLike, *, flush_every_s: float = 30.0):
        self.path = resolve(path)
        self.flush_every_s = float(flush_every_s)
        self._remote = is_remote(self.path)
        self._file = None
        self._chunks: list[str] = []
        self._dirty = False
        self._last_flush = time.monotonic()
        if self._remote:
            if isfile(self.path):
                self._chunks.append(read_text(self.path))
        else:
            self._file = builtins.open(self.path, "a", encoding="utf-8")

    def write(self, text: str) -> None:
        """Appends `text` (flushes on object stores every `flush_every_s`)."""
        if self._file is not None:
            self._file.write(text)
            return
        self._chunks.append(text)
        self._dirty = True
        if time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()

    def flush(self) -> None:
        """Makes everything written so far visible in the file."""
        if self._file is not None:
            self._file.flush()
            return
        if self._dirty:
            text = "".join(self._chunks)
            self._chunks = [text]
            write_text(self.path, text)
            self._dirty = False
        self._last_flush = time.monotonic()

    def close(self) -> None:
        """Flushes and closes."""
        if self._file is not None:
            self._file.close()
            self._file = None
        else:
            self.flush()

    def __enter__(self) -> "Appender":
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False


def open_append(path: PathLike, *, flush_every_s: float = 30.0) -> Appender:
    """Opens a UTF-8 text file for appending, locally or on an object store.

    See `Appender` for how an object store, which has no append, is handled.
    The folder must exist locally (`makedirs`).
    """
    return Appender(path, flush_every_s=flush_every_s)
