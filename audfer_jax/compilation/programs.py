"""The programs `audfer-jax train` runs on a slice, built abstractly and compiled for it.

`build_programs` assembles the train and eval steps from the trainer's own
pieces (no data read, abstract state); `compile_program` lowers and compiles
one of them into a `Compiled` (XLA's FLOPs and HBM per chip), and
`memory_line` words its figures.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from typing import Any, Callable

from audfer_jax.compilation.topologies import GIB


class _ShapeOnlyData:
    """The input module `Experiment` uses, for shapes only (nothing is read).

    `loss=au_from_data` and `au.prior=from_data` estimate constants from the
    training AU labels; their values do not change the compiled program (only
    its constants), so placeholder statistics of the right shapes stand in.
    """

    def __init__(self, num_classes: int):
        self.num_classes = num_classes

    def train_au_statistics(self, data_config):
        import numpy as np  # pylint: disable=g-import-not-at-top
        from audfer_jax import au as au_lib  # pylint: disable=g-import-not-at-top
        del data_config
        n = 4 * self.num_classes
        targets = (np.arange(n * au_lib.NUM_AUS).reshape(n, -1) % 3 == 0).astype(np.float32)
        return targets, np.ones(n, np.float32), (np.arange(n) % self.num_classes).astype(
                np.int32)


@dataclasses.dataclass
class Programs:
    """What `train` would jit on the slice, ready to lower.

    Attributes:
        model: the Flax module.
        train_step, eval_step: the jitted steps (`parallel.jit_step`,
            `steps.jit_eval_step`).
        state: the abstract, replicated `TrainState`.
        train_batch, eval_batch: `ShapeDtypeStruct` dicts sharded over the mesh.
        global_batch, eval_batch_size: clips per step over the slice.
        views: test views per clip (1: `[B, T, H, W, 3]`, else `[B, V, ...]`).
        host_clip: `(T, S, S)` the host hands over for training (S is the
            crop source when the device augments).
        input_shape: `(T, H, W)` the model takes.
        augment: the device-side recipe, or None.
    """
    model: Any
    train_step: Callable
    eval_step: Callable
    state: Any
    train_batch: dict
    eval_batch: dict
    global_batch: int
    eval_batch_size: int
    views: int
    host_clip: tuple
    input_shape: tuple
    augment: str | None


def batch_specs(data_config, global_batch: int, eval_batch: int, mesh) -> tuple[dict, dict, int]:
    """`(train, eval, views)`: the batches `train` feeds, as sharded `ShapeDtypeStruct`s.

    Train: `clips [B, T, S, S, 3] uint8` (S = `augment_device.host_frame_size`
    when the device augments, else `image_size`), `labels [B] int32`,
    `au_targets [B, 18]`, `au_mask [B]`, `mask [B] float32` (the keys of
    `experiment.DEVICE_KEYS`, as `data/pipeline.py` yields them). Eval: the
    same with `clips [B, V, T, H, W, 3]` for V = temporal x spatial views > 1.
    """
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    from audfer_jax import au as au_lib  # pylint: disable=g-import-not-at-top
    from audfer_jax import parallel  # pylint: disable=g-import-not-at-top
    from audfer_jax.data import augment_device, sampling  # pylint: disable=g-import-not-at-top
    sharding = parallel.batch_sharded(mesh)
    t = sampling.spec_from_config(data_config).num_frames
    size = int(data_config.image_size)
    side = (augment_device.host_frame_size(data_config)
            if augment_device.uses_device_augment(data_config) else size)
    views = int(data_config.eval_temporal_views) * int(data_config.eval_spatial_views)

    def batch(b, clip_shape):
        spec = {"clips": ((b,) + clip_shape, jnp.uint8), "labels": ((b,), jnp.int32),
                "au_targets": ((b, au_lib.NUM_AUS), jnp.float32),
                "au_mask": ((b,), jnp.float32), "mask": ((b,), jnp.float32)}
        return {k: jax.ShapeDtypeStruct(s, d, sharding=sharding) for k, (s, d) in spec.items()}

    eval_clip = (t, size, size, 3) if views == 1 else (views, t, size, size, 3)
    return batch(global_batch, (t, side, side, 3)), batch(eval_batch, eval_clip), views


def build_programs(config, devices, global_batch: int, *,
                   steps_per_epoch: int = 1000) -> Programs:
    """The train and eval steps `audfer-jax train` runs on `devices`, abstractly.

    The pieces are the trainer's own (`model_state.build` for the model, its
    abstract state and optimizer, `experiment.resolve_loss`, the data
    config's device augmentation, `steps.make_train_step`,
    `parallel.jit_step`, `steps.jit_eval_step`).

    Args:
        config: experiment config.
        devices: the slice's devices (compile-only ones from libtpu, or any
            `jax.Device`s).
        global_batch: training clips per step over all `devices`.
        steps_per_epoch: optimizer steps per epoch for the schedule. Training
            derives it from the dataset's size; it sets the learning rates the
            schedule computes, not the program's shapes, so the default 1000
            stands for any dataset.

    Raises:
        ValueError: a bad config, `strategy=pmap`, or a batch that does not
            split evenly over the chips and hosts.
    """
    from audfer_jax import classes, experiment, parallel  # pylint: disable=g-import-not-at-top
    from audfer_jax import model_state  # pylint: disable=g-import-not-at-top
    from audfer_jax import steps as steps_lib  # pylint: disable=g-import-not-at-top
    from audfer_jax.data import augment_device  # pylint: disable=g-import-not-at-top
    from audfer_jax.data import config as data_config_lib  # pylint: disable=g-import-not-at-top
    strategy = str(config.get("strategy", "jit"))
    if strategy != "jit":
        raise ValueError(f"config.strategy={strategy!r}: compile supports the default jit "
                         "strategy only (pmap is in maintenance mode since JAX 0.8)")
    data_config = experiment.make_data_config(config, data_config_lib)
    dataset = str(data_config.name)
    num_classes = classes.num_classes(dataset)
    devices = list(devices)
    eval_batch = int(config.get("eval_batch_size", 0) or global_batch)
    _check_split(devices, global_batch, eval_batch)
    mesh = parallel.make_mesh(devices)
    setup = model_state.build(config, num_classes, steps_per_epoch=steps_per_epoch,
                              global_batch=global_batch, data_config=data_config)
    model = setup.model
    lam, prior, pos_weight = experiment.resolve_loss(
            config, dataset, num_classes, _ShapeOnlyData(num_classes), data_config)
    augment = augment_device.make_device_augment(data_config)
    step_fn = steps_lib.make_train_step(model, config, tx=setup.tx, schedule=setup.schedule,
                                        prior=prior, pos_weight=pos_weight, lam=lam,
                                        num_classes=num_classes, augment=augment)
    train_batch, eval_specs, views = batch_specs(data_config, global_batch, eval_batch, mesh)
    t = train_batch["clips"].shape[1:4]
    return Programs(
            model=model, train_step=parallel.jit_step(step_fn, mesh),
            eval_step=steps_lib.jit_eval_step(model, num_classes, mesh),
            state=setup.abstract_state(int(config.seed), mesh),
            train_batch=train_batch, eval_batch=eval_specs, global_batch=global_batch,
            eval_batch_size=eval_batch, views=views, host_clip=tuple(t),
            input_shape=tuple(setup.input_shape),
            augment=data_config.augment if augment is not None else None)


def _check_split(devices: list, global_batch: int, eval_batch: int) -> None:
    """Raises ValueError unless both batches split evenly over the chips and hosts."""
    chips, hosts = len(devices), len({d.process_index for d in devices})
    for what, b in (("global batch", global_batch), ("eval batch", eval_batch)):
        if b < 1 or b % chips:
            raise ValueError(f"{what} {b} is not a multiple of the {chips} chips; choose a "
                             f"multiple of {chips} (--batch is the global batch)")
        if b % hosts:
            raise ValueError(f"{what} {b} does not split over the {hosts} hosts")


@dataclasses.dataclass(frozen=True)
class Compiled:
    """One compiled program's figures (per chip).

    Attributes:
        seconds: wall-clock seconds of `lower` + `compile`.
        flops: XLA's cost-analysis FLOPs of one call on one chip, or None.
        arguments, temporaries, outputs, aliased, code: bytes per chip
            (`memory_analysis()`: argument, temp, output, alias and generated
            code sizes; aliased outputs reuse donated argument buffers).
    """
    seconds: float
    flops: float | None
    arguments: int
    temporaries: int
    outputs: int
    aliased: int
    code: int
    out_of_memory: str = ""
    required: int = 0

    @property
    def total(self) -> int:
        """Peak HBM of the program: arguments + temporaries + outputs - aliased + code.

        For a program XLA refused (`out_of_memory`), the bytes its message
        says were required (0 when it names none).
        """
        if self.out_of_memory:
            return self.required
        return self.arguments + self.temporaries + self.outputs - self.aliased + self.code


_SIZE_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([KMGT])i?B?\b")


def _required_bytes(message: str) -> int:
    """The first size in XLA's out-of-memory message, e.g. `(24.80G)`, in bytes."""
    m = _SIZE_RE.search(message)
    if not m:
        return 0
    return int(float(m.group(1)) * 1024 ** " KMGT".index(m.group(2)))


