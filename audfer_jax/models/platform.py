"""The platform a program is compiled for, as the model code sees it at trace time.

Several layers have two forms: one written for XLA:CPU (frame-wise and
batch-chunked convolutions, the polyphase and patchify backward passes of
strided convolutions, the slice-and-pad max-pool backward, the einsum-gradient
attention; `models/conv.py`, `models/layers.py`, docs/performance.md) and
lax's own form, which XLA:GPU and XLA:TPU are tuned for. Which one a program
gets must follow the devices it is compiled for, not the process's default
backend: `audfer-jax compile` traces TPU programs in a process whose default
backend is the CPU.

The step builders (`parallel.jit_step`, `parallel.pmap_step`,
`steps.create_train_state`, `steps.jit_eval_step`) trace their functions
inside `target(platform_of(devices))`; a layer asks `is_cpu()`. Outside any
target (an eager `model.apply`, a user's own `jax.jit`) the default backend
decides, as before.

`record_forms()` collects the form every layer chose while it is open, so a
test can check that a TPU program traced no CPU form.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Any, Callable, Iterable, Iterator

import jax

# The forms written for XLA:CPU (module docstring) and lax's forms.
CPU_FORMS = ("frames_conv", "batch_chunked_conv", "polyphase_backward", "patchify_backward",
             "slices_max_pool_backward", "cpu_attention", "scatter_equalize")
LAX_FORMS = ("lax_conv", "lax_max_pool", "fused_attention", "einsum_attention",
             "compare_equalize")

_TARGET: contextvars.ContextVar[str | None] = contextvars.ContextVar(
        "audfer_jax_compile_target", default=None)
_RECORD: contextvars.ContextVar[list | None] = contextvars.ContextVar(
        "audfer_jax_form_record", default=None)
_UNROLL: contextvars.ContextVar[bool] = contextvars.ContextVar(
        "audfer_jax_unroll_scans", default=False)


def platform_of(devices: Iterable[Any]) -> str:
    """The platform (`'cpu'`, `'gpu'`, `'tpu'`) of `devices` (`jax.Device`s, a mesh).

    Raises:
        ValueError: no devices, or devices of several platforms.
    """
    if isinstance(devices, jax.sharding.Mesh):
        devices = devices.devices.flat
    platforms = {d.platform for d in devices}
    if len(platforms) != 1:
        raise ValueError(f"a program runs on devices of one platform; got {sorted(platforms)}")
    return platforms.pop()


@contextlib.contextmanager
def target(platform: str) -> Iterator[str]:
    """Layers traced inside choose their forms for `platform`."""
    token = _TARGET.set(str(platform))
    try:
        yield str(platform)
    finally:
        _TARGET.reset(token)


def current() -> str:
    """The platform being traced for: the innermost `target`, else the default backend."""
    value = _TARGET.get()
    return value if value is not None else jax.default_backend()


def is_cpu() -> bool:
    """Whether the program being traced runs on CPU devices (then the CPU forms apply)."""
    return current() == "cpu"


def traced_for(fn: Callable, devices: Iterable[Any] | jax.sharding.Mesh) -> Callable:
    """`fn`, traced inside `target(platform_of(devices))` (wrap it before `jax.jit`).

    JAX traces a jitted function in the calling thread when it is first called
    or lowered, so the target is in force exactly while the model is traced.
    """
    platform = platform_of(devices)

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with target(platform):
            return fn(*args, **kwargs)

    return wrapped


def note(form: str) -> None:
    """Records that a layer traced `form` (a name of `CPU_FORMS` or `LAX_FORMS`)."""
    record = _RECORD.get()
    if record is not None:
        record.append((form, current()))


@contextlib.contextmanager
def record_forms() -> Iterator[list[tuple[str, str]]]:
    """Collects `(form, platform)` for every layer traced while open (tests, audits)."""
    record: list[tuple[str, str]] = []
    token = _RECORD.set(record)
    try:
        yield record
    finally:
        _RECORD.reset(token)


@contextlib.contextmanager
def unrolled_scans() -> Iterator[None]:
    """Layers traced inside write their scanned blocks out as straight-line code.

    For counting FLOPs: XLA's cost analysis counts a loop body once, so
    `audfer_jax.flops.unrolled_flops` traces a step in here (MAE-DFER's
    stacked blocks then lower like `scan_blocks=False`: same parameters and
    values, no loop). Programs that run are traced outside it.
    """
    token = _UNROLL.set(True)
    try:
        yield
    finally:
        _UNROLL.reset(token)


def scans_unrolled() -> bool:
    """Whether the program being traced is inside `unrolled_scans`."""
    return _UNROLL.get()
