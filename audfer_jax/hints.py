"""Hints for user errors: the closest valid choice of a mistyped name, one-line messages.

Imported by library modules (config checks, readers) and the commands alike;
imports nothing but the standard library.
"""

from __future__ import annotations

import difflib
from typing import Iterable


def did_you_mean(value: str, choices: Iterable[str], prefix: str = "") -> str:
    """`"; did you mean 'x'?"` for the closest of `choices` (difflib), else `""`.

    `prefix` is put before the suggestion (`"data."` -> `'data.image_size'`).
    """
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.6)
    return f"; did you mean {prefix + close[0]!r}?" if close else ""


def unknown_choice(what: str, value, choices: Iterable) -> str:
    """`"unknown dataset 'dfw'; expected one of dfew, ferv39k; did you mean 'dfew'?"`."""
    choices = list(choices)
    return (f"unknown {what} {value!r}; expected one of {', '.join(map(str, choices))}"
            + did_you_mean(value, choices))


def one_line(exc: BaseException) -> str:
    """The message of `exc` as one line (whitespace runs, newlines included, collapsed).

    A `KeyError`'s message is its argument (not its quoted repr); an OSError
    without a message of its own reads `PATH: reason`; a dataset error
    (`records.DatasetError`, every problem listed line by line) keeps its
    first problem and says where the full list is (`report_path`, if set).
    """
    if isinstance(exc, KeyError) and exc.args:
        text = str(exc.args[0])
    elif isinstance(exc, OSError) and exc.filename and exc.strerror:
        text = f"{exc.filename}: {exc.strerror.lower()}"
    else:
        text = str(exc)
    report = getattr(exc, "report", None)
    problems = getattr(report, "problems", None)
    if problems:
        head = text.split("\n", 1)[0].rstrip(":")
        text = f"{head}: {problems[0]}"
        if len(problems) > 1:
            where = getattr(exc, "report_path", None)
            text += (f" (and {len(problems) - 1} more"
                     + (f"; all listed in {where})" if where else ")"))
    text = " ".join(text.split())
    return text or type(exc).__name__
