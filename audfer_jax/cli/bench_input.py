"""`audfer-jax bench input`: clips/s of the training input pipeline.

Measures `pipeline.create_train_dataset` end to end (read prepared TFRecords,
sample, decode only the sampled frames, augment, batch, hand over as NumPy)
for 16-frame clips. Without `--data_dir` it writes a temporary synthetic demo
set (`audfer_jax.data.demo`), prepares it and measures on that.

Goal (issue 3): >= 500 clips/s for 16x112x112 clips on 2 CPU cores; the
figure depends on the stored frame size (`--frame_size` of the demo; DFEW's
`clip_224x224` frames cost about 4x more to decode than 112x112 ones, see
`--prepare_size`).

`--augment_device on|off|compare` (issue 14): the random augmentation in the
train step (`augment_device`; the host only decodes, samples and resizes to
the crop source size) or all in tf.data; `compare` alternates epochs of the
two. Host CPU ms per clip and the clips/s one core sustains are printed per
variant, and with `on`/`compare` the jitted device augmentation's time for one
batch on the default JAX backend (`benchmarks.input.time_device_augment`).
Targets: MAE-DFER <= 9 ms host CPU per clip, Former-DFER and M3DFEL <= 4 ms.
"""

from __future__ import annotations

import sys
import tempfile
import time

from audfer_jax.benchmarks import input as input_bench
from audfer_jax.cli import errors as cli_errors


def _parse(argv):
    p = cli_errors.ArgumentParser(prog="audfer-jax bench input",
                                  description=__doc__.split("\n")[0])
    p.add_argument("--data_dir", default=None,
                   help="prepared data root; default: a temporary demo set")
    p.add_argument("--name", default="demo", help="dataset name of --data_dir")
    p.add_argument("--fold", type=int, default=1)
    p.add_argument("--frame_set", default=None)
    p.add_argument("--prepare_size", type=int, default=None)
    p.add_argument("--batch", type=int, default=32, help="global batch size")
    p.add_argument("--steps", type=int, default=60,
                   help="batches to time (whole epochs are run)")
    p.add_argument("--warmup", type=int, default=2,
                   help="untimed batches at the start of every epoch (>= 1)")
    p.add_argument("--image_size", type=int, default=112)
    p.add_argument("--num_frames", type=int, default=16)
    p.add_argument("--sampling", default="segments",
                   choices=("segments", "uniform", "fixed_rate"))
    p.add_argument("--augment", default="former_dfer",
                   choices=("former_dfer", "m3dfel", "mae_dfer", "none"))
    p.add_argument("--shuffle_buffer", type=int, default=256)
    p.add_argument("--demo_clips", type=int, default=1000,
                   help="clips of the temporary demo set")
    p.add_argument("--frame_size", type=int, default=112,
                   help="frame side of the temporary demo set")
    p.add_argument("--augment_device", default="on",
                   choices=tuple(input_bench.AUGMENT_VARIANTS),
                   help="random augmentation in the train step (on), in tf.data (off), "
                        "or both, alternating epochs (compare)")
    p.add_argument("--eval", action="store_true", help="also time the eval pipeline")
    return p.parse_args(argv)


def _config(args, data_dir):
    """The data config the flags describe."""
    from audfer_jax.data import pipeline  # pylint: disable=g-import-not-at-top
    c = pipeline.default_data_config()
    c.name = args.name
    c.data_dir = data_dir
    c.fold = args.fold
    c.frame_set = args.frame_set
    c.prepare_size = args.prepare_size
    c.image_size = args.image_size
    c.num_frames = args.num_frames
    c.num_segments = args.num_frames // 2
    c.sampling = args.sampling
    c.augment = args.augment
    c.augment_device = args.augment_device != "off"
    c.shuffle_buffer = args.shuffle_buffer
    return c


def _demo_set(args, root: str) -> str:
    """Writes and prepares the temporary demo set under `root`; says so; its data root."""
    t = time.perf_counter()
    data_dir = input_bench.write_demo_set(root, num_clips=args.demo_clips,
                                          frame_size=args.frame_size, fold=args.fold,
                                          prepare_size=args.prepare_size)
    print(f"temporary demo set: {args.demo_clips} clips of {args.frame_size}x"
          f"{args.frame_size} frames, written and prepared in "
          f"{time.perf_counter() - t:.1f} s")
    return data_dir


def _measure(args, data_dir: str) -> None:
    """Prints the set's size, then the train (device augmentation, eval) figures."""
    from audfer_jax.data import pipeline  # pylint: disable=g-import-not-at-top
    config = _config(args, data_dir)
    info = pipeline.dataset_info(config)
    print(f"{config.name} fold {config.fold}: {info.num_train} train / "
          f"{info.num_test} test clips")
    input_bench.time_train(config, batch=args.batch, steps=args.steps, warmup=args.warmup,
                           augment_device=args.augment_device, log=print)
    if args.augment_device != "off":
        r = input_bench.time_device_augment(config, args.batch)
        if r:
            print(f"device augmentation ({r['backend']}, jitted): {r['recipe']} "
                  f"{'x'.join(map(str, r['input_shape']))} -> "
                  f"{'x'.join(map(str, r['output_shape']))}: {r['ms_per_batch']:.1f} ms "
                  f"per batch, {r['ms_per_clip']:.2f} ms per clip (compile "
                  f"{r['compile_s']:.1f} s)")
    if args.eval:
        input_bench.time_eval(config, batch=args.batch, log=print)


def main(argv: list[str]) -> int:
    """Runs the benchmark; prints the figures; returns the exit status."""
    args = _parse(argv)
    args.warmup = max(1, args.warmup)
    tmp = None
    data_dir = args.data_dir
    if data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="audfer_bench_")
        data_dir = _demo_set(args, tmp.name)
        args.name = "demo"
    try:
        _measure(args, data_dir)
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
