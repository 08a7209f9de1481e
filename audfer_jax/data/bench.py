"""`audfer-jax bench input`: clips/s of the training input pipeline.

Measures `pipeline.create_train_dataset` end to end (read prepared TFRecords,
sample, decode only the sampled frames, augment, batch, hand over as NumPy)
for 16-frame clips. Without `--data_dir` it writes a temporary synthetic demo
set (`audfer_jax.data.demo`), prepares it and measures on that.

Goal (issue 3): >= 500 clips/s for 16x112x112 clips on 2 CPU cores; the
figure depends on the stored frame size (`--frame_size` of the demo; DFEW's
`clip_224x224` frames cost about 4x more to decode than 112x112 ones, see
`--prepare_size`).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time


def _parse(argv):
    p = argparse.ArgumentParser(prog="audfer-jax bench input", description=__doc__.split("\n")[0])
    p.add_argument("--data_dir", default=None,
                   help="prepared data root; default: a temporary demo set")
    p.add_argument("--name", default="demo", help="dataset name of --data_dir")
    p.add_argument("--fold", type=int, default=1)
    p.add_argument("--frame_set", default=None)
    p.add_argument("--prepare_size", type=int, default=None)
    p.add_argument("--batch", type=int, default=32, help="global batch size")
    p.add_argument("--steps", type=int, default=30, help="timed batches")
    p.add_argument("--warmup", type=int, default=3, help="untimed batches first")
    p.add_argument("--image_size", type=int, default=112)
    p.add_argument("--num_frames", type=int, default=16)
    p.add_argument("--sampling", default="segments",
                   choices=("segments", "uniform", "fixed_rate"))
    p.add_argument("--augment", default="former_dfer",
                   choices=("former_dfer", "m3dfel", "mae_dfer", "none"))
    p.add_argument("--shuffle_buffer", type=int, default=256)
    p.add_argument("--demo_clips", type=int, default=400,
                   help="clips of the temporary demo set")
    p.add_argument("--frame_size", type=int, default=112,
                   help="frame side of the temporary demo set")
    p.add_argument("--eval", action="store_true", help="also time the eval pipeline")
    return p.parse_args(argv)


def _config(args, data_dir):
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
    c.shuffle_buffer = args.shuffle_buffer
    return c


def _time_train(config, args, log):
    from audfer_jax.data import pipeline  # pylint: disable=g-import-not-at-top
    epoch, it = 0, None
    seen, start = 0, None
    total = args.warmup + args.steps
    for step in range(total):
        batch = None
        while batch is None:
            if it is None:
                it = iter(pipeline.create_train_dataset(
                    config, global_batch_size=args.batch, seed=0, epoch=epoch,
                    process_index=0, process_count=1))
            try:
                batch = next(it)
            except StopIteration:
                it, epoch = None, epoch + 1
        if step == args.warmup - 1 or (args.warmup == 0 and step == 0):
            start = time.perf_counter()
            continue
        if start is not None:
            seen += batch["clips"].shape[0]
    elapsed = time.perf_counter() - start
    shape = "x".join(str(d) for d in batch["clips"].shape[1:])
    log(f"train input: {seen / elapsed:.1f} clips/s ({seen} clips of {shape} uint8 "
        f"in {elapsed:.2f} s, batch {args.batch}, augment {args.augment}, "
        f"sampling {args.sampling}, {os.cpu_count()} CPU cores)")
    return seen / elapsed


def _time_eval(config, args, log):
    from audfer_jax.data import pipeline  # pylint: disable=g-import-not-at-top
    ds, steps = pipeline.create_eval_dataset(config, global_batch_size=args.batch,
                                             process_index=0, process_count=1)
    start, clips = time.perf_counter(), 0
    for batch in ds:
        clips += int(batch["mask"].sum())
    elapsed = time.perf_counter() - start
    log(f"eval input: {clips / elapsed:.1f} clips/s ({clips} clips, {steps} steps, "
        f"including the first-batch start-up)")


def main(argv: list[str]) -> int:
    """Runs the benchmark; prints the figures; returns the exit status."""
    args = _parse(argv)
    from audfer_jax.data import pipeline, prepare  # pylint: disable=g-import-not-at-top
    tmp = None
    data_dir = args.data_dir
    if data_dir is None:
        from audfer_jax.data import demo  # pylint: disable=g-import-not-at-top
        tmp = tempfile.TemporaryDirectory(prefix="audfer_bench_")
        raw = os.path.join(tmp.name, "raw")
        data_dir = os.path.join(tmp.name, "data")
        t = time.perf_counter()
        demo.write_demo_dataset(raw, num_clips=args.demo_clips, seed=0,
                                image_size=args.frame_size)
        prepare.prepare("demo", raw, data_dir, args.fold, validate="header",
                        log=lambda s: None)
        print(f"temporary demo set: {args.demo_clips} clips of {args.frame_size}x"
              f"{args.frame_size} frames, written and prepared in "
              f"{time.perf_counter() - t:.1f} s")
        args.name = "demo"
    try:
        config = _config(args, data_dir)
        info = pipeline.dataset_info(config)
        print(f"{config.name} fold {config.fold}: {info.num_train} train / "
              f"{info.num_test} test clips")
        _time_train(config, args, print)
        if args.eval:
            _time_eval(config, args, print)
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
