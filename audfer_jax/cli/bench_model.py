"""`audfer-jax bench model`: forward and forward+backward throughput of a backbone.

    audfer-jax bench model --model former_dfer --batch 8 [--steps 10 --dtype bfloat16]
    audfer-jax bench model --model mae_dfer --batch 4 --scan-blocks
    audfer-jax bench model --model my_pkg.my_module:make_backbone --num-frames 16 \
        --image-size 112

Builds the model from the registry (or a user backbone's import path, with the
AU head of `models.with_au_head`), initialises it on random uint8 clips of its
default input shape (for a user backbone without `num_frames`/`image_size`
attributes: `--num-frames` and `--image-size`), and times jitted forward and
forward+backward steps on the current JAX backend (`audfer_jax.benchmarks.model`
says how). Prints clips/s for both, and the peak memory: the device
allocator's `peak_bytes_in_use` where the backend reports it (GPU, TPU), else
the process's peak resident set size (CPU), which includes the Python process.
"""

from __future__ import annotations

import argparse
import sys

import jax

from audfer_jax.benchmarks import model as model_bench
from audfer_jax.cli import errors as cli_errors
from audfer_jax import models

_PROG = "audfer-jax bench model"


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = cli_errors.ArgumentParser(
        prog=_PROG,
        description="Forward and forward+backward clips/s and peak memory of a backbone.")
    parser.add_argument("--model", required=True, type=_model_name,
                        help=f"{', '.join(models.available_models())}, or an import path "
                             "package.module:factory of your own backbone")
    parser.add_argument("--batch", type=int, default=8, help="clips per step (default 8)")
    parser.add_argument("--steps", type=int, default=10,
                        help="timed steps after the warm-up step (default 10)")
    parser.add_argument("--dtype", choices=sorted(model_bench.DTYPES), default="float32",
                        help="activation dtype; parameters stay float32")
    parser.add_argument("--scan-blocks", action="store_true",
                        help="MAE-DFER: run its blocks as one lax.scan (same values, "
                             "faster compile)")
    parser.add_argument("--num-classes", type=int, default=7)
    parser.add_argument("--num-frames", type=int, default=None,
                        help="clip length T for an import-path backbone without a "
                             "num_frames attribute")
    parser.add_argument("--image-size", type=int, default=None,
                        help="clip side for an import-path backbone without an "
                             "image_size attribute")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.batch < 1 or args.steps < 1:
        parser.error("--batch and --steps must be >= 1")
    return args


def _model_name(text: str) -> str:
    """argparse type: a registered model name or a `package.module:factory` path."""
    if text in models.available_models() or models.is_import_path(text):
        return text
    raise argparse.ArgumentTypeError(
            f"{text!r} is neither a registered model ({', '.join(models.available_models())}) "
            "nor an import path package.module:factory")


def main(argv: list[str]) -> int:
    """Runs the benchmark and prints its figures; returns 0 (1: a bad user backbone)."""
    args = _parse(argv)
    try:
        model, (t, h, w) = model_bench.build_model(
                args.model, num_classes=args.num_classes, dtype=args.dtype,
                num_frames=args.num_frames, image_size=args.image_size)
    except models.BackboneError as e:
        print(f"{_PROG}: error: {e}", file=sys.stderr)
        return 1
    if args.scan_blocks:
        try:
            model = models.with_scan_blocks(model, args.model)
        except ValueError as e:
            print(f"{_PROG}: error: --scan-blocks: {e}", file=sys.stderr)
            return 1
    bench = model_bench.prepare(model, batch=args.batch, input_shape=(t, h, w),
                                num_classes=args.num_classes, seed=args.seed)
    print(f"model {args.model}  batch {args.batch}  clips {t}x{h}x{w}  dtype {args.dtype}  "
          + ("scan_blocks  " if args.scan_blocks else "") +
          f"backend {jax.default_backend()} ({jax.local_devices()[0].device_kind})  "
          f"params {bench.num_params:,}")
    for name, fn in bench.calls.items():
        first, per_step = model_bench.time_calls(fn, args.steps)
        print(f"{name:<17} {args.batch / per_step:9.2f} clips/s  {per_step * 1e3:9.1f} ms/step  "
              f"(compile+first step {first:.1f} s, {args.steps} timed steps)")
    peak, source = model_bench.peak_memory()
    print(f"peak memory       {peak / 2 ** 20:9.1f} MiB ({source})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
