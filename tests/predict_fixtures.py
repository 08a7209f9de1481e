"""A tiny Former-DFER variables checkpoint for the `predict` plot and timeline tests.

Variables are drawn with NumPy over the shapes of `jax.eval_shape(init)` (as in
`test_predict.py`: the model's own jitted init costs minutes of compilation on
a loaded 2-core machine; inference does not care how the weights were made).
The checkpoint's metadata holds a whole run config (the demo set's, AU loss),
so `predict` knows the run's AU prior.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from audfer_jax import checkpoint as ckpt_lib
from audfer_jax import classes
from audfer_jax import config_lib

MODEL = "former_dfer_tiny"
T, S = 8, 32                       # the tiny model's input: 8 frames of 32 x 32
DATA = {"num_frames": T, "image_size": S, "sampling": "segments",
        "num_segments": 4, "frames_per_segment": 2}
NAMES = list(classes.DFEW_CLASSES)


def random_variables(model, seed: int = 0):
    """Random variables of `model` (BatchNorm statistics 0 mean, unit variance)."""
    shapes = jax.eval_shape(lambda: model.init(
            {"params": jax.random.PRNGKey(0)}, jnp.zeros((1, T, S, S, 3), jnp.uint8),
            train=False))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = getattr(path[-1], "key", "")
        if name == "var":
            return np.ones(leaf.shape, leaf.dtype)
        if name == "mean":
            return np.zeros(leaf.shape, leaf.dtype)
        return (0.2 * rng.standard_normal(leaf.shape)).astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def run_config(dataset: str = "demo", loss: str = "au", prior: str = "dataset"):
    """A run config dict for the tiny model on `dataset` with `loss` and `au.prior`."""
    c = config_lib.base_config()
    c.model = MODEL
    with c.data.unlocked():
        c.data.update(DATA)
    config_lib.apply_variant(c, dataset, 1, loss)
    c.au.prior = prior
    return c.to_dict()


def save_checkpoint(path, variables, **config_kw) -> str:
    """Writes a variables checkpoint whose metadata holds `run_config(**config_kw)`."""
    ckpt_lib.save_variables(path, variables, {"model": MODEL, "class_names": NAMES,
                                              "config": run_config(**config_kw)})
    return str(path)


def frame(k: int, h: int = 40, w: int = 48) -> np.ndarray:
    """A smooth `[h, w, 3] uint8` frame whose brightness and pattern identify frame k."""
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * 5 + 17 * k) % 256, (y * 6 + 11 * k) % 256,
                     np.full_like(x, 20 * k % 256)], -1)
    return base.astype(np.uint8)
