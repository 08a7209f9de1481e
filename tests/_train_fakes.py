"""Trainer test stand-ins: an in-memory `audfer_jax.data.pipeline` and a micro model.

Same functions and batch layout as the real pipeline (layout.md): train
batches `clips [B, T, H, W, 3] uint8`, `labels [B] int32`, `au_targets [B, 18]
float32`, `au_mask [B]`, `mask [B]`, `index [B] int32`, the global batch split
evenly over processes; eval batches padded with `mask` 0. The order of an epoch
depends only on (seed, epoch), so a resumed run sees the same batches.
Clips carry a class-dependent brightness so that a model can learn something.
"""

from __future__ import annotations

import collections
import sys
import time

import numpy as np

DataInfo = collections.namedtuple("DataInfo", "num_train num_test class_names train_class_counts")
CLASSES = ("happy", "sad", "neutral", "angry", "surprise", "disgust", "fear")


def default_data_config() -> dict:
    return dict(name="demo", num_train=16, num_test=10, num_frames=8, image_size=32,
                views=1, seed=0)


def _clip(cfg, split, i):
    rng = np.random.default_rng([cfg["seed"], 0 if split == "train" else 1, i])
    label = i % len(CLASSES)
    base = 30 * label
    clip = rng.integers(0, 60, size=(cfg["num_frames"], cfg["image_size"], cfg["image_size"], 3))
    au = (rng.random(18) < 0.3).astype(np.float32)
    au_mask = np.float32(i % 5 != 4)        # some clips without AU labels
    return (clip + base).astype(np.uint8), np.int32(label), au, au_mask


def _stack(items, index, mask):
    clips, labels, au, au_mask = zip(*items)
    return {"clips": np.stack(clips), "labels": np.asarray(labels, np.int32),
            "au_targets": np.stack(au).astype(np.float32),
            "au_mask": np.asarray(au_mask, np.float32), "mask": np.asarray(mask, np.float32),
            "index": np.asarray(index, np.int32)}


def dataset_info(cfg) -> DataInfo:
    counts = np.bincount(np.arange(cfg["num_train"]) % len(CLASSES), minlength=len(CLASSES))
    return DataInfo(cfg["num_train"], cfg["num_test"], CLASSES, counts)


def train_au_statistics(cfg):
    items = [_clip(cfg, "train", i) for i in range(cfg["num_train"])]
    return (np.stack([x[2] for x in items]), np.asarray([x[3] for x in items]),
            np.asarray([x[1] for x in items]))


def create_train_dataset(cfg, *, global_batch_size, seed, epoch, start_batch=0,
                         process_index=None, process_count=None):
    pi = process_index or 0
    pc = process_count or 1
    order = np.random.default_rng([seed, epoch]).permutation(cfg["num_train"])
    steps = cfg["num_train"] // global_batch_size
    local = global_batch_size // pc
    for b in range(start_batch, steps):
        ids = order[b * global_batch_size:(b + 1) * global_batch_size][pi * local:(pi + 1) * local]
        yield _stack([_clip(cfg, "train", i) for i in ids], ids, np.ones(len(ids)))


def create_eval_dataset(cfg, *, global_batch_size, process_index=None, process_count=None):
    pi = process_index or 0
    pc = process_count or 1
    n = cfg["num_test"]
    steps = -(-n // global_batch_size)
    local = global_batch_size // pc

    def gen():
        for b in range(steps):
            ids = np.arange(b * global_batch_size, (b + 1) * global_batch_size)
            ids = ids[pi * local:(pi + 1) * local]
            valid = ids < n
            items = [_clip(cfg, "test", int(i) if v else 0) for i, v in zip(ids, valid)]
            batch = _stack(items, np.where(valid, ids, -1), valid)
            if cfg["views"] > 1:
                batch["clips"] = np.stack([batch["clips"]] * cfg["views"], axis=1)
            yield batch

    return gen(), steps


class SlowData:
    """This module as a data stand-in, each training batch `delay` seconds late."""

    def __init__(self, delay: float):
        self.delay = delay

    def __getattr__(self, name):
        return getattr(sys.modules[__name__], name)

    def create_train_dataset(self, *args, **kwargs):
        for batch in create_train_dataset(*args, **kwargs):
            time.sleep(self.delay)
            yield batch


# ---------------------------------------------------------------------------
# A micro model with the backbones' interface; compiles in about a second
# (the tiny backbones take minutes to compile on a loaded 2-core machine).
# ---------------------------------------------------------------------------

import flax.linen as nn  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from audfer_jax.models.base import ModelOutput  # noqa: E402


class MicroModel(nn.Module):
    """`[B, T, H, W, 3] uint8 -> ModelOutput`: frame means, Dense, norm, heads.

    `norm` is 'layer' (no cross-clip statistics: jit and pmap agree exactly)
    or 'batch' (BatchNorm with running statistics in `batch_stats`).
    """
    num_classes: int = 7
    num_aus: int = 18
    num_frames: int = 8
    image_size: int = 32
    norm: str = "layer"
    dropout: float = 0.0

    @nn.compact
    def __call__(self, clips, train: bool = False):
        x = clips.astype(jnp.float32) / 255.0
        x = x.reshape(x.shape[0], x.shape[1], 4, x.shape[2] // 4, 4, x.shape[3] // 4, 3)
        x = x.mean(axis=(3, 5)).reshape(x.shape[0], -1)          # [B, T*4*4*3]
        # No bias before BatchNorm: its exact gradient is 0, and Adam would turn
        # the rounding noise of that 0 into full-size steps.
        x = nn.Dense(32, use_bias=self.norm != "batch")(x)
        if self.norm == "batch":
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        else:
            x = nn.LayerNorm()(x)
        x = nn.relu(x)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return ModelOutput(nn.Dense(self.num_classes)(x), nn.Dense(self.num_aus, name="au_head")(x), x)


def micro_config(**overrides):
    """A trainer config for the micro model and the in-memory data."""
    from audfer_jax import config_lib as common
    c = common.base_config()
    c.model = "micro"
    c.data = dict(default_data_config())
    c.batch_size = 8
    c.num_epochs = 2
    c.log_every_steps = 1
    c.progress_bar = False
    c.async_checkpoints = False
    c.optim.update(dict(optimizer="adamw", lr=1e-2, weight_decay=0.05, schedule="constant"))
    for k, v in overrides.items():
        node = c
        parts = k.split(".")
        for p in parts[:-1]:
            node = node[p]
        node[parts[-1]] = v
    return c
