"""The random-number generator of the `dropout` stream (dropout, drop-path).

    dropout_rng = rng.dropout_key(dropout_rng, config.get("rng_impl", "threefry"))
    model.apply(..., rngs={"dropout": dropout_rng})

JAX's default generator, threefry2x32, is a counter-based hash evaluated in
ordinary XLA arithmetic: reproducible on every backend and sharding, but it
compiles into many ops and is slow to compile on CPU. `rbg` and `unsafe_rbg`
draw the bits with XLA's `RngBitGenerator` (Philox on CPU/GPU, the hardware
generator on TPU), which is cheaper per random bit; `rbg` keeps threefry for
`split`/`fold_in`, `unsafe_rbg` uses RngBitGenerator for those too (JAX docs,
"jax.random: Advanced RNG configuration"). Their streams differ from
threefry's and may differ between backends and JAX versions, so checkpointed
runs resume bit-exactly only on the same setup. Only the dropout stream
changes: parameter init and mixup keep threefry.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

RNG_IMPLS = ("threefry", "rbg", "unsafe_rbg")

# Key words of the RngBitGenerator-based implementations (jax._src.prng:
# rbg and unsafe_rbg keys are uint32[4]).
_RBG_KEY_WORDS = 4


def dropout_key(key: jax.Array, impl: str = "threefry") -> jax.Array:
    """A key of implementation `impl` derived from `key`, for the `dropout` rng.

    Args:
        key: a threefry key, raw `uint32[2]` (`jax.random.PRNGKey`) or typed
            (`jax.random.key`), e.g. the trainer's per-step dropout key.
        impl: one of `RNG_IMPLS`. "threefry" returns `key` unchanged.

    Returns:
        `key` itself for "threefry"; otherwise a typed key of `impl` whose
        data are 4 words drawn from `key` (a deterministic function of it).

    Raises:
        ValueError: unknown `impl`.
    """
    if impl not in RNG_IMPLS:
        raise ValueError(f"rng_impl must be one of {RNG_IMPLS}, got {impl!r}")
    if impl == "threefry":
        return key
    words = jax.random.bits(key, (_RBG_KEY_WORDS,), jnp.uint32)
    return jax.random.wrap_key_data(words, impl=impl)
