"""A video backbone defined outside audfer_jax, for tests/test_plugin.py.

Used through the import path `plugin_backbone:make_backbone` (tests/ on
sys.path): a tiny 3-D CNN mapping `[B, T, H, W, 3] float32` clips to `[B, D]`.
It has no `num_frames`/`image_size` attributes, so the trainer takes the
clip size from the data config.
"""

import flax.linen as nn
import jax.numpy as jnp


class Tiny3DCNN(nn.Module):
    width: int = 8

    @nn.compact
    def __call__(self, clips, train: bool = False):
        x = nn.relu(nn.Conv(self.width, (3, 3, 3), strides=(1, 2, 2))(clips))
        x = nn.relu(nn.Conv(2 * self.width, (3, 3, 3), strides=(2, 2, 2))(x))
        return jnp.mean(x, axis=(1, 2, 3))                 # [B, 2 * width]


def make_backbone(width: int = 8):
    return Tiny3DCNN(width=width)


class DenseBackbone(nn.Module):
    """Clips -> per-channel means and a Dense layer: no convolution, so an
    XLA:TPU compile of its train step takes about a second (tests of
    `audfer-jax compile` that need many compiles)."""
    width: int = 16

    @nn.compact
    def __call__(self, clips, train: bool = False):
        x = jnp.concatenate([jnp.mean(clips, axis=(2, 3)), jnp.max(clips, axis=(2, 3))], -1)
        x = nn.relu(nn.Dense(self.width)(x))                # [B, T, width]
        return jnp.mean(x, axis=1)


def make_dense_backbone(width: int = 16):
    return DenseBackbone(width=width)
