"""The `audfer-jax` command line: one sub-command per job.

Each sub-command lives in its own module, imported only when it runs (so that
`audfer-jax convert` never imports TensorFlow and `prepare` never imports torch).
Each module exposes `main(argv: list[str]) -> int` and parses its own flags.

User errors are one line on stderr and a nonzero exit (`cli_errors`);
`--debug` anywhere on the command line (or `AUDFER_JAX_DEBUG=1`) adds the
traceback.
"""

from __future__ import annotations

import importlib
import os
import sys

from audfer_jax.cli import errors as cli_errors
from audfer_jax import hints
from audfer_jax import host

SUBCOMMANDS = {
        "prepare": ("audfer_jax.cli.prepare",
                                "prepare a dataset fold into TFRecords (TFDS, offline)"),
        "demo": ("audfer_jax.cli.demo",
                          "write the synthetic demo set in the DFEW release layout"),
        "train": ("audfer_jax.cli.train", "train and evaluate a config"),
        "evaluate": ("audfer_jax.cli.evaluate", "evaluate a checkpoint"),
        "predict": ("audfer_jax.cli.predict",
                                "class and AU probabilities for a video or frame folder"),
        "export": ("audfer_jax.cli.export", "a checkpoint as jax.export and TF SavedModel"),
        "convert": ("audfer_jax.cli.convert",
                                "PyTorch checkpoint -> Orbax checkpoint of Flax variables"),
        "sweep": ("audfer_jax.cli.sweep", "run folds and tabulate UAR/WAR mean and std"),
        "bench": ("audfer_jax.cli.bench", "benchmarks: input, model, train"),
        "compile": ("audfer_jax.cli.compile",
                    "compile the train step for a TPU slice here; FLOPs, HBM, fits"),
}


def _usage() -> str:
    lines = ["usage: audfer-jax <command> [flags]", "", "commands:"]
    for name, (_, text) in SUBCOMMANDS.items():
        lines.append(f"  {name:<9} {text}")
    lines.append("")
    lines.append("`audfer-jax <command> --help` lists the flags of a command; "
                 f"`{cli_errors.DEBUG_FLAG}` shows the traceback of an error.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `audfer-jax` console script."""
    # Before any command imports JAX: keep a libtpu install from probing for a
    # TPU (and printing its start-up errors) on a host that has none.
    host.quiet_tpu_probe()
    argv, debug = cli_errors.pop_debug_flag(sys.argv[1:] if argv is None else argv)
    if debug:
        os.environ[cli_errors.DEBUG_ENV] = "1"
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"audfer-jax: error: {hints.unknown_choice('command', name, SUBCOMMANDS)} "
              "(see audfer-jax --help)", file=sys.stderr)
        return 2
    prog = f"audfer-jax {name}"
    try:
        module = importlib.import_module(SUBCOMMANDS[name][0])
        return int(module.main(rest) or 0)
    except cli_errors.USER_ERRORS as e:
        return cli_errors.report(prog, e)
    except KeyboardInterrupt:
        # The trainer handles Ctrl-C itself (checkpoint, then exit); elsewhere
        # an interrupt needs no traceback.
        if cli_errors.debug_enabled():
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
