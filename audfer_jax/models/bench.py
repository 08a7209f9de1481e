"""`audfer-jax bench model`: forward and forward+backward throughput of a backbone.

    audfer-jax bench model --model former_dfer --batch 8 [--steps 10 --dtype bfloat16]
    audfer-jax bench model --model mae_dfer --batch 4 --scan-blocks
    audfer-jax bench model --model my_pkg.my_module:make_backbone --num-frames 16 \
        --image-size 112

Builds the model from the registry (or a user backbone's import path, with the
AU head of `models.with_au_head`), initialises it on random uint8 clips of its
default input shape (for a user backbone without `num_frames`/`image_size`
attributes: `--num-frames` and `--image-size`), and times jitted steps on the current JAX backend after one
compile/warm-up call, with `block_until_ready` around every timed step:

* forward: `apply(train=False)` (eval mode, running BatchNorm statistics);
* forward+backward: `value_and_grad` of cross-entropy on the logits plus the
  mean BCE of the AU logits, in train mode (batch statistics updated, dropout and
  drop-path active); no optimiser update.

Prints clips/s for both, and the peak memory: the device allocator's
`peak_bytes_in_use` where the backend reports it (GPU, TPU), else the process's
peak resident set size (`ru_maxrss`, CPU), which includes the Python process.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from audfer_jax.cli import errors as cli_errors
from audfer_jax import models

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = cli_errors.ArgumentParser(
        prog="audfer-jax bench model",
        description="Forward and forward+backward clips/s and peak memory of a backbone.")
    parser.add_argument("--model", required=True, type=_model_name,
                        help=f"{', '.join(models.available_models())}, or an import path "
                             "package.module:factory of your own backbone")
    parser.add_argument("--batch", type=int, default=8, help="clips per step (default 8)")
    parser.add_argument("--steps",
                        type=int,
                        default=10,
                        help="timed steps after the warm-up step (default 10)")
    parser.add_argument("--dtype",
                        choices=sorted(_DTYPES),
                        default="float32",
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


def _time(fn: Callable[[], Any], steps: int) -> tuple[float, float]:
    """Seconds of the first (compile + run) call and mean seconds per later call."""
    start = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        jax.block_until_ready(fn())
    return first, (time.perf_counter() - start) / steps


def peak_memory() -> tuple[int, str]:
    """Peak memory in bytes and where the figure comes from.

    Returns:
        `(bytes, source)`: the first local device's `peak_bytes_in_use` when its
        `memory_stats()` reports one, else the process's peak RSS (Linux
        `ru_maxrss` is in KiB).
    """
    device = jax.local_devices()[0]
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001  (backends without allocator statistics raise)
        stats = None
    if stats and "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), f"{device.platform} peak_bytes_in_use"
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss_kib) * 1024, "process peak RSS"


def main(argv: list[str]) -> int:
    """Runs the benchmark and prints its figures; returns 0 (1: a bad user backbone)."""
    args = _parse(argv)
    dtype = _DTYPES[args.dtype]
    # dtype is passed only when it is not the default float32 of every
    # registered backbone, so that a user factory without `dtype` still runs.
    overrides = {"dtype": dtype} if args.dtype != "float32" else {}
    sizes = {"num_frames": args.num_frames, "image_size": args.image_size}
    try:
        model = models.get_model(args.model, num_classes=args.num_classes, **overrides)
        t, h, w = models.default_input_shape(args.model, sizes)
    except models.BackboneError as e:
        print(f"audfer-jax bench model: error: {e}", file=sys.stderr)
        return 1
    if args.scan_blocks:
        try:
            model = models.with_scan_blocks(model, args.model)
        except ValueError as e:
            print(f"audfer-jax bench model: error: --scan-blocks: {e}", file=sys.stderr)
            return 1
    rng = np.random.default_rng(args.seed)
    clips = jnp.asarray(rng.integers(0, 256, (args.batch, t, h, w, 3), dtype=np.uint8))
    labels = jnp.asarray(rng.integers(0, args.num_classes, (args.batch,), dtype=np.int32))
    au_targets = jnp.asarray(rng.integers(0, 2, (args.batch, 18)).astype(np.float32))

    # The rbg generator compiles far faster than threefry on CPU (the values of
    # the weights do not matter for throughput).
    key = jax.random.key(args.seed, impl="rbg")
    variables = jax.jit(lambda k: model.init({"params": k, "dropout": k}, clips, train=False))(key)
    params = variables["params"]
    extra = {k: v for k, v in variables.items() if k != "params"}
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))

    @jax.jit
    def forward(params, extra, clips):
        return model.apply({"params": params, **extra}, clips, train=False).logits

    def loss_fn(params, extra, clips, rng):
        out, updates = model.apply({
            "params": params,
            **extra
        },
                                   clips,
                                   train=True,
                                   rngs={"dropout": rng},
                                   mutable=list(extra))
        ce = optax.softmax_cross_entropy_with_integer_labels(out.logits, labels).mean()
        bce = optax.sigmoid_binary_cross_entropy(out.au_logits, au_targets).mean()
        return ce + bce, updates

    @jax.jit
    def forward_backward(params, extra, clips, rng):
        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, extra, clips,
                                                                           rng)
        return loss, grads, updates

    print(f"model {args.model}  batch {args.batch}  clips {t}x{h}x{w}  dtype {args.dtype}  "
          + ("scan_blocks  " if args.scan_blocks else "") +
          f"backend {jax.default_backend()} ({jax.local_devices()[0].device_kind})  "
          f"params {n_params:,}")
    for name, fn in (("forward", lambda: forward(params, extra, clips)),
                     ("forward+backward", lambda: forward_backward(params, extra, clips, key))):
        first, per_step = _time(fn, args.steps)
        print(f"{name:<17} {args.batch / per_step:9.2f} clips/s  {per_step * 1e3:9.1f} ms/step  "
              f"(compile+first step {first:.1f} s, {args.steps} timed steps)")
    peak, source = peak_memory()
    print(f"peak memory       {peak / 2 ** 20:9.1f} MiB ({source})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
