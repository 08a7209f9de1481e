"""`audfer-jax train`: train and evaluate one config.

    audfer-jax train --config configs/former_dfer.py:dataset=dfew,fold=1,loss=au \
        --workdir runs/former_dfer_dfew_f1 --config.batch_size=64
    python -m audfer_jax train --config configs/demo.py --workdir runs/demo

`--config` is a big_vision-style config file with an optional `:arg` variant
(`get_config(arg)`), `--config.x=y` overrides any field
(`ml_collections.config_flags`). A workdir that already holds checkpoints is
resumed. Prints the final metrics as JSON.
"""

from __future__ import annotations

import json
import os
import shlex
import sys

from absl import flags
from ml_collections import config_flags

from audfer_jax.cli import errors as cli_errors

_PROG = "audfer-jax train"
_USAGE = "audfer-jax train --config FILE[:ARG] --workdir DIR [--config.FIELD=VALUE ...]"
_FLAGS = flags.FlagValues()
config_flags.DEFINE_config_file("config", None, "experiment config file[:variant]",
                                flag_values=_FLAGS, lock_config=True)
flags.DEFINE_string("workdir", None, "run directory (checkpoints, logs, metrics); "
                    "local or gs://...",
                    flag_values=_FLAGS)
flags.DEFINE_bool("evaluate_only", False, "evaluate the workdir's newest checkpoint "
                  "instead of training", flag_values=_FLAGS)
flags.DEFINE_bool("best", False, "with --evaluate_only: the best checkpoint",
                  flag_values=_FLAGS)
flags.DEFINE_integer("verbosity", -1, "library log messages shown: -1 WARNING and above "
                     "(default), 0 INFO, 1 DEBUG (absl's convention)", flag_values=_FLAGS)


def main(argv: list[str] | None = None) -> int:
    """Parses `argv` (without the program name), trains, prints the metrics.

    Returns:
        0 on success, 2 on a usage error (one line on stderr), 1 on another
        user error (one line; `--debug` adds the traceback).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        _parse_flags(argv)
    except cli_errors.UsageError as e:
        return cli_errors.report(_PROG, e)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from audfer_jax import reporting
    reporting.configure_logging(_FLAGS.verbosity)
    from audfer_jax import train
    config = _FLAGS.config
    try:
        if _FLAGS.evaluate_only:
            result = train.evaluate_checkpoint(config, _FLAGS.workdir, best=_FLAGS.best)
        else:
            result = train.train_and_evaluate(config, _FLAGS.workdir)
    except (OSError, ValueError, FloatingPointError) as e:
        return cli_errors.report(_PROG, e)
    import jax
    if "preempted_at_step" in result:
        # The status all processes agreed on (128 + the signal), so a
        # scheduler sees one preempted job, not one failed process.
        return int(result.get("exit_code", 1))
    if jax.process_index() == 0:
        print(_summary(result, _FLAGS.workdir, config))
    return 0


def _parse_flags(argv: list[str]) -> None:
    """Parses the flags into `_FLAGS`.

    Raises:
        cli_errors.UsageError: one line naming the bad flag, config argument or
            config field (and the closest valid choice where there is one).
    """
    spec = _flag_value(argv, "--config")
    path = spec.split(":", 1)[0]
    if path and not os.path.isfile(path):
        raise cli_errors.UsageError(f"--config {spec}: no such config file {path!r}; "
                                    "expected e.g. configs/former_dfer.py[:ARG]")
    try:
        _FLAGS([_PROG] + argv)
    except (flags.Error, AttributeError, KeyError, ValueError, TypeError) as e:
        # absl wraps a `get_config` ValueError (dataset=nope) in a flag error
        # whose text is a traceback; an unknown `--config.field` surfaces as
        # ml_collections' AttributeError. Either way the message that matters
        # is the innermost one, or our own override check's.
        raise cli_errors.UsageError(_explain(e, argv)) from e
    if _FLAGS.config is None or not _FLAGS.workdir:
        raise cli_errors.UsageError(f"--config and --workdir are required; usage: {_USAGE}")
    try:
        _FLAGS.config.get("model")
    except OSError as e:  # ml_collections defers a config-file load error to here
        raise cli_errors.UsageError(f"--config {spec}: {cli_errors.one_line(e)}") from e


def _explain(error: BaseException, argv: list[str]) -> str:
    """One line for a flag-parsing error (see `_parse_flags`)."""
    cause = cli_errors.root_cause(error)
    if isinstance(cause, (AttributeError, KeyError)) or "flag --config." in str(cause):
        # Redo the override step with the sweep's checker, which names the
        # field and the closest existing one.
        from audfer_jax import config_lib  # pylint: disable=g-import-not-at-top
        spec = _flag_value(argv, "--config")
        try:
            rest, overrides = config_lib.split_config_overrides(argv)
            del rest
            if spec:
                config_lib.apply_overrides(config_lib.load_config_file(spec), overrides)
        except (KeyError, ValueError, OSError) as e:
            return cli_errors.one_line(e)
    text = cli_errors.one_line(cause)
    if cause is not error and isinstance(cause, ValueError):
        spec = _flag_value(argv, "--config")
        return f"{text} (in --config {spec})" if spec else text
    return text


def _flag_value(argv: list[str], name: str) -> str:
    """The value of `name=...` or `name ...` in `argv`, or ''."""
    for i, a in enumerate(argv):
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
        if a == name and i + 1 < len(argv):
            return argv[i + 1]
    return ""


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
