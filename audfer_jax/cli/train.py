"""`audfer-jax train`: train and evaluate one config.

    audfer-jax train --config configs/former_dfer.py:dataset=dfew,fold=1,loss=au \
        --workdir runs/former_dfer_dfew_f1 --config.batch_size=64
    python -m audfer_jax train --config configs/demo.py --workdir runs/demo

`--config` is a big_vision-style config file with an optional `:arg` variant
(`get_config(arg)`), `--config.x=y` overrides any field (`config_lib`). A
workdir that already holds checkpoints is resumed. Prints the final metrics.
"""

from __future__ import annotations

import json
import os
import shlex
import sys

from audfer_jax.cli import errors as cli_errors
from audfer_jax import config_lib
from audfer_jax import hints

_PROG = "audfer-jax train"
_USAGE = "audfer-jax train --config FILE[:ARG] --workdir DIR [--config.FIELD=VALUE ...]"


def _parser() -> cli_errors.ArgumentParser:
    """The flags of `audfer-jax train` (besides `--config.FIELD=VALUE` overrides)."""
    parser = cli_errors.ArgumentParser(
            prog=_PROG, usage=_USAGE,
            description="Train and evaluate one config; a workdir that already holds "
                        "checkpoints is resumed. --config.FIELD=VALUE overrides any field.")
    parser.add_argument("--config", default=None, help="experiment config file[:variant]")
    parser.add_argument("--workdir", default=None, help="run directory (checkpoints, logs, "
                        "metrics); local or gs://...")
    cli_errors.add_bool_flag(parser, "evaluate_only", "evaluate the workdir's newest "
                             "checkpoint instead of training")
    cli_errors.add_bool_flag(parser, "best", "with --evaluate_only: the best checkpoint")
    parser.add_argument("--verbosity", type=int, default=-1,
                        help="library log messages shown: -1 WARNING and above (default), "
                             "0 INFO, 1 DEBUG (absl's convention)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parses `argv` (without the program name), trains, prints the metrics.

    Returns:
        0 on success, 2 on a usage error (one line on stderr), 1 on another
        user error (one line; `--debug` adds the traceback).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args, config = _parse_flags(argv)
    except cli_errors.UsageError as e:
        return cli_errors.report(_PROG, e)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from audfer_jax import reporting
    reporting.configure_logging(args.verbosity)
    from audfer_jax import train
    try:
        if args.evaluate_only:
            result = train.evaluate_checkpoint(config, args.workdir, best=args.best)
        else:
            result = train.train_and_evaluate(config, args.workdir)
    except (OSError, ValueError, FloatingPointError) as e:
        return cli_errors.report(_PROG, e)
    import jax
    if "preempted_at_step" in result:
        # The status all processes agreed on (128 + the signal), so a
        # scheduler sees one preempted job, not one failed process.
        return int(result.get("exit_code", 1))
    if jax.process_index() == 0:
        print(_summary(result, args.workdir, config))
    return 0


def _parse_flags(argv: list[str]):
    """Parses the flags and loads the config with its overrides.

    Returns:
        `(args, config)`: the argparse namespace and the locked
        `ml_collections.ConfigDict`.

    Raises:
        cli_errors.UsageError: one line naming the bad flag, config argument or
            config field (and the closest valid choice where there is one).
    """
    try:
        rest, overrides = config_lib.split_config_overrides(argv)
    except ValueError as e:
        raise cli_errors.UsageError(str(e)) from None
    args = _parser().parse_args(rest)
    if not args.config or not args.workdir:
        raise cli_errors.UsageError(f"--config and --workdir are required; usage: {_USAGE}")
    path = config_lib.config_file_path(args.config)
    if not os.path.isfile(path):
        raise cli_errors.UsageError(f"--config {args.config}: no such config file {path!r}; "
                                    "expected e.g. configs/former_dfer.py[:ARG]")
    try:
        config = config_lib.load_config_file(args.config)
    except (ValueError, TypeError, OSError) as e:
        # A `get_config` error (dataset=nope, fold=9): its own message, with
        # the argument it came from.
        raise cli_errors.UsageError(f"{hints.one_line(e)} (in --config {args.config})"
                                    ) from e
    try:
        config_lib.apply_overrides(config, overrides)
    except (KeyError, ValueError) as e:
        raise cli_errors.UsageError(hints.one_line(e)) from e
    if hasattr(config, "lock"):
        config.lock()       # a typo'd field assignment in the library is an error
    return args, config


def _summary(result: dict, workdir: str, config=None) -> str:
    """A few lines for the console; every figure is in WORKDIR/metrics.json.

    The last epoch's line names chance level (1/C UAR: a constant or uniformly
    random guess recalls 1/C of the clips of each class on average). After a
    demo-set run the last line is a `predict` command on one of its test clips.
    """
    lines = []
    num_classes = len(result.get("class_names") or ())
    for which in ("last", "best"):
        r = result.get(which)
        if not isinstance(r, dict) or "uar" not in r:
            continue
        what = f"{which} epoch"
        if which == "best" and r.get("criterion"):
            what += f" (by {r['criterion']})"
        if "epoch" in r:
            what += f", epoch {r['epoch']}"
        line = f"{what}: UAR {r['uar']:.2f} %  WAR {r['war']:.2f} %"
        if which == "last" and num_classes:
            line += (f"  (chance level: UAR 1/{num_classes} = "
                     f"{100 / num_classes:.1f} %)")
        lines.append(line)
        if which == "last" and r.get("per_class_recall"):
            lines.append("  per-class recall: " + ", ".join(
                f"{k} {v:.1f}" for k, v in r["per_class_recall"].items()))
    if not lines:  # evaluate_only and other shapes of result
        lines.append(json.dumps(result, indent=1))
    from audfer_jax import paths
    w = paths.resolve(workdir)
    lines += [f"checkpoints: {paths.join(w, 'checkpoints')} (best: {paths.join(w, 'best')})",
              f"metrics:     {paths.join(w, 'metrics.json')}, {paths.join(w, 'metrics.jsonl')}",
              f"TensorBoard: tensorboard --logdir {w}"]
    if isinstance(result.get("last"), dict):    # a finished training run
        lines += _demo_next_command(config, workdir)
    return "\n".join(lines)


def _demo_next_command(config, workdir: str) -> list[str]:
    """Two lines suggesting `predict --plot` on a demo test clip, or none.

    Paths are shown as the user gave them (relative to the current folder when
    inside it), so that the line can be pasted as it is.
    """
    if config is None or config.data.name != "demo":
        return []
    from audfer_jax import paths  # pylint: disable=g-import-not-at-top
    from audfer_jax.data import demo  # pylint: disable=g-import-not-at-top
    raw = config.data.get("raw_dir") or demo.raw_dir_for(config.data.data_dir)
    found = None if paths.is_remote(raw) else demo.example_clip(raw, config.data.fold)
    if found is None:
        return []
    clip, label = found
    rel = os.path.relpath(clip)
    clip = rel if not rel.startswith(os.pardir) else clip
    return [f"next: the model on a test clip of the demo set (labelled {label}):",
            f"audfer-jax predict --checkpoint {shlex.quote(workdir)} --plot prediction.png "
            f"{shlex.quote(clip)}"]


if __name__ == "__main__":
    sys.exit(main())
