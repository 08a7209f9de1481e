"""`audfer-jax compile`: compile the real train step for a TPU slice on any host.

    audfer-jax compile --config configs/mae_dfer.py:dataset=dfew,fold=1 --topology v5e:4x4 \\
        [--batch N | --max-batch] [--hbm-gib G] [--config.FIELD=VALUE ...]

Pod readiness without a pod (MaxText's `train_compile.py` idea): libtpu
describes a named slice without any TPU (`jax.experimental.topologies`, its
compile-only devices), and XLA:TPU compiles for it on this host. The command
builds what `audfer-jax train` runs on that slice (`build_programs`): the
config's model, optimizer, AU loss constants, device-side augmentation and
`steps.make_train_step`, jitted by `parallel.jit_step` over a `('data',)`
mesh of the slice's chips (state replicated and donated, batch sharded), and
the evaluation step with its multi-view batch (`steps.jit_eval_step`). No
data is read: the batch shapes come from the config (`batch_specs`), the
state is abstract (`steps.abstract_train_state`). It prints the slice, the
batch per chip and per host, the compile seconds, XLA's FLOPs per training
clip, the HBM per chip of both programs (`memory_analysis`) against the
chip's HBM (`HBM_GIB`), and `fits: yes|no`; exit status 0 when both
programs fit, 1 when one does not, so a launch script can gate on it.

`--max-batch` finds the largest per-chip batch whose train step fits
(`search_max_batch`): memory grows about linearly in the batch, so two
compiles fit a line, and compiles next to its prediction confirm the edge.

What differs from a TPU host: nothing in the program (the same libtpu compiles
it); the HBM a real chip leaves free to programs is somewhat less than its
datasheet size (runtime reservations), hence `--hbm-gib`. No step is run, so
nothing here is a speed measurement (XLA's `optimal_seconds` is not reported).
GPU: JAX 0.10.2 has no deviceless CUDA topology (jax issues #23971, #28376).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import sys
import tempfile
import time
from typing import Any, Callable, Iterator

from audfer_jax.cli import errors as cli_errors

PROG = "audfer-jax compile"

# HBM per chip, GiB. Sources: Google Cloud TPU system architecture pages
# (cloud.google.com/tpu/docs/v4, /v5e, /v5p, /v6e): TPU v4 32 GiB HBM2,
# v5e 16 GiB HBM2, v5p 95 GiB HBM2e, v6e (Trillium) 32 GiB.
HBM_GIB = {"v4": 32.0, "v5e": 16.0, "v5p": 95.0, "v6e": 32.0}
# Chip grids: 2-D for the "lite" chips (v5e, v6e), 3-D for v4 and v5p.
_TOPOLOGY_RE = re.compile(r"^(v4|v5e|v5p|v6e):(\d+x\d+(?:x\d+)?)$")
TOPOLOGY_FORMS = ("v5e:AxB", "v6e:AxB", "v4:AxBxC", "v5p:AxBxC")
TOPOLOGY_EXAMPLES = "e.g. v5e:2x2, v5e:4x4, v5e:16x16, v6e:8x8, v4:2x2x2, v5p:4x4x4"
TPU_INSTALL = "pip install 'audfer_jax[tpu]' (or pip install 'jax[tpu]==0.10.2')"
GIB = float(1 << 30)


# ---------------------------------------------------------------------------
# The slice.
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Slice:
    """A named TPU slice described by libtpu, without hardware.

    Attributes:
        name: the topology name, e.g. `v5e:4x4`.
        generation: `v4`, `v5e`, `v5p` or `v6e`.
        devices: libtpu's compile-only `jax.Device`s, one per chip.
        hosts: processes (TPU VM hosts) the slice's chips belong to.
        device_kind: e.g. `TPU v5 lite`.
    """
    name: str
    generation: str
    devices: tuple
    hosts: int
    device_kind: str

    @property
    def chips(self) -> int:
        return len(self.devices)


def parse_topology(name: str, platform: str = "tpu") -> str:
    """The generation of a topology name (`v5e:4x4` -> `v5e`).

    Raises:
        ValueError: a platform other than tpu, or a name not of a form in
            `TOPOLOGY_FORMS`.
    """
    if platform != "tpu":
        raise ValueError(f"--platform {platform}: only tpu can be compiled for without the "
                         "devices (JAX 0.10.2 has no deviceless GPU topology: jax issues "
                         "#23971, #28376); use --platform tpu")
    m = _TOPOLOGY_RE.match(name.strip())
    if not m:
        raise ValueError(f"unknown topology {name!r}; expected one of the forms "
                         f"{', '.join(TOPOLOGY_FORMS)} ({TOPOLOGY_EXAMPLES})")
    gen, shape = m.groups()
    want = 3 if gen in ("v4", "v5p") else 2
    if len(shape.split("x")) != want:
        raise ValueError(f"unknown topology {name!r}: {gen} chips form a "
                         f"{'3-D (AxBxC)' if want == 3 else '2-D (AxB)'} grid; expected one "
                         f"of the forms {', '.join(TOPOLOGY_FORMS)} ({TOPOLOGY_EXAMPLES})")
    return gen


def libtpu_available() -> bool:
    """Whether libtpu can be loaded (`TPU_LIBRARY_PATH` or the `libtpu` package)."""
    path = os.environ.get("TPU_LIBRARY_PATH")
    if path and os.path.isfile(path):
        return True
    try:
        import libtpu  # pylint: disable=g-import-not-at-top,unused-import  # noqa: F401
    except ImportError:
        return False
    return True


def load_slice(name: str, platform: str = "tpu") -> Slice:
    """libtpu's description of the slice `name` (no TPU needed).

    Raises:
        ValueError: bad platform or name (`parse_topology`), libtpu missing
            (names the install line), or a name libtpu rejects.
    """
    gen = parse_topology(name, platform)
    if not libtpu_available():
        raise ValueError(f"--topology {name} needs libtpu, which is not installed: "
                         f"{TPU_INSTALL}")
    import jax  # pylint: disable=g-import-not-at-top
    from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
    try:
        topo = topologies.get_topology_desc(topology_name=name.strip(), platform="tpu")
    except jax.errors.JaxRuntimeError as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"libtpu rejects topology {name!r}: {reason}; expected one of the "
                         f"forms {', '.join(TOPOLOGY_FORMS)} ({TOPOLOGY_EXAMPLES})") from None
    devices = tuple(topo.devices)
    return Slice(name=name.strip(), generation=gen, devices=devices,
                 hosts=len({d.process_index for d in devices}),
                 device_kind=str(devices[0].device_kind))


@contextlib.contextmanager
def quiet_stderr(enabled: bool) -> Iterator[list[str]]:
    """Sends what libtpu and XLA write to file descriptor 2 to a buffer.

    libtpu prints start-up warnings (`TPU_ACCELERATOR_TYPE`,
    `TPU_WORKER_HOSTNAMES`: there is no TPU VM here) and XLA its log lines
    from C++, below Python's `sys.stderr`, so the descriptor itself is
    redirected. Yields a list that holds the captured text afterwards.
    """
    captured: list[str] = []
    if not enabled:
        yield captured
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            captured.append(tmp.read().decode("utf-8", "replace"))


# ---------------------------------------------------------------------------
# The programs.
# ---------------------------------------------------------------------------

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


def build_programs(config, devices, global_batch: int) -> Programs:
    """The train and eval steps `audfer-jax train` runs on `devices`, abstractly.

    The pieces are the trainer's own (`experiment.build_model`,
    `optim.make_optimizer`, `experiment.resolve_loss`, the data config's
    device augmentation, `steps.make_train_step`, `parallel.jit_step`,
    `steps.jit_eval_step`). The optimizer's schedule needs steps per epoch,
    which come from the dataset's size; any value gives the same program
    shapes, so `_STEPS_PER_EPOCH` stands in.

    Raises:
        ValueError: a bad config, `strategy=pmap`, or a batch that does not
            split evenly over the chips and hosts.
    """
    from audfer_jax import classes, experiment, optim, parallel  # pylint: disable=g-import-not-at-top
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
    chips, hosts = len(devices), len({d.process_index for d in devices})
    eval_batch = int(config.get("eval_batch_size", 0) or global_batch)
    for what, b in (("global batch", global_batch), ("eval batch", eval_batch)):
        if b < 1 or b % chips:
            raise ValueError(f"{what} {b} is not a multiple of the {chips} chips; choose a "
                             f"multiple of {chips} (--batch is the global batch)")
        if b % hosts:
            raise ValueError(f"{what} {b} does not split over the {hosts} hosts")
    mesh = parallel.make_mesh(devices)
    model = experiment.build_model(config, num_classes)
    input_shape = experiment.model_input_shape(model, config.model, data_config)
    params = steps_lib.abstract_params(model, input_shape)
    tx, schedule = optim.make_optimizer(
            config.optim, params, steps_per_epoch=_STEPS_PER_EPOCH,
            num_epochs=int(config.num_epochs), global_batch_size=global_batch,
            num_layers=experiment.model_depth(model))
    lam, prior, pos_weight = experiment.resolve_loss(
            config, dataset, num_classes, _ShapeOnlyData(num_classes), data_config)
    augment = augment_device.make_device_augment(data_config)
    step_fn = steps_lib.make_train_step(model, config, tx=tx, schedule=schedule, prior=prior,
                                        pos_weight=pos_weight, lam=lam,
                                        num_classes=num_classes, augment=augment)
    train_batch, eval_specs, views = batch_specs(data_config, global_batch, eval_batch, mesh)
    t = train_batch["clips"].shape[1:4]
    return Programs(
            model=model, train_step=parallel.jit_step(step_fn, mesh),
            eval_step=steps_lib.jit_eval_step(model, num_classes, mesh),
            state=steps_lib.abstract_train_state(model, tx, input_shape, int(config.seed), mesh),
            train_batch=train_batch, eval_batch=eval_specs, global_batch=global_batch,
            eval_batch_size=eval_batch, views=views, host_clip=tuple(t),
            input_shape=tuple(input_shape),
            augment=data_config.augment if augment is not None else None)


_STEPS_PER_EPOCH = 1000


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


# ---------------------------------------------------------------------------
# The largest per-chip batch.
# ---------------------------------------------------------------------------

def search_bytes(compiled: Compiled, extra: int, hbm: float) -> float:
    """The bytes per chip `search_max_batch` sees for one compile.

    A program XLA:TPU refused never fits, whatever the HBM compared with:
    XLA's own limit (15.75 GiB on a v5e) is below the datasheet's 16 GiB, so a
    refused program that needed 15.76 GiB must not count as fitting 16 GiB
    (a MAE-DFER search did so before). Its required bytes still place the
    line through the sizes; below `hbm` they are raised to just above it.

    Args:
        compiled: the train step's `Compiled`.
        extra: bytes of the prefetched batches beside the step.
        hbm: bytes per chip compared with.

    Returns:
        bytes; `inf` for a refused program whose message names no size.
    """
    if not compiled.out_of_memory:
        return float(compiled.total + extra)
    if not compiled.required:
        return math.inf
    return max(float(compiled.required + extra), math.nextafter(float(hbm), math.inf))


@dataclasses.dataclass
class Search:
    """The result of `search_max_batch`.

    Attributes:
        largest: the largest per-chip batch that fits (0: not even 1).
        measured: `{per-chip batch: bytes}` of every compile, in order.
        predicted: the first linear fit's prediction of `largest`.
    """
    largest: int
    measured: dict
    predicted: int | None


def search_max_batch(measure: Callable[[int], float], limit: float, hint: int = 8,
                     max_compiles: int = 16) -> Search:
    """The largest per-chip batch n with `measure(n) <= limit`, in few compiles.

    Memory grows about linearly in the batch (activations), so `measure` at
    per-chip 1 and `hint` gives a line, and the size it predicts is compiled;
    while sizes fit, each new line runs through the smallest and the largest
    size that fit (per-chip 1 only while no other exists: tiny batches can
    take more memory than larger ones, padded to the chip's tiles). The size
    after a fitting one is compiled only where the line says it should not
    fit (the edge is near); once a size fails, lines inside the
    bracket, where each line that does not halve the bracket is followed by a
    bisection (memory may grow in steps), until a size that fits sits next to
    one that does not.
    Assumes `measure` does not decrease with n beyond the smallest sizes.

    Args:
        measure: per-chip batch -> bytes per chip (one compile each).
        limit: bytes per chip available.
        hint: the second size tried (e.g. the recipe's per-chip batch).
        max_compiles: stop after this many (then `largest` is the largest
            size seen to fit, and `measured` has no failing size after it).

    Returns:
        A `Search`.
    """
    pts: dict[int, float] = {}

    def m(n: int) -> float:
        if n not in pts:
            pts[n] = float(measure(n))
        return pts[n]

    if m(1) > limit:
        return Search(0, pts, None)
    m(max(2, int(hint)))
    predicted = None
    width = math.inf              # the bracket's width when its last line was drawn
    while len(pts) < max_compiles:
        fit = [n for n in pts if pts[n] <= limit]
        lo = max(fit)
        over = [n for n in pts if n > lo and pts[n] > limit]
        hi = min(over) if over else None
        if hi == lo + 1:
            break
        if hi is not None and hi - lo > width / 2:
            # Memory may grow in steps (tiled layouts): where the last line
            # did not halve the bracket, bisect it once.
            width = hi - lo
            m((lo + hi) // 2)
            continue
        if hi is not None:
            width = hi - lo
        if hi is not None:
            n1, n2 = lo, hi
        else:
            base = [n for n in fit if n >= 2 and n < lo]
            n1, n2 = (min(base) if base else min(fit)), lo
        slope = (pts[n2] - pts[n1]) / (n2 - n1)
        guess = (lo + int(math.floor((limit - pts[lo]) / slope)) if slope > 0 else 2 * lo)
        if predicted is None:
            predicted = guess
        cand = max(lo + 1, guess)
        if hi is not None:
            cand = min(cand, hi - 1)
        fits = m(cand) <= limit
        near = slope > 0 and limit - pts[cand] < slope
        if (near and fits and len(pts) < max_compiles
                and (hi is None or cand + 1 < hi)):
            m(cand + 1)           # the line says the next size does not fit: check
    largest = max(n for n in pts if pts[n] <= limit)
    return Search(largest, pts, predicted)


# ---------------------------------------------------------------------------
# The command.
# ---------------------------------------------------------------------------

def _gib(b: float) -> str:
    if b < 0.1 * GIB:
        return f"{b / (1 << 20):.2f} MiB"
    return f"{b / GIB:.2f} GiB"


def _batch_bytes_per_chip(batch: dict, chips: int) -> int:
    """Bytes of one chip's share of a batch of `ShapeDtypeStruct`s."""
    return sum(math.prod(x.shape) * x.dtype.itemsize for x in batch.values()) // chips


def _memory_line(name: str, c: Compiled, hbm: float) -> str:
    if c.out_of_memory:
        need = f"needs {_gib(c.required)}" if c.required else "needs more"
        return (f"{name} HBM per chip: {need} of {hbm / GIB:g} GiB; XLA:TPU refused to "
                f"compile it ({c.out_of_memory})")
    return (f"{name} HBM per chip: arguments {_gib(c.arguments)}, temporaries "
            f"{_gib(c.temporaries)}, outputs {_gib(c.outputs)}, aliased {_gib(c.aliased)}, "
            f"code {_gib(c.code)} -> total {_gib(c.total)} of {hbm / GIB:g} GiB "
            f"({100 * c.total / hbm:.1f} %)")


def run(config, *, topology: str, batch: int | None = None, max_batch: bool = False,
        hbm_gib: float | None = None, platform: str = "tpu", eval_step: bool = True,
        quiet: bool = True, log: Callable[[str], None] = print) -> dict:
    """Compiles `config`'s train (and eval) step for `topology`; prints and returns figures.

    Args:
        config: experiment config.
        topology: libtpu topology name (`TOPOLOGY_FORMS`).
        batch: global batch (default `config.batch_size`); ignored with
            `max_batch`.
        max_batch: search the largest per-chip batch that fits.
        hbm_gib: HBM per chip (default `HBM_GIB` of the generation).
        platform: only `tpu`.
        eval_step: also compile the evaluation step.
        quiet: hide what libtpu and XLA print (`quiet_stderr`).
        log: receives each output line.

    Returns:
        A JSON-able dict of every figure printed, with `fits` (bool).

    Raises:
        ValueError: bad topology, platform, batch or config; libtpu missing.
    """
    from audfer_jax import flops as flops_lib  # pylint: disable=g-import-not-at-top
    with quiet_stderr(quiet):
        sl = load_slice(topology, platform)
    hbm = float(hbm_gib if hbm_gib else HBM_GIB[sl.generation]) * GIB
    if hbm <= 0:
        raise ValueError(f"--hbm-gib must be > 0, got {hbm_gib}")
    hbm_source = "--hbm-gib" if hbm_gib else f"{sl.generation} datasheet"
    recipe = int(config.batch_size)
    out: dict[str, Any] = {
            "model": str(config.model), "dtype": str(config.get("dtype", "float32")),
            "remat": bool(config.get("remat", False)),
            "scan_blocks": bool(config.get("scan_blocks", False)),
            "topology": sl.name, "chips": sl.chips, "hosts": sl.hosts,
            "device_kind": sl.device_kind, "hbm_gib": hbm / GIB, "recipe_batch": recipe}
    log(f"model: {out['model']}, {out['dtype']}, remat {'on' if out['remat'] else 'off'}, "
        f"scan_blocks {'on' if out['scan_blocks'] else 'off'}; strategy jit")
    log(f"topology: {sl.name}: {sl.chips} chips ({sl.device_kind}) in {sl.hosts} host(s), "
        f"{sl.chips // sl.hosts} chips per host; HBM {hbm / GIB:g} GiB per chip ({hbm_source})")

    def programs_for(global_batch):
        return build_programs(config, sl.devices, global_batch)

    prefetched = int(config.get("prefetch_to_device", 0) or 0)

    def train_memory(per_chip):
        """The train step's figures and the prefetched batches' bytes per chip."""
        p = programs_for(per_chip * sl.chips)
        with quiet_stderr(quiet):
            c = compile_program(p.train_step, p.state, p.train_batch)
        if c.out_of_memory:
            log(f"  per-chip batch {per_chip}: train step does not fit, "
                f"{_memory_line('', c, hbm).split(': ', 1)[1]}")
            return c, 0
        log(f"  per-chip batch {per_chip}: train step {_gib(c.total)} per chip, "
            f"{100 * c.total / hbm:.1f} % of HBM before prefetched batches (compiled in "
            f"{c.seconds:.1f} s)")
        return c, prefetched * _batch_bytes_per_chip(p.train_batch, sl.chips)

    search = None
    cache: dict[int, Compiled] = {}     # per-chip batch -> its train-step compile
    if max_batch:

        def measure(n):
            cache[n], extra = train_memory(n)
            return search_bytes(cache[n], extra, hbm)
        hint = recipe // sl.chips if recipe % sl.chips == 0 and recipe >= 2 * sl.chips else 8
        log(f"searching the largest per-chip batch (linear fit from per-chip 1 and {hint}):")
        search = search_max_batch(measure, hbm, hint=hint)
        out["max_batch_per_chip"] = search.largest
        out["max_batch_predicted"] = search.predicted
        out["max_batch_compiles"] = {str(k): v for k, v in search.measured.items()}
        out["max_batch_compile_seconds"] = {str(k): cache[k].seconds for k in search.measured}
        if hint in cache:
            out["hint_per_chip"] = hint
            out["hint_total_bytes"] = cache[hint].total
        if search.largest == 0:
            c = cache[1]
            log(_memory_line("train step (per-chip batch 1)", c, hbm))
            log("largest per-chip batch that fits: 0 (not even one clip per chip)")
            log("fits: no")
            out["fits"] = False
            return out
        batch = search.largest * sl.chips
    global_batch = int(batch if batch else recipe)
    p = programs_for(global_batch)
    per_chip, per_host = global_batch // sl.chips, global_batch // sl.hosts
    t, s, _ = p.host_clip
    aug = (f"; the device augments ({p.augment}) to {p.input_shape[1]}x{p.input_shape[2]}"
           if p.augment else "")
    log(f"batch: global {global_batch} clips, {per_chip} per chip, {per_host} per host; "
        f"train clips {t}x{s}x{s}x3 uint8{aug}")
    log(f"eval batch: global {p.eval_batch_size}, {p.eval_batch_size // sl.chips} per chip, "
        f"{p.views} view(s) per clip")
    if search is not None and search.largest in cache:
        train_c = cache[search.largest]
    else:
        with quiet_stderr(quiet):
            train_c = compile_program(p.train_step, p.state, p.train_batch)
    out.update(global_batch=global_batch, per_chip_batch=per_chip, per_host_batch=per_host,
               train_compile_s=train_c.seconds, train=dataclasses.asdict(train_c),
               train_total_bytes=train_c.total)
    log(f"train step: compiled in {train_c.seconds:.1f} s")
    note = flops_lib.uncounted_reason(p.model)
    if note:
        out["flops_note"] = note
        log(f"train step FLOPs: {note}")
    elif train_c.out_of_memory:
        log("train step FLOPs: n/a (not compiled: out of HBM)")
    elif train_c.flops:
        per_clip = train_c.flops * sl.chips / global_batch
        out["flops_per_clip"] = per_clip
        log(f"train step: {per_clip:.3g} FLOPs per clip (XLA cost analysis of the compiled "
            f"program; forward, backward and update)")
    log(_memory_line("train step", train_c, hbm))
    # `train` puts the next `prefetch_to_device` batches on the devices while
    # a step runs: HBM beside the step's own arguments.
    prefetch = prefetched * _batch_bytes_per_chip(p.train_batch, sl.chips)
    out["prefetch_bytes"] = prefetch
    if prefetch:
        log(f"  + {prefetched} batches prefetched to the devices "
            f"(config.prefetch_to_device): {_gib(prefetch)} -> {_gib(train_c.total + prefetch)}"
            f" ({100 * (train_c.total + prefetch) / hbm:.1f} %)")
    fits = train_c.total + prefetch <= hbm and not train_c.out_of_memory
    if eval_step:
        with quiet_stderr(quiet):
            eval_c = compile_program(p.eval_step, p.state, p.eval_batch)
        out.update(eval_compile_s=eval_c.seconds, eval=dataclasses.asdict(eval_c),
                   eval_total_bytes=eval_c.total)
        log(f"eval step: compiled in {eval_c.seconds:.1f} s")
        log(_memory_line("eval step", eval_c, hbm))
        fits = fits and eval_c.total <= hbm and not eval_c.out_of_memory
    if search is not None:
        nxt = search.largest + 1
        if nxt in cache and cache[nxt].out_of_memory:
            needs = f", needs {_gib(cache[nxt].required)}" if cache[nxt].required else ""
            edge = f"; per-chip {nxt}: XLA:TPU refused it{needs}"
        elif nxt in search.measured:
            edge = f"; per-chip {nxt}: {_gib(search.measured[nxt])} does not"
        else:
            edge = ""
        log(f"largest per-chip batch that fits: {search.largest} (train step and prefetched "
            f"batches {_gib(search.measured[search.largest])} of {hbm / GIB:g} GiB{edge}; first "
            f"linear fit predicted {search.predicted}; {len(search.measured)} compiles)")
    out["fits"] = bool(fits)
    log(f"fits: {'yes' if fits else 'no'}")
    return out


def main(argv: list[str]) -> int:
    """`audfer-jax compile --config FILE.py:ARGS --topology v5e:4x4 [...]`."""
    from audfer_jax import config_lib  # pylint: disable=g-import-not-at-top
    try:
        rest, overrides = config_lib.split_config_overrides(argv)
    except ValueError as e:
        return cli_errors.report(PROG, e, status=2)
    parser = cli_errors.ArgumentParser(
            prog=PROG,
            description="Compile the train and eval steps of a config for a TPU slice on "
                        "this host (libtpu's deviceless topologies); print FLOPs and HBM per "
                        "chip; exit 0 when they fit, 1 when not.")
    parser.add_argument("--config", required=True, help="configs/<backbone>.py:ARGS")
    parser.add_argument("--topology", required=True,
                        help=f"TPU slice: {', '.join(TOPOLOGY_FORMS)} ({TOPOLOGY_EXAMPLES})")
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
    args = parser.parse_args(rest)
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
        result = run(config, topology=args.topology, batch=args.batch,
                     max_batch=args.max_batch, hbm_gib=args.hbm_gib, platform=args.platform,
                     eval_step=not args.no_eval, quiet=quiet,
                     log=lambda line: print(line, flush=True))
    except cli_errors.USER_ERRORS as e:
        return cli_errors.report(PROG, e)
    except KeyError as e:        # an unknown --config.FIELD
        return cli_errors.report(PROG, cli_errors.UsageError(cli_errors.one_line(e)))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"config": args.config, "overrides": overrides, **result}, f, indent=2)
    return 0 if result["fits"] else 1
