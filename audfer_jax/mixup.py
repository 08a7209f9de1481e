"""Mixup / CutMix for video batches: pure, jittable.

MAE-DFER fine-tunes with timm's `Mixup` in 'batch' mode (backbones.md section
3 recipe; `run_class_finetuning.py`): with probability `prob` (1.0) a batch is
mixed, by CutMix with probability `switch_prob` (0.5) and by Mixup otherwise.
Each clip i is mixed with clip B-1-i (the batch reversed, timm's `x.flip(0)`):

* Mixup: lam ~ Beta(0.8, 0.8); x = lam x + (1 - lam) x_rev.
* CutMix: lam ~ Beta(1, 1); a box of side ratio sqrt(1 - lam) centred at a
  uniform pixel (clipped at the border, the same box in every frame) is pasted
  from x_rev; lam is then corrected to the uncovered area fraction (timm
  `correct_lam=True`).
* Targets: one-hot with label smoothing 0.1 (off = 0.1 / C, on = 1 - 0.1 + off),
  `lam y + (1 - lam) y_rev`.

AU-DFER addition (au_dfer_method.md section 2, soft labels): the AU targets are
mixed with the same lam (soft BCE targets), and a mixed clip has AU labels only
when both of its sources have them (`au_mask` multiplied), likewise `mask`.

Under `jit` with a sharded batch the reversal pairs clips across devices; under
`pmap` each device mixes its own local batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def smooth_one_hot(labels: Array, num_classes: int, smoothing: float) -> Array:
    """`[B] int` -> `[B, C] float32`, timm's `one_hot(..., on, off)` smoothing."""
    off = smoothing / num_classes
    on = 1.0 - smoothing + off
    # Select rather than scale-and-shift: the entries are then exactly the
    # float32 values of `on` and `off`, as timm's `torch.full(...).scatter_`.
    hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) > 0
    return jnp.where(hot, jnp.float32(on), jnp.float32(off))


def cutmix_box_mask(rng: Array, height: int, width: int, lam: Array) -> tuple[Array, Array]:
    """The CutMix box as a `[H, W] bool` mask (True inside), and the corrected lam.

    The centre is uniform over the pixels (timm `rand_bbox` with no margin:
    cy ~ U{0..H-1}, cx ~ U{0..W-1}); see `box_from_centre` for the box.
    """
    ky, kx = jax.random.split(rng)
    cy = jax.random.randint(ky, (), 0, height)
    cx = jax.random.randint(kx, (), 0, width)
    return box_from_centre(height, width, lam, cy, cx)


def box_from_centre(height: int, width: int, lam, cy, cx) -> tuple[Array, Array]:
    """timm 0.4.12 `rand_bbox` / `cutmix_bbox_and_lam` for a given centre.

    cut_h = int(H sqrt(1 - lam)), rows `clip(cy - cut_h // 2, 0, H) ..
    clip(cy + cut_h // 2, 0, H)` (end excluded), likewise columns; the
    corrected lam (timm `correct_lam=True`) is 1 - box area / (H W).

    Args:
        height, width: H, W of the frames.
        lam: `[]` float, the drawn lam.
        cy, cx: `[]` int, the box centre.

    Returns:
        `(box [H, W] bool, lam [] float32)`.
    """
    ratio = jnp.sqrt(1.0 - jnp.asarray(lam, jnp.float32))
    cut_h = jnp.floor(height * ratio).astype(jnp.int32)
    cut_w = jnp.floor(width * ratio).astype(jnp.int32)
    y0, y1 = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height)
    x0, x1 = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width)
    rows = jnp.arange(height)[:, None]
    cols = jnp.arange(width)[None, :]
    box = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
    area = (y1 - y0) * (x1 - x0)
    return box, 1.0 - area.astype(jnp.float32) / (height * width)


