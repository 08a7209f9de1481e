"""What every backbone returns."""

from __future__ import annotations

from typing import NamedTuple

import jax


class ModelOutput(NamedTuple):
    """Outputs of a DFER backbone with its AU head.

    Attributes:
        logits: `[B, C] float32` expression logits.
        au_logits: `[B, 18] float32` AU logits (sigmoid not applied). The AU head
            is trained only; inference ignores it.
        features: `[B, D]` the pooled clip feature both heads read.
    """
    logits: jax.Array
    au_logits: jax.Array
    features: jax.Array