def compile_program(jitted: Callable, *args) -> Compiled:
    """Lowers and compiles `jitted(*args)` (abstract arguments); its figures.

    XLA:TPU refuses a program that does not fit the chip's HBM
    (`RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required
    ... (24.80G) exceeds available HBM (15.75G)`): that comes back as a
    `Compiled` with `out_of_memory` set, not as an error.
    """
    import jax  # pylint: disable=g-import-not-at-top
    from audfer_jax import flops as flops_lib  # pylint: disable=g-import-not-at-top
    t0 = time.perf_counter()
    try:
        compiled = jitted.lower(*args).compile()
    except jax.errors.JaxRuntimeError as e:
        text = " ".join(str(e).split())
        if "RESOURCE_EXHAUSTED" not in text:
            raise
        return Compiled(seconds=time.perf_counter() - t0, flops=None, arguments=0,
                        temporaries=0, outputs=0, aliased=0, code=0,
                        out_of_memory=text[:300], required=_required_bytes(
                                text.split("RESOURCE_EXHAUSTED", 1)[1]))
    seconds = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    return Compiled(seconds=seconds, flops=flops_lib.step_flops(compiled),
                    arguments=int(mem.argument_size_in_bytes),
                    temporaries=int(mem.temp_size_in_bytes),
                    outputs=int(mem.output_size_in_bytes),
                    aliased=int(mem.alias_size_in_bytes),
                    code=int(mem.generated_code_size_in_bytes))


