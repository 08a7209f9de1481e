"""`audfer-jax evaluate`: flags, printing and exit statuses (the library is `evaluate.py`).

    audfer-jax evaluate --workdir runs/x [--checkpoint best|last|STEP|PATH]
        [--config configs/x.py:ARGS] [--config.key=value ...] [--json out.json]
"""

from __future__ import annotations

import json

from audfer_jax.cli import errors as cli_errors
from audfer_jax import config_lib
from audfer_jax import evaluate as evaluate_lib
from audfer_jax import paths


def _parser() -> cli_errors.ArgumentParser:
    """The flags of `audfer-jax evaluate` (`--config.key=value` are split off first)."""
    parser = cli_errors.ArgumentParser(
            prog="audfer-jax evaluate",
            description="Evaluate a trained run on its test split: UAR, WAR, per-class "
                        "recall, AU F1, confusion matrix. --config.key=value overrides "
                        "apply to the run's saved config.")
    parser.add_argument("--workdir", default=None,
                        help="the training run directory (local or gs://...)")
    parser.add_argument("--checkpoint", default=None,
                        help="best (default), last, a step number, or a step directory; "
                             "without --workdir, a run directory (as predict --checkpoint)")
    parser.add_argument("--config", default=None,
                        help="configs/<backbone>.py:ARGS to use instead of WORKDIR/config.json")
    parser.add_argument("--json", default=None,
                        help="where to write the figures (default "
                             "WORKDIR/evaluation_<choice>_step<step>.json)")
    return parser


def _run_and_checkpoint(workdir: str | None, checkpoint: str | None) -> tuple[str, str]:
    """`(run directory, --checkpoint choice)` from the two flags.

    `predict --checkpoint RUN` names a run directory; `evaluate --checkpoint`
    names a checkpoint within `--workdir`. Without `--workdir`, a directory
    given to `--checkpoint` is read the predict way: a run directory (its best
    checkpoint) or one of its step directories.

    Raises:
        cli_errors.UsageError: neither flag names a run directory.
    """
    if workdir:
        return workdir, checkpoint or "best"
    if checkpoint is None:
        raise cli_errors.UsageError("--workdir RUN is required: the training run directory "
                                    "(or --checkpoint RUN)")
    if checkpoint in ("best", "last") or checkpoint.isdigit():
        raise cli_errors.UsageError(
                f"--workdir RUN is required with --checkpoint {checkpoint} (or give the run "
                "directory itself: --checkpoint RUN)")
    from audfer_jax import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
    if ckpt_lib.is_state_step(checkpoint):
        return ckpt_lib.run_dir_of_step(checkpoint), checkpoint
    return checkpoint, "best"


def main(argv: list[str]) -> int:
    """`audfer-jax evaluate --workdir RUN [--checkpoint best|last|STEP] [--config ...]`.

    Returns:
        0 on success; 1 on an error (one line on stderr); 2 on bad flags.
    """
    try:
        rest, overrides = config_lib.split_config_overrides(argv)
    except ValueError as e:
        return cli_errors.report("audfer-jax evaluate", e, status=2)
    args = _parser().parse_args(rest)
    try:
        args.workdir, args.checkpoint = _run_and_checkpoint(args.workdir, args.checkpoint)
    except cli_errors.UsageError as e:
        return cli_errors.report("audfer-jax evaluate", e)
    try:
        config = config_lib.load_config_file(args.config) if args.config else None
        summary = evaluate_lib.evaluate(args.workdir, args.checkpoint, config=config,
                                        overrides=overrides)
    except (OSError, ValueError, KeyError) as e:
        return cli_errors.report("audfer-jax evaluate", e)
    import jax  # pylint: disable=g-import-not-at-top
    if jax.process_index() != 0:        # multi-host: one report, one file
        return 0
    print(evaluate_lib.format_report(summary))
    out = paths.resolve(args.json or evaluate_lib.default_json_path(
            summary, paths.resolve(args.workdir)))
    paths.makedirs(paths.dirname(out))
    paths.write_text(out, json.dumps(summary, indent=2))
    print(f"\nwrote {out}")
    return 0
