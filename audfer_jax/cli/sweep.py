"""`audfer-jax sweep`: train the folds of a config in sequence and tabulate them.

    audfer-jax sweep --config configs/former_dfer.py:dataset=dfew,loss=au \\
        --folds 1-5 --workdir runs/former_dfer_dfew_au [--config.batch_size=16 ...]

Fold k trains in `WORKDIR/fold_k` with the config variant `fold=k`; a finished
fold is read back, an unfinished one resumed (`experiments.folds`). Outputs in
WORKDIR: `results.md`, `results.csv` and `results.json`: per-fold UAR/WAR, their
mean and sample std (ddof = 1), last and best epoch (`experiments.tables`).

Grids (ablations): `--grid KEY=V1,V2` (repeatable; `experiments.grid`) runs
every variant of the product in turn, variant `NAME` in `WORKDIR/NAME/fold_k`,
then writes the comparison against `--baseline KEY=V` (default: the first
variant) to WORKDIR: `results.{md,csv,json,png}` (`experiments.grid_runner`).
Every variant and fold is resolved and checked before the first one trains
(`experiments.variants`).

    audfer-jax sweep --config configs/m3dfel.py:dataset=dfew --folds 1-5 \\
        --grid loss=ce,au,au_distinct --grid au.lam=0.1,0.25 --baseline loss=ce \\
        --workdir runs/abl
"""

from __future__ import annotations

import argparse

from audfer_jax.cli import errors as cli_errors
from audfer_jax import config_lib
from audfer_jax.experiments import comparison
from audfer_jax.experiments import folds as folds_lib
from audfer_jax.experiments import grid_runner
from audfer_jax.experiments import tables
from audfer_jax.experiments import variants
from audfer_jax import paths

_PROG = "audfer-jax sweep"
# What resolving a config, an override or a grid can raise on bad input.
_CONFIG_ERRORS = (ValueError, KeyError, OSError)


def parse_folds(text: str) -> list[int]:
    """`"1-5"` -> [1, 2, 3, 4, 5]; `"1,3"` -> [1, 3]; `"2"` -> [2].

    Raises:
        ValueError: an empty list, a fold < 1, a repeated fold or bad syntax.
    """
    folds: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                if hi < lo:
                    raise ValueError
                folds.extend(range(lo, hi + 1))
            else:
                folds.append(int(part))
        except ValueError:
            raise ValueError(f"--folds {text!r}: expected e.g. '1-5' or '1,3,5'") from None
    if not folds or min(folds) < 1 or len(set(folds)) != len(folds):
        raise ValueError(f"--folds {text!r}: need distinct folds >= 1")
    return folds


def _parser() -> cli_errors.ArgumentParser:
    """The flags of `audfer-jax sweep` (besides `--config.FIELD=VALUE` overrides)."""
    parser = cli_errors.ArgumentParser(
            prog=_PROG,
            description="Train folds in sequence (resuming finished ones) and write "
                        "per-fold UAR/WAR with mean and sample std (ddof=1), last and "
                        "best epoch, to WORKDIR/results.{md,csv,json}.")
    parser.add_argument("--config", required=True,
                        help="configs/<backbone>.py:dataset=...,loss=... (fold is set per fold)")
    parser.add_argument("--folds", default="1-5", help="e.g. 1-5 or 1,3 (default 1-5)")
    parser.add_argument("--workdir", required=True, help="sweep directory (fold_k inside)")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                        help="a config argument (loss=ce,au) or field (au.lam=0.1,0.25) "
                             "with a comma list; repeat for more axes. Variants = their "
                             "product, duplicates merged; variant NAME in WORKDIR/NAME")
    parser.add_argument("--baseline", default="", metavar="KEY=V",
                        help="the variant the others are compared with fold by fold "
                             "(e.g. loss=ce; default: the first variant)")
    parser.epilog = "--config.key=value overrides apply to every fold's config."
    return parser


def _grid_main(args: argparse.Namespace, overrides, folds: list[int]) -> int:
    """`sweep --grid ...`: resolve and check every variant, run them, compare."""
    try:
        plan = variants.resolve_grid(args.config, args.grid, overrides, folds, args.baseline)
    except _CONFIG_ERRORS as e:
        return cli_errors.report(_PROG, e, status=2)
    merged_lines = plan.merged_lines()
    print(f"{len(plan.variants)} variant(s) x {len(folds)} fold(s); baseline: "
          f"{plan.baseline.label()}"
          + ("" if args.baseline else " (the first variant; --baseline to choose)"))
    for line in merged_lines:
        print(f"merged: {line}")
    workdir = paths.resolve(args.workdir)
    result_tables = grid_runner.run_grid(
            plan.variants, plan.config, folds, workdir, baseline=plan.baseline,
            title=f"{args.config} {plan.grid_text()} (folds {args.folds})",
            criterion=plan.criterion(folds[0]), merged=merged_lines)
    print(comparison.console_summary(result_tables))
    print(f"wrote {paths.join(workdir, 'results.md')}, results.csv, results.json, results.png")
    return 0


def main(argv: list[str]) -> int:
    """`audfer-jax sweep --config FILE.py:ARGS --folds 1-5 --workdir DIR [--config.x=y]`.

    Returns:
        0 on success; 2 on a bad flag, config, override or grid (one line on
        stderr, before anything trains).
    """
    try:
        rest, overrides = config_lib.split_config_overrides(argv)
    except ValueError as e:
        return cli_errors.report(_PROG, e, status=2)
    parser = _parser()
    args = parser.parse_args(rest)
    for key, _ in overrides:
        if key in ("data.fold", "fold"):
            parser.error("the fold is set by --folds, not by --config.data.fold")
    if args.baseline and not args.grid:
        return cli_errors.report(_PROG, cli_errors.UsageError(
                "--baseline needs --grid (a sweep without a grid has one variant)"), status=2)
    try:
        folds = parse_folds(args.folds)
        # Fail before the first fold trains if the config or an override is bad.
        variants.fold_config(args.config, overrides, folds[0])
    except _CONFIG_ERRORS as e:
        return cli_errors.report(_PROG, e, status=2)
    if args.grid:
        return _grid_main(args, overrides, folds)
    workdir = paths.resolve(args.workdir)
    _, rows = folds_lib.run_sweep(
            lambda fold: variants.fold_config(args.config, overrides, fold), folds, workdir,
            title=f"{args.config} (folds {args.folds})")
    print(tables.to_markdown(rows))
    print(f"wrote {paths.join(workdir, 'results.md')}, results.csv, results.json")
    return 0
