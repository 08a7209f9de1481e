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
batch on the default JAX backend (`time_device_augment`). Targets: MAE-DFER
<= 9 ms host CPU per clip, Former-DFER and M3DFEL <= 4 ms.
"""

from __future__ import annotations

import os
import resource
import sys
import tempfile
import time

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
    p.add_argument("--augment_device", default="on", choices=("on", "off", "compare"),
                   help="random augmentation in the train step (on), in tf.data (off), "
                        "or both, alternating epochs (compare)")
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
    c.augment_device = args.augment_device != "off"
    c.shuffle_buffer = args.shuffle_buffer
    return c


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process and its threads, seconds."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _time_epoch(config, args, epoch):
    """One epoch: `{"steady": [clips, wall s, cpu s], "whole epoch": [...]}`, clip shape."""
    from audfer_jax.data import pipeline  # pylint: disable=g-import-not-at-top
    w0, c0 = time.perf_counter(), _cpu_seconds()
    ds = pipeline.create_train_dataset(config, global_batch_size=args.batch, seed=0,
                                       epoch=epoch, process_index=0, process_count=1)
    n = n_steady = 0
    w1 = c1 = None
    shape = None
    for step, batch in enumerate(ds):
        n += batch["clips"].shape[0]
        shape = batch["clips"].shape[1:]
        if step == args.warmup - 1:
            w1, c1 = time.perf_counter(), _cpu_seconds()
        elif step >= args.warmup:
            n_steady += batch["clips"].shape[0]
    w2, c2 = time.perf_counter(), _cpu_seconds()
    if n == 0:
        raise ValueError(f"an epoch has no batch of {args.batch}: use more clips")
    out = {"whole epoch": [n, w2 - w0, c2 - c0], "steady": [0, 0.0, 0.0]}
    if n_steady:
        out["steady"] = [n_steady, w2 - w1, c2 - c1]
    return out, shape


def _time_train(config, args, log):
    """Times whole epochs until `args.steps` batches are seen (per variant).

    Two figures: "steady" counts from the end of batch `args.warmup` of each
    epoch to its end (slightly optimistic: batches prefetched before that point
    are counted, their work is not); "whole epoch" counts from building the
    dataset (pessimistic on small sets: tracing is amortised over ~290 batches
    of a real DFEW epoch, not ~10). With `--augment_device compare` the epochs
    alternate between the tf.data augmentation and the device one (A B A B),
    so a change of the machine's load hits both alike.

    Returns:
        `{variant: steady host CPU ms per clip}`.
    """
    target = args.steps * args.batch
    variants = {"on": [True], "off": [False], "compare": [False, True]}[args.augment_device]
    totals = {v: {"steady": [0, 0.0, 0.0], "whole epoch": [0, 0.0, 0.0]} for v in variants}
    shapes = {}
    epoch = 0
    while min(t["whole epoch"][0] for t in totals.values()) < target:
        for v in variants:
            c = config.copy_and_resolve_references()
            c.augment_device = v
            res, shapes[v] = _time_epoch(c, args, epoch)
            for name, (n, wall, cpu) in res.items():
                acc = totals[v][name]
                totals[v][name] = [acc[0] + n, acc[1] + wall, acc[2] + cpu]
        epoch += 1
    ms = {}
    for v in variants:
        shape = "x".join(str(d) for d in shapes[v])
        where = "device (host: decode, sample, resize)" if v else "tf.data"
        log(f"train input, {shape} uint8 clips, batch {args.batch}, augment {args.augment} "
            f"on {where}, sampling {args.sampling}, {epoch} epoch(s); {os.cpu_count()} CPU "
            f"cores, load average {os.getloadavg()[0]:.1f}:")
        for name, (seen, wall, cpu) in totals[v].items():
            if not seen:
                continue
            # On a shared machine the wall-clock rate reflects the other load; the
            # CPU time per clip gives the rate this pipeline reaches on idle cores.
            per_clip = 1000 * cpu / seen
            log(f"  {name:<11}: {seen / wall:7.1f} clips/s wall ({seen} clips in {wall:.2f} s); "
                f"host CPU {per_clip:.2f} ms/clip -> {1000 / per_clip:.0f} clips/s per core")
            ms.setdefault(v, per_clip)
    return ms


def time_device_augment(data_config, batch: int, *, steps: int = 5, seed: int = 0) -> dict:
    """Wall time of the jitted device augmentation of one batch, default backend.

    Random `[batch, num_frames, S, S, 3] uint8` clips, S = the host frame size
    (`augment_device.host_frame_size`); compiled first, then the median of
    `steps` calls, each waited for (`block_until_ready`).

    Returns:
        `{"recipe", "input_shape", "output_shape", "compile_s", "ms_per_batch",
        "ms_per_clip", "backend"}`, or `{}` when the config has nothing to do
        on the device (`make_device_augment` is None).
    """
    import statistics  # pylint: disable=g-import-not-at-top
    import jax  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    from audfer_jax.data import augment_device  # pylint: disable=g-import-not-at-top
    fn = augment_device.make_device_augment(data_config)
    if fn is None:
        return {}
    size = augment_device.host_frame_size(data_config)
    clips = np.random.default_rng(seed).integers(
            0, 256, (batch, int(data_config.num_frames), size, size, 3), dtype=np.uint8)
    clips = jax.device_put(clips)
    fn = jax.jit(fn)
    key = jax.random.PRNGKey(seed)
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(key, clips))
    compile_s = time.perf_counter() - t0
    times = []
    for i in range(steps):
        k = jax.random.fold_in(key, i + 1)
        t0 = time.perf_counter()
        jax.block_until_ready(fn(k, clips))
        times.append(time.perf_counter() - t0)
    ms = 1000 * statistics.median(times)
    return {"recipe": data_config.augment, "input_shape": clips.shape,
            "output_shape": out.shape, "compile_s": compile_s, "ms_per_batch": ms,
            "ms_per_clip": ms / batch, "backend": jax.default_backend()}


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
                        prepare_size=args.prepare_size, log=lambda s: None)
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
        if args.augment_device != "off":
            r = time_device_augment(config, args.batch)
            if r:
                print(f"device augmentation ({r['backend']}, jitted): {r['recipe']} "
                      f"{'x'.join(map(str, r['input_shape']))} -> "
                      f"{'x'.join(map(str, r['output_shape']))}: {r['ms_per_batch']:.1f} ms "
                      f"per batch, {r['ms_per_clip']:.2f} ms per clip (compile "
                      f"{r['compile_s']:.1f} s)")
        if args.eval:
            _time_eval(config, args, print)
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
