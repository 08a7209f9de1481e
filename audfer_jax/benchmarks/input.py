"""Clips/s of the training input pipeline (`audfer-jax bench input`'s library).

`time_train` measures `pipeline.create_train_dataset` end to end (read
prepared TFRecords, sample, decode only the sampled frames, augment, batch,
hand over as NumPy) over whole epochs; `write_demo_set` makes a synthetic
demo set to measure on when no prepared data is given.

Goal (issue 3): >= 500 clips/s for 16x112x112 clips on 2 CPU cores; the
figure depends on the stored frame size (`frame_size` of the demo; DFEW's
`clip_224x224` frames cost about 4x more to decode than 112x112 ones, see
`prepare_size`).

Device-side augmentation (issue 14): the random augmentation in the train
step (`augment_device`; the host only decodes, samples and resizes to the
crop source size) or all in tf.data; `time_train`'s `compare` alternates
epochs of the two. Host CPU ms per clip and the clips/s one core sustains are
logged per variant; `time_device_augment` times the jitted device
augmentation of one batch on the default JAX backend. Targets: MAE-DFER
<= 9 ms host CPU per clip, Former-DFER and M3DFEL <= 4 ms.
"""

from __future__ import annotations

import os
import resource
import time
from typing import Callable

# The variants `time_train` measures: device augmentation on, off, or both.
AUGMENT_VARIANTS = {"on": [True], "off": [False], "compare": [False, True]}


def write_demo_set(root: str, *, num_clips: int, frame_size: int, fold: int,
                   prepare_size: int | None) -> str:
    """Writes the synthetic demo set under `root` and prepares fold `fold` of it.

    Returns:
        The prepared data root (`root/data`); the raw set is in `root/raw`.
    """
    from audfer_jax.data import demo, prepare  # pylint: disable=g-import-not-at-top
    raw = os.path.join(root, "raw")
    data_dir = os.path.join(root, "data")
    demo.write_demo_dataset(raw, num_clips=num_clips, seed=0, image_size=frame_size)
    prepare.prepare("demo", raw, data_dir, fold, validate="header",
                    prepare_size=prepare_size, log=lambda s: None)
    return data_dir


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process and its threads, seconds."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def time_epoch(config, *, batch: int, warmup: int, epoch: int):
    """One epoch: `{"steady": [clips, wall s, cpu s], "whole epoch": [...]}`, clip shape.

    Raises:
        ValueError: the epoch has no batch of `batch` clips.
    """
    from audfer_jax.data import pipeline  # pylint: disable=g-import-not-at-top
    w0, c0 = time.perf_counter(), _cpu_seconds()
    ds = pipeline.create_train_dataset(config, global_batch_size=batch, seed=0,
                                       epoch=epoch, process_index=0, process_count=1)
    n = n_steady = 0
    w1 = c1 = None
    shape = None
    for step, b in enumerate(ds):
        n += b["clips"].shape[0]
        shape = b["clips"].shape[1:]
        if step == warmup - 1:
            w1, c1 = time.perf_counter(), _cpu_seconds()
        elif step >= warmup:
            n_steady += b["clips"].shape[0]
    w2, c2 = time.perf_counter(), _cpu_seconds()
    if n == 0:
        raise ValueError(f"an epoch has no batch of {batch}: use more clips")
    out = {"whole epoch": [n, w2 - w0, c2 - c0], "steady": [0, 0.0, 0.0]}
    if n_steady:
        out["steady"] = [n_steady, w2 - w1, c2 - c1]
    return out, shape


def time_train(config, *, batch: int, steps: int, warmup: int, augment_device: str,
               log: Callable[[str], None]) -> dict[bool, float]:
    """Times whole epochs until `steps` batches are seen (per variant).

    Two figures: "steady" counts from the end of batch `warmup` of each
    epoch to its end (slightly optimistic: batches prefetched before that point
    are counted, their work is not); "whole epoch" counts from building the
    dataset (pessimistic on small sets: tracing is amortised over ~290 batches
    of a real DFEW epoch, not ~10). With `augment_device="compare"` the epochs
    alternate between the tf.data augmentation and the device one (A B A B),
    so a change of the machine's load hits both alike.

    Args:
        config: the data config (`pipeline.default_data_config` layout).
        batch: global batch size.
        steps: batches to see per variant (whole epochs are run).
        warmup: untimed batches at the start of every epoch (>= 1).
        augment_device: a key of `AUGMENT_VARIANTS`.
        log: receives each output line.

    Returns:
        `{variant: steady host CPU ms per clip}`.
    """
    target = steps * batch
    variants = AUGMENT_VARIANTS[augment_device]
    totals = {v: {"steady": [0, 0.0, 0.0], "whole epoch": [0, 0.0, 0.0]} for v in variants}
    shapes = {}
    epoch = 0
    while min(t["whole epoch"][0] for t in totals.values()) < target:
        for v in variants:
            c = config.copy_and_resolve_references()
            c.augment_device = v
            res, shapes[v] = time_epoch(c, batch=batch, warmup=warmup, epoch=epoch)
            for name, (n, wall, cpu) in res.items():
                acc = totals[v][name]
                totals[v][name] = [acc[0] + n, acc[1] + wall, acc[2] + cpu]
        epoch += 1
    ms = {}
    for v in variants:
        shape = "x".join(str(d) for d in shapes[v])
        where = "device (host: decode, sample, resize)" if v else "tf.data"
        log(f"train input, {shape} uint8 clips, batch {batch}, augment {config.augment} "
            f"on {where}, sampling {config.sampling}, {epoch} epoch(s); {os.cpu_count()} CPU "
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


def time_eval(config, *, batch: int, log: Callable[[str], None]) -> None:
    """Logs the clips/s of one pass over the eval pipeline (start-up included)."""
    from audfer_jax.data import pipeline  # pylint: disable=g-import-not-at-top
    ds, steps = pipeline.create_eval_dataset(config, global_batch_size=batch,
                                             process_index=0, process_count=1)
    start, clips = time.perf_counter(), 0
    for b in ds:
        clips += int(b["mask"].sum())
    elapsed = time.perf_counter() - start
    log(f"eval input: {clips / elapsed:.1f} clips/s ({clips} clips, {steps} steps, "
        f"including the first-batch start-up)")
