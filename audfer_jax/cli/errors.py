"""One-line user errors for the `audfer-jax` command line.

A user error (a bad flag, a config argument or field that does not exist, a
missing file, bad data) is reported as one line on stderr,

    audfer-jax train: error: unknown dataset 'nope' (from --config ...); expected one of ...

and a nonzero exit status: 2 for a bad command line, 1 for anything else.
`audfer-jax --debug ...` or the environment variable `AUDFER_JAX_DEBUG=1`
prints the traceback as well. Errors that are not user errors (bugs) keep
Python's traceback.

Imports nothing heavy: every sub-command imports this module first.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Iterable, NoReturn, Optional

from audfer_jax.hints import did_you_mean, one_line

DEBUG_ENV = "AUDFER_JAX_DEBUG"
DEBUG_FLAG = "--debug"

# What a user can cause with arguments, files or data. OSError covers
# FileNotFoundError, NotADirectoryError, PermissionError, IsADirectoryError.
# KeyError and AttributeError are not here: outside config overrides (which
# are turned into UsageError where they are parsed) they are bugs.
USER_ERRORS = (ValueError, OSError)


class UsageError(ValueError):
    """A bad command line: flag, config argument or config field (exit status 2)."""


def debug_enabled() -> bool:
    """True when `AUDFER_JAX_DEBUG` is set to a true value (`audfer-jax --debug` sets it)."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def pop_debug_flag(argv: Iterable[str]) -> tuple[list[str], bool]:
    """`argv` without `--debug` tokens, and whether there was one."""
    argv = list(argv)
    rest = [a for a in argv if a != DEBUG_FLAG]
    return rest, len(rest) != len(argv)


def root_cause(exc: BaseException) -> BaseException:
    """The innermost exception that a wrapper re-raised.

    ml_collections' config-file flag re-raises a `get_config` error as a new
    ValueError whose text is the whole traceback, which absl wraps again in
    `IllegalFlagValueError`; the original error (with the useful message) is
    at the end of the `__context__` chain.
    """
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = exc.__cause__ or exc.__context__
        if inner is None:
            break
        text = str(exc)
        wrapped = "Traceback (most recent call last)" in text or "Error whilst parsing" in text
        if not wrapped:
            break
        exc = inner
    return exc


def _raised_by_us(exc: BaseException) -> bool:
    """Whether the innermost frame of `exc` is in this package or a config file."""
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last = tb.tb_frame.f_code.co_filename
        tb = tb.tb_next
    if last is None:
        return True
    # The package root (this module lives in audfer_jax/cli/).
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.abspath(last).startswith(here) or "configs" in last.split(os.sep)


def report(prog: str, exc: BaseException, status: Optional[int] = None) -> int:
    """Prints `exc` as one line on stderr (with the traceback under --debug).

    Args:
        prog: `"audfer-jax train"` etc.
        exc: the error.
        status: exit status to return (default 2 for `UsageError`, else 1).

    Returns:
        The exit status.
    """
    if debug_enabled():
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    cause = root_cause(exc)
    line = f"{prog}: error: {one_line(cause)}"
    if not debug_enabled() and not isinstance(cause, UsageError) and not _raised_by_us(cause):
        # Raised inside a library: the message may need its context.
        line += f" ({DEBUG_FLAG} shows where)"
    print(line, file=sys.stderr, flush=True)
    if status is None:
        status = 2 if isinstance(exc, UsageError) or isinstance(cause, UsageError) else 1
    return status


class ArgumentParser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` whose usage errors are one line.

    argparse prints the usage block then `prog: error: ...`; this prints only
    the error, with a pointer to `--help`, and exits with status 2 (as argparse,
    so that callers that expect `SystemExit` still get it).
    """

    def error(self, message: str) -> NoReturn:
        message = " ".join(message.split())
        # "argument --dataset: invalid choice: 'dfw' (choose from 'dfew', ...)"
        if "invalid choice:" in message:
            for action in self._actions:
                if action.choices and any(o in message for o in action.option_strings or
                                          [action.dest]):
                    bad = message.split("invalid choice:", 1)[1].split("(")[0].strip(" '\"")
                    message += did_you_mean(bad, action.choices)
                    break
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr,
              flush=True)
        sys.exit(2)


def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_bool_flag(parser: argparse.ArgumentParser, name: str, help_text: str) -> None:
    """A boolean flag in absl's spellings: `--name`, `--name=true|false`, `--noname`.

    The commands kept absl's forms when they moved to argparse, so that
    launch scripts written for the earlier `train` command still work.
    """
    parser.add_argument(f"--{name}", dest=name, nargs="?", const=True, default=False,
                        type=_parse_bool, metavar="true|false", help=help_text)
    parser.add_argument(f"--no{name}", dest=name, action="store_false",
                        help=argparse.SUPPRESS)
