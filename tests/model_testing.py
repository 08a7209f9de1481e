"""Helpers for the model tests: variables without compiling the initialisers.

On this project's CPUs, compiling a module's `init` is dominated by the
threefry random-number code (tens of seconds for a tiny backbone), while the
tests only need well-scaled values. `numpy_variables` reads the variable tree
with `jax.eval_shape` (nothing is compiled or run) and fills it with NumPy:
kernels and embeddings N(0, 1/fan_in), BatchNorm/LayerNorm scales and running
variances and DMIN weights 1, biases and running means 0.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

_ONES = {"scale", "var", "weight", "mean_weight", "var_weight"}
_ZEROS = {"bias", "mean"}


def numpy_variables(module, *args: Any, seed: int = 0, **kwargs: Any) -> dict:
    """Variables of `module.init(rng, *args, **kwargs)`, filled with NumPy values.

    `args` may hold arrays or `jax.ShapeDtypeStruct`s. Returns a dict of
    collections of float32 `jax.Array`s with the exact structure and shapes of
    the real init.
    """
    abstract = jax.eval_shape(
        lambda *a: module.init({
            "params": jax.random.key(0),
            "dropout": jax.random.key(1)
        }, *a, **kwargs), *args)
    rng = np.random.default_rng(seed)
    flat = {}
    for path, leaf in flatten_dict(abstract).items():
        name, shape = path[-1], tuple(leaf.shape)
        if name in _ONES:
            value = np.ones(shape)
        elif name in _ZEROS:
            value = np.zeros(shape)
        else:
            fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
            value = rng.standard_normal(shape) / np.sqrt(max(fan_in, 1))
        flat[path] = jnp.asarray(value, leaf.dtype)
    return unflatten_dict(flat)


def count(tree: Any) -> int:
    """Number of elements over the leaves of a (possibly abstract) pytree."""
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def abstract_variables(model, clips_shape) -> dict:
    """`jax.eval_shape` of `model.init` on uint8 clips of `clips_shape`: the
    variable tree of a full-size model without materialising it."""
    clips = jax.ShapeDtypeStruct(clips_shape, jnp.uint8)
    return jax.eval_shape(lambda c: model.init({"params": jax.random.key(0)}, c, train=False),
                          clips)


def tiny_clips(batch: int = 2, seed: int = 0) -> jnp.ndarray:
    """Random `[batch, 8, 32, 32, 3] uint8` clips, the tiny variants' input."""
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.integers(0, 256, (batch, 8, 32, 32, 3), dtype=np.uint8))