def format_bytes(b: float) -> str:
    """`b` bytes as MiB below 0.1 GiB, else as GiB (two decimals)."""
    if b < 0.1 * GIB:
        return f"{b / (1 << 20):.2f} MiB"
    return f"{b / GIB:.2f} GiB"


def batch_bytes_per_chip(batch: dict, chips: int) -> int:
    """Bytes of one chip's share of a batch of `ShapeDtypeStruct`s."""
    return sum(math.prod(x.shape) * x.dtype.itemsize for x in batch.values()) // chips


def memory_line(name: str, c: Compiled, hbm: float) -> str:
    """`NAME HBM per chip: ...`: the figures of `c` against `hbm` bytes per chip."""
    if c.out_of_memory:
        need = f"needs {format_bytes(c.required)}" if c.required else "needs more"
        return (f"{name} HBM per chip: {need} of {hbm / GIB:g} GiB; XLA:TPU refused to "
                f"compile it ({c.out_of_memory})")
    return (f"{name} HBM per chip: arguments {format_bytes(c.arguments)}, temporaries "
            f"{format_bytes(c.temporaries)}, outputs {format_bytes(c.outputs)}, aliased "
            f"{format_bytes(c.aliased)}, code {format_bytes(c.code)} -> total "
            f"{format_bytes(c.total)} of {hbm / GIB:g} GiB ({100 * c.total / hbm:.1f} %)")
