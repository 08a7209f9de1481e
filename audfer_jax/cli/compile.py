"""`audfer-jax compile`: compile the real train step for a TPU slice on any host.

    audfer-jax compile --config configs/mae_dfer.py:dataset=dfew,fold=1 --topology v5e:4x4 \\
        [--batch N | --max-batch] [--hbm-gib G] [--config.FIELD=VALUE ...]

Builds what `audfer-jax train` runs on the slice (train and eval steps, from
the config; no data read) and compiles it with libtpu's deviceless topology
(`audfer_jax.compilation`). Prints the slice, the batch per chip and per
host, the compile seconds, XLA's FLOPs per training clip, the HBM per chip of
both programs against the chip's HBM, and `fits: yes|no`; exit status 0 when
both programs fit, 1 when one does not, so a launch script can gate on it.
`--max-batch` finds the largest per-chip batch whose train step fits.
"""

from __future__ import annotations

import json
import os

from audfer_jax.cli import errors as cli_errors
from audfer_jax.compilation import report, topologies
from audfer_jax import hints

PROG = "audfer-jax compile"


def _parser() -> cli_errors.ArgumentParser:
    """The flags of `audfer-jax compile` (besides `--config.FIELD=VALUE` overrides)."""
    parser = cli_errors.ArgumentParser(
            prog=PROG,
            description="Compile the train and eval steps of a config for a TPU slice on "
                        "this host (libtpu's deviceless topologies); print FLOPs and HBM per "
                        "chip; exit 0 when they fit, 1 when not.")
    parser.add_argument("--config", required=True, help="configs/<backbone>.py:ARGS")
    parser.add_argument("--topology", required=True,
                        help=f"TPU slice: {', '.join(topologies.TOPOLOGY_FORMS)} "
                             f"({topologies.TOPOLOGY_EXAMPLES})")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--batch", type=int, default=None,
                       help="global batch (default config.batch_size), a multiple of the chips")
    group.add_argument("--max-batch", action="store_true",
                       help="find the largest per-chip batch whose train step fits")
    parser.add_argument("--hbm-gib", type=float, default=None,
                        help="HBM per chip in GiB (default: the generation's datasheet figure)")
    parser.add_argument("--platform", default="tpu",
                        help="only tpu (no deviceless GPU compilation in JAX 0.10.2)")
    parser.add_argument("--no-eval", action="store_true",
                        help="compile the train step only")
    parser.add_argument("--json", default="", help="also write the figures to this file")
    parser.add_argument("--verbosity", type=int, default=0,
                        help="0: only this command's lines; 1: also what libtpu and XLA print")
    return parser


def main(argv: list[str]) -> int:
    """`audfer-jax compile --config FILE.py:ARGS --topology v5e:4x4 [...]`.

    Returns:
        0 when the programs fit, 1 when one does not or on a user error (one
        line on stderr), 2 on a malformed override.
    """
    from audfer_jax import config_lib  # pylint: disable=g-import-not-at-top
    try:
        rest, overrides = config_lib.split_config_overrides(argv)
    except ValueError as e:
        return cli_errors.report(PROG, e, status=2)
    args = _parser().parse_args(rest)
    # Compile-only: never claim a TPU of this host (a training job may hold
    # it; `JAX_PLATFORMS=cpu`), and load libtpu even when another process on
    # the host has (its lock file only guards the chips, which are not used).
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    quiet = args.verbosity <= 0
    if quiet:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        config = config_lib.apply_overrides(config_lib.load_config_file(args.config), overrides)
        result = report.run(config, topology=args.topology, batch=args.batch,
                            max_batch=args.max_batch, hbm_gib=args.hbm_gib,
                            platform=args.platform, eval_step=not args.no_eval, quiet=quiet,
                            log=lambda line: print(line, flush=True))
    except cli_errors.USER_ERRORS as e:
        return cli_errors.report(PROG, e)
    except KeyError as e:        # an unknown --config.FIELD
        return cli_errors.report(PROG, cli_errors.UsageError(hints.one_line(e)))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"config": args.config, "overrides": overrides, **result}, f, indent=2)
    return 0 if result["fits"] else 1