def mix_with(batch: dict, num_classes: int, lam, box: Array | None = None, *,
             label_smoothing: float = 0.1) -> dict:
    """Mixes one batch with a given lam (and CutMix box): timm `Mixup._mix_batch`
    and `mixup_target` for fixed draws.

    Each clip i is mixed with clip B-1-i: inside `box` (`[H, W] bool`, the
    same in every frame) the pixels of the partner replace its own; without a
    box, `lam x + (1 - lam) x_rev`. Targets: `lam y + (1 - lam) y_rev` with
    smoothed one-hot y. For CutMix pass the corrected lam (`box_from_centre`).

    Args:
        batch: as `mixup_cutmix`.
        num_classes: C.
        lam: `[]` float mixing weight of the clip's own content.
        box: `[H, W] bool` CutMix box, or None for Mixup.
        label_smoothing: of the one-hot targets (MAE-DFER 0.1).

    Returns:
        As `mixup_cutmix` (without `mix_lam`).
    """
    clips = batch["clips"]
    if clips.dtype == jnp.uint8:
        clips = clips.astype(jnp.float32) / 255.0
    clips = clips.astype(jnp.float32)
    lam = jnp.asarray(lam, jnp.float32)
    rev = clips[::-1]
    if box is None:
        mixed = lam * clips + (1.0 - lam) * rev
    else:
        mixed = jnp.where(box[:, :, None], rev, clips)
    y = smooth_one_hot(batch["labels"], num_classes, label_smoothing)
    out = dict(batch)
    out["clips"] = mixed
    out["label_probs"] = y * lam + y[::-1] * (1.0 - lam)
    a = batch["au_targets"].astype(jnp.float32)
    out["au_targets"] = lam * a + (1.0 - lam) * a[::-1]
    for key in ("au_mask", "mask"):
        if key in batch:
            m = batch[key].astype(jnp.float32)
            out[key] = jnp.where(lam < 1.0, m * m[::-1], m)
    return out


def mixup_cutmix(rng: Array, batch: dict, num_classes: int, *, mixup_alpha: float = 0.8,
                 cutmix_alpha: float = 1.0, switch_prob: float = 0.5, prob: float = 1.0,
                 label_smoothing: float = 0.1) -> dict:
    """Mixes one batch (timm `Mixup(mode='batch')` plus AU targets).

    Args:
        rng: PRNG key.
        batch: dict with `clips [B, T, H, W, 3]` (uint8 or float in [0, 1]),
            `labels [B] int32`, `au_targets [B, A] float32`, optional
            `au_mask [B]`, `mask [B]`.
        num_classes: C.
        mixup_alpha, cutmix_alpha: Beta parameters (MAE-DFER 0.8 and 1.0); 0
            disables that kind.
        switch_prob: probability of CutMix when both are enabled.
        prob: probability that the batch is mixed at all.
        label_smoothing: smoothing of the one-hot targets (MAE-DFER 0.1).

    Returns:
        A new dict: `clips [B, T, H, W, 3] float32` in [0, 1], `label_probs
        [B, C] float32`, mixed `au_targets`, and `au_mask`, `mask` multiplied
        with their reversed copies; `labels` kept (the dominant source) for
        training accuracy; other keys unchanged.

    Raises:
        ValueError: both alphas are 0.
    """
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        raise ValueError("mixup_cutmix needs mixup_alpha > 0 or cutmix_alpha > 0")
    k_apply, k_switch, k_mix, k_cut, k_box = jax.random.split(rng, 5)
    height, width = batch["clips"].shape[-3], batch["clips"].shape[-2]
    if mixup_alpha > 0 and cutmix_alpha > 0:
        use_cutmix = jax.random.uniform(k_switch) < switch_prob
    else:
        use_cutmix = jnp.asarray(cutmix_alpha > 0)
    lam_mix = (jax.random.beta(k_mix, mixup_alpha, mixup_alpha) if mixup_alpha > 0
               else jnp.ones(()))
    lam_cut = (jax.random.beta(k_cut, cutmix_alpha, cutmix_alpha) if cutmix_alpha > 0
               else jnp.ones(()))
    box, lam_cut = cutmix_box_mask(k_box, height, width, lam_cut)
    apply = jax.random.uniform(k_apply) < prob
    lam = jnp.where(apply, jnp.where(use_cutmix, lam_cut, lam_mix), 1.0).astype(jnp.float32)
    # Both forms, then a select: the choice is a traced value under jit.
    # (An unmixed batch keeps lam 1: clips, targets and masks come out unchanged.)
    blend = mix_with(batch, num_classes, lam, None, label_smoothing=label_smoothing)
    cut = mix_with(batch, num_classes, lam, box & apply, label_smoothing=label_smoothing)
    out = dict(blend)
    out["clips"] = jnp.where(use_cutmix, cut["clips"], blend["clips"])
    out["mix_lam"] = lam
    return out
