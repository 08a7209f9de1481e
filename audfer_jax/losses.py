"""The AU-DFER losses: pure, jittable functions of arrays.

Method: F. Liu et al., "Action Unit Enhance Dynamic Facial Expression
Recognition", arXiv 2507.07678, as implemented by the reference code
(github.com/Cross-Innovation-Lab/AU-DFER) and stated in
au_dfer_method.md section 2:

    w_ij = s * W[y_i, j]                    (s = 5)
    l_ij = -w_ij * (p_ij a_ij log sig(z_ij) + (1 - a_ij) log(1 - sig(z_ij)))
    L_AU = sum_ij m_i l_ij / (A sum_i m_i)
    L    = (1 - lambda) L_CE + lambda L_AU   (lambda = 0.25)

With soft labels q (mixup, cutmix) the weight row is the expectation under q:
w_i = s (q_i @ W), p_i = q_i @ P; a one-hot q gives the hard-label rule.

Every mean here is global: a masked sum over a masked count, never a mean of
per-device means. Under `jax.jit` with a sharded batch that is automatic; under
`pmap`/`shard_map` pass `axis_name` and the sums are `psum`-ed across devices.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

Array = jax.Array


def _as_probs(labels_or_probs: Array, num_classes: int) -> Array:
    """`[B] int` labels or `[B, C]` probabilities -> `[B, C] float32`."""
    x = jnp.asarray(labels_or_probs)
    if x.ndim == 1:
        return jax.nn.one_hot(x, num_classes, dtype=jnp.float32)
    if x.ndim != 2 or x.shape[-1] != num_classes:
        raise ValueError(f"labels_or_probs must be [B] int or [B, {num_classes}], "
                         f"got shape {x.shape}")
    return x.astype(jnp.float32)


def _row_mask(mask: Optional[Array], batch: int) -> Array:
    if mask is None:
        return jnp.ones((batch,), jnp.float32)
    mask = jnp.asarray(mask, jnp.float32)
    if mask.shape != (batch,):
        raise ValueError(f"mask must be [B] = [{batch}], got {mask.shape}")
    return mask


def _global_mean(num: Array, den: Array, axis_name) -> Array:
    if axis_name is not None:
        num = jax.lax.psum(num, axis_name)
        den = jax.lax.psum(den, axis_name)
    # A batch with no valid row gives 0 (not NaN), and so do its gradients.
    return num / jnp.where(den > 0, den, 1.0)


def cross_entropy_sums(logits: Array, labels_or_probs: Array,
                       label_smoothing: float = 0.0,
                       mask: Optional[Array] = None) -> tuple[Array, Array]:
    """Masked sum of per-clip cross-entropies, and the masked clip count.

    Args:
      logits: `[B, C]` expression logits (any float dtype; computed in float32).
      labels_or_probs: `[B] int` labels or `[B, C] float` target probabilities.
      label_smoothing: eps of PyTorch's `CrossEntropyLoss(label_smoothing=eps)`:
        targets become `(1 - eps) q + eps / C` (M3DFEL and MAE-DFER use 0.1).
      mask: optional `[B]` weights, 0 for padded clips.

    Returns:
      `(sum_i m_i CE_i, sum_i m_i)`, both `[] float32`.
    """
    logits = jnp.asarray(logits, jnp.float32)
    num_classes = logits.shape[-1]
    q = _as_probs(labels_or_probs, num_classes)
    if label_smoothing:
        q = (1.0 - label_smoothing) * q + label_smoothing / num_classes
    m = _row_mask(mask, logits.shape[0])
    per_clip = -jnp.sum(q * jax.nn.log_softmax(logits, axis=-1), axis=-1)
    return jnp.sum(m * per_clip), jnp.sum(m)


def cross_entropy(logits: Array, labels_or_probs: Array,
                  label_smoothing: float = 0.0, mask: Optional[Array] = None,
                  *, axis_name=None) -> Array:
    """Global masked mean cross-entropy, `[] float32`.

    Equals PyTorch's `CrossEntropyLoss(label_smoothing=eps)` with mean reduction
    (hard labels) or with probability targets (soft labels) when `mask` is
    None. See `cross_entropy_sums` for the arguments; `axis_name` sums across a
    pmap/shard_map axis first.
    """
    return _global_mean(*cross_entropy_sums(logits, labels_or_probs,
                                            label_smoothing, mask), axis_name)


def au_weighted_bce_sums(au_logits: Array, au_targets: Array,
                         labels_or_probs: Array, prior: Array,
                         pos_weight: Optional[Array] = None, *,
                         scale: float = 5.0,
                         mask: Optional[Array] = None) -> tuple[Array, Array]:
    """Numerator and denominator of the prior-weighted AU BCE (method section 2).

    Args:
      au_logits: `[B, A]` AU logits z (A = 18); sigmoid is applied here.
      au_targets: `[B, A]` clip-level AU presence a in {0, 1} (float).
      labels_or_probs: `[B] int` expression labels y, or `[B, C]` soft labels q.
      prior: `[C, A]` AU-expression matrix W (raw values, before `scale`).
      pos_weight: None (1 everywhere), `[A]` (one global row) or `[C, A]`
        (indexed by the expression label like W).
      scale: s, the reference's x5 on W.
      mask: optional `[B]` weights: 0 for clips without AU labels or padding.

    Returns:
      `(sum_ij m_i l_ij, A * sum_i m_i)`, both `[] float32`.
    """
    z = jnp.asarray(au_logits, jnp.float32)
    a = jnp.asarray(au_targets, jnp.float32)
    if z.ndim != 2 or a.shape != z.shape:
        raise ValueError(f"au_logits and au_targets must both be [B, A]; got "
                         f"{z.shape} and {a.shape}")
    prior = jnp.asarray(prior, jnp.float32)
    if prior.ndim != 2 or prior.shape[1] != z.shape[1]:
        raise ValueError(f"prior must be [C, {z.shape[1]}], got {prior.shape}")
    q = _as_probs(labels_or_probs, prior.shape[0])
    w = scale * (q @ prior)                                     # [B, A]
    if pos_weight is None:
        p = 1.0
    else:
        pos_weight = jnp.asarray(pos_weight, jnp.float32)
        p = pos_weight[None] if pos_weight.ndim == 1 else q @ pos_weight
    # log(1 - sigmoid(z)) = log_sigmoid(-z): finite for |z| = 1e4, unlike log(sigmoid).
    l = -w * (p * a * jax.nn.log_sigmoid(z) + (1.0 - a) * jax.nn.log_sigmoid(-z))
    m = _row_mask(mask, z.shape[0])
    return jnp.sum(m[:, None] * l), z.shape[1] * jnp.sum(m)


def au_weighted_bce(au_logits: Array, au_targets: Array, labels_or_probs: Array,
                    prior: Array, pos_weight: Optional[Array] = None, *,
                    scale: float = 5.0, mask: Optional[Array] = None,
                    axis_name=None) -> Array:
    """The AU-DFER AU loss L_AU, `[] float32` (au_dfer_method.md section 2).

    With `mask` None it equals PyTorch's
    `BCEWithLogitsLoss(weight=s * W[y], pos_weight=P[y], reduction='mean')`, the
    reference's loss. See `au_weighted_bce_sums` for the arguments.
    """
    return _global_mean(*au_weighted_bce_sums(
        au_logits, au_targets, labels_or_probs, prior, pos_weight,
        scale=scale, mask=mask), axis_name)


def audfer_loss(logits: Array, au_logits: Array, labels_or_probs: Array,
                au_targets: Array, prior: Array,
                pos_weight: Optional[Array] = None, *, lam: float = 0.25,
                scale: float = 5.0, label_smoothing: float = 0.0,
                mask: Optional[Array] = None, au_mask: Optional[Array] = None,
                axis_name=None) -> tuple[Array, dict[str, Array]]:
    """The AU-DFER training loss `(1 - lam) * CE + lam * L_AU`.

    Args:
      logits: `[B, C]` expression logits.
      au_logits: `[B, A]` AU logits.
      labels_or_probs: `[B] int` labels or `[B, C]` soft labels (mixup/cutmix);
        the same q weights the AU rows (method section 2).
      au_targets: `[B, A]` clip-level AU presence in {0, 1}.
      prior: `[C, A]` AU-expression matrix (`audfer_jax.au.prior`).
      pos_weight: None, `[A]` or `[C, A]` (`audfer_jax.au.pos_weight`).
      lam: lambda; 0 gives the CE baseline (the AU term is then still
        reported but carries no gradient). 0.25 in the reference.
      scale: s = 5 in the reference.
      label_smoothing: of the CE term only.
      mask: optional `[B]`, 0 for evaluation/batch padding (counts nowhere).
      au_mask: optional `[B]`, 0 for clips without AU labels (no AU loss).
      axis_name: pmap/shard_map axis to sum the means over, or None.

    Returns:
      `(loss [] float32, {"loss", "ce", "au_bce"} [] float32 each)`.
    """
    m = _row_mask(mask, jnp.shape(logits)[0])
    m_au = m if au_mask is None else m * _row_mask(au_mask, m.shape[0])
    ce = cross_entropy(logits, labels_or_probs, label_smoothing, m,
                       axis_name=axis_name)
    au = au_weighted_bce(au_logits, au_targets, labels_or_probs, prior,
                         pos_weight, scale=scale, mask=m_au, axis_name=axis_name)
    if isinstance(lam, (int, float)) and lam == 0:
        loss = ce + 0.0 * jax.lax.stop_gradient(au)
    else:
        loss = (1.0 - lam) * ce + lam * au
    return loss, {"loss": loss, "ce": ce, "au_bce": au}
