"""Hints for user errors: the closest valid choice of a mistyped name.

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
