"""`audfer-jax bench train`: train-step throughput and the cost of the AU loss.

    audfer-jax bench train --config configs/former_dfer.py:dataset=dfew,loss=au \\
        [--batch 8] [--steps 10] [--warmup 2] [--init random|model] [--peak-flops F]
        [--config.x=y ...]

Times the config's real train step on synthetic batches, with and without the
AU loss, and prints clips/s, the AU loss's share of the step time, the step's
FLOPs and MFU and (`--augment_share on`) the device-side augmentation's share
(`audfer_jax.benchmarks.train`, whose module doc says how each is measured).
"""

from __future__ import annotations

import sys

from audfer_jax.benchmarks import train as train_bench
from audfer_jax.cli import errors as cli_errors
from audfer_jax import config_lib

_PROG = "audfer-jax bench train"


def format_result(r: dict, config_spec: str = "") -> str:
    """The figures of `benchmarks.train.run_bench` as the lines the command prints."""
    t, h, w = r["input_shape"]
    lines = [
        f"bench train: model {r['model']}" + (f" ({config_spec})" if config_spec else ""),
        f"backend {r['backend']}, {r['devices']} device(s); batch {r['batch']} clips of "
        f"{t}x{h}x{w}x3 uint8 (synthetic); median of {r['steps']} timed steps after "
        f"compile + warm-up",
        f"full train step (loss {r['loss']}, lambda {r['lam']:g}): {r['full_ms']:.2f} ms/step, "
        f"{r['full_clips_per_s']:.2f} clips/s (first call incl. compile "
        f"{r['compile_s_full']:.1f} s)",
        f"step without AU loss (lambda 0, AU head unused): {r['without_au_ms']:.2f} ms/step, "
        f"{r['without_au_clips_per_s']:.2f} clips/s",
        f"AU loss share of step time (difference of the two steps, fastest step each: "
        f"{r['full_min_ms']:.2f} vs {r['without_au_min_ms']:.2f} ms): "
        f"{r['au_share_diff_percent']:.2f} %",
        f"AU loss share of step time (isolated jitted loss fwd+bwd, "
        f"{r['au_loss_isolated_ms']:.3g} ms/call): {r['au_share_isolated_percent']:.3g} %",
        f"goal: AU loss share < {train_bench.GOAL_PERCENT:g} % (paper: no additional "
        f"arithmetic)",
    ]
    if "augment_device_ms" in r:
        lines.append(f"device-side augmentation ({r['augment_device_recipe']}, jitted, same "
                     f"batch): {r['augment_device_ms']:.2f} ms/batch, "
                     f"{r['augment_device_share_percent']:.2f} % of augmentation + step "
                     f"(goal <= 10 % for MAE-DFER)")
    if r.get("flops_note"):
        lines.append(f"efficiency of the full step: {r['flops_note']}")
    elif "flops_per_clip" in r:
        from audfer_jax import flops as flops_lib  # pylint: disable=g-import-not-at-top
        lines.append(f"efficiency of the full step on {r.get('device_kind', '?')} (XLA cost "
                     f"analysis): " + flops_lib.format_efficiency(r))
    return "\n".join(lines)


def _parser() -> cli_errors.ArgumentParser:
    """The flags of `audfer-jax bench train` (besides `--config.FIELD=VALUE` overrides)."""
    parser = cli_errors.ArgumentParser(
            prog=_PROG,
            description="Train-step clips/s with synthetic batches, and the share of "
                        "step time spent in the AU loss.")
    parser.add_argument("--config", required=True, help="configs/<backbone>.py:ARGS")
    parser.add_argument("--batch", type=int, default=8, help="global batch size (default 8)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed steps after the compiling one (default 2)")
    parser.add_argument("--peak-flops", type=float, default=None,
                        help="peak FLOP/s of one device for the MFU (default: the "
                             "bfloat16 table in audfer_jax/flops.py; none for CPUs)")
    parser.add_argument("--init", default="random", choices=("random", "model"),
                        help="random parameters (default, no init compile) or the "
                             "model's own init")
    parser.add_argument("--augment_share", default="on", choices=("on", "off"),
                        help="also time the device-side augmentation of data.augment")
    return parser


def main(argv: list[str]) -> int:
    """`audfer-jax bench train --config FILE.py:ARGS [--batch 8 --steps 10]`.

    Returns:
        0 after printing the figures, 1 on a user error (one line on stderr),
        2 on a malformed override.
    """
    try:
        rest, overrides = config_lib.split_config_overrides(argv)
    except ValueError as e:
        return cli_errors.report(_PROG, e, status=2)
    args = _parser().parse_args(rest)
    try:
        config = config_lib.apply_overrides(config_lib.load_config_file(args.config), overrides)
        result = train_bench.run_bench(config, batch=args.batch, steps=args.steps,
                                       warmup=args.warmup, init=args.init,
                                       log=lambda m: print(m, file=sys.stderr),
                                       time_augment=args.augment_share == "on",
                                       peak_flops=args.peak_flops)
    except (ValueError, KeyError, OSError) as e:
        return cli_errors.report(_PROG, e)
    print(format_result(result, args.config))
    return 0
