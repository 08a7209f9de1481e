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

import os
import resource
import sys
import tempfile
import time

from audfer_jax import cli_errors


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


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process and its threads, seconds."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _time_train(config, args, log):
    """Times whole epochs until `args.steps` batches are seen.

    Two figures: "steady" counts from the end of batch `args.warmup` of each
    epoch to its end (slightly optimistic: batches prefetched before that point
    are counted, their work is not); "whole epoch" counts from building the
    dataset (pessimistic on small sets: tracing is amortised over ~290 batches
    of a real DFEW epoch, not ~10).
    """
    from audfer_jax.data import pipeline  # pylint: disable=g-import-not-at-top
    target = args.steps * args.batch
    totals = {"steady": [0, 0.0, 0.0], "whole epoch": [0, 0.0, 0.0]}
    epoch = 0
    while totals["whole epoch"][0] < target:
        w0, c0 = time.perf_counter(), _cpu_seconds()
        ds = pipeline.create_train_dataset(config, global_batch_size=args.batch, seed=0,
                                           epoch=epoch, process_index=0, process_count=1)
        epoch += 1
        n = n_steady = 0
        w1 = c1 = None
        for step, batch in enumerate(ds):
            n += batch["clips"].shape[0]
            if step == args.warmup - 1:
                w1, c1 = time.perf_counter(), _cpu_seconds()
            elif step >= args.warmup:
                n_steady += batch["clips"].shape[0]
        w2, c2 = time.perf_counter(), _cpu_seconds()
        if n == 0:
            raise ValueError(f"an epoch has no batch of {args.batch}: use more clips")
        totals["whole epoch"] = [totals["whole epoch"][0] + n,
                                 totals["whole epoch"][1] + w2 - w0,
                                 totals["whole epoch"][2] + c2 - c0]
        if n_steady:
            totals["steady"] = [totals["steady"][0] + n_steady,
                                totals["steady"][1] + w2 - w1,
                                totals["steady"][2] + c2 - c1]
    shape = "x".join(str(d) for d in batch["clips"].shape[1:])
    log(f"train input, {shape} uint8 clips, batch {args.batch}, augment {args.augment}, "
        f"sampling {args.sampling}, {epoch} epoch(s); {os.cpu_count()} CPU cores, "
        f"load average {os.getloadavg()[0]:.1f}:")
    rate = 0.0
    for name, (seen, wall, cpu) in totals.items():
        if not seen:
            continue
        # On a shared machine the wall-clock rate reflects the other load; the
        # CPU time per clip gives the rate this pipeline reaches on idle cores.
        log(f"  {name:<11}: {seen / wall:7.1f} clips/s wall ({seen} clips in {wall:.2f} s); "
            f"CPU {1000 * cpu / seen:.2f} ms/clip -> {2 * seen / cpu:.0f} clips/s on 2 idle cores")
        rate = rate or seen / wall
    return rate


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
    args.warmup = max(1, args.warmup)
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
