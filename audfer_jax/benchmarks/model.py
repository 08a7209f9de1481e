"""Forward and forward+backward throughput of a backbone (`audfer-jax bench model`'s library).

`build_model` makes the backbone from the registry (or a user backbone's
import path, with the AU head of `models.with_au_head`); `prepare`
initialises it on random uint8 clips of its input shape and jits the two
steps; `time_calls` times a step on the current JAX backend after one
compile/warm-up call, with `block_until_ready` around every timed call:

* forward: `apply(train=False)` (eval mode, running BatchNorm statistics);
* forward+backward: `value_and_grad` of cross-entropy on the logits plus the
  mean BCE of the AU logits, in train mode (batch statistics updated, dropout and
  drop-path active); no optimiser update.

`peak_memory` gives the device allocator's `peak_bytes_in_use` where the
backend reports it (GPU, TPU), else the process's peak resident set size
(`ru_maxrss`, CPU), which includes the Python process.
"""

from __future__ import annotations

import dataclasses
import resource
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from audfer_jax import models

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def build_model(name: str, *, num_classes: int, dtype: str = "float32",
                num_frames: int | None = None,
                image_size: int | None = None) -> tuple[Any, tuple[int, int, int]]:
    """The backbone `name` and its `(T, H, W)` input shape.

    Args:
        name: a registered model or a `package.module:factory` import path.
        num_classes: expression classes C.
        dtype: a key of `DTYPES`, the activation dtype (parameters stay float32).
        num_frames, image_size: the clip size of an import-path backbone
            without `num_frames`/`image_size` attributes.

    Raises:
        models.BackboneError: a user backbone that cannot be built or sized.
    """
    # dtype is passed only when it is not the default float32 of every
    # registered backbone, so that a user factory without `dtype` still runs.
    overrides = {"dtype": DTYPES[dtype]} if dtype != "float32" else {}
    sizes = {"num_frames": num_frames, "image_size": image_size}
    model = models.get_model(name, num_classes=num_classes, **overrides)
    return model, tuple(models.default_input_shape(name, sizes))


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A backbone ready to time.

    Attributes:
        num_params: parameters of the model.
        calls: `{"forward": fn, "forward+backward": fn}`, each `fn()` one
            jitted step on the same random batch.
    """
    num_params: int
    calls: dict[str, Callable[[], Any]]


def prepare(model, *, batch: int, input_shape, num_classes: int, seed: int = 0) -> Prepared:
    """Initialises `model` on random `[batch, T, H, W, 3] uint8` clips; its jitted steps."""
    t, h, w = input_shape
    rng = np.random.default_rng(seed)
    clips = jnp.asarray(rng.integers(0, 256, (batch, t, h, w, 3), dtype=np.uint8))
    labels = jnp.asarray(rng.integers(0, num_classes, (batch,), dtype=np.int32))
    au_targets = jnp.asarray(rng.integers(0, 2, (batch, 18)).astype(np.float32))

    # The rbg generator compiles far faster than threefry on CPU (the values of
    # the weights do not matter for throughput).
    key = jax.random.key(seed, impl="rbg")
    variables = jax.jit(lambda k: model.init({"params": k, "dropout": k}, clips, train=False))(key)
    params = variables["params"]
    extra = {k: v for k, v in variables.items() if k != "params"}
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))

    @jax.jit
    def forward(params, extra, clips):
        return model.apply({"params": params, **extra}, clips, train=False).logits

    def loss_fn(params, extra, clips, rng):
        out, updates = model.apply({"params": params, **extra}, clips, train=True,
                                   rngs={"dropout": rng}, mutable=list(extra))
        ce = optax.softmax_cross_entropy_with_integer_labels(out.logits, labels).mean()
        bce = optax.sigmoid_binary_cross_entropy(out.au_logits, au_targets).mean()
        return ce + bce, updates

    @jax.jit
    def forward_backward(params, extra, clips, rng):
        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, extra, clips,
                                                                           rng)
        return loss, grads, updates

    return Prepared(num_params=n_params, calls={
            "forward": lambda: forward(params, extra, clips),
            "forward+backward": lambda: forward_backward(params, extra, clips, key)})


def time_calls(fn: Callable[[], Any], steps: int) -> tuple[float, float]:
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
