"""Loss-only reference cases: each recipe's criterion on seeded logits (issue 30).

The training cases compare losses computed from the model's float32 logits;
here each recipe's own classification criterion (Former-DFER
`nn.CrossEntropyLoss()`, M3DFEL `nn.CrossEntropyLoss(label_smoothing=0.1)`,
MAE-DFER without Mixup timm's `LabelSmoothingCrossEntropy(smoothing=0.1)`),
alone (`ce`) and with the AU-DFER term (`au`: `(1 - 0.25) CE + 0.25 L_AU`,
`generate.au_loss`), is applied to logits, AU logits, labels and AU targets
that a seeded NumPy recipe makes (`loss_inputs`, repeated by
tests/test_recipe_parity.py). Records the loss, its CE and AU parts and the
L2 norm of the gradient with respect to both logit tensors. Numbers only.
"""

from __future__ import annotations

import math

import numpy as np

LOSS_SEED = 31
LOSS_BATCH = 8


def loss_inputs(seed: int, recipe_index: int, batch: int = LOSS_BATCH):
    """`(logits [B, 7], au_logits [B, 18] float32, labels [B] int64, au [B, 18] float32)`.

    Logits of about the size of a trained model's (standard deviation 2), so
    that smoothing and the class weights move the loss well above rounding.
    """
    rng = np.random.default_rng([seed, recipe_index])
    logits = np.float32(2.0) * rng.standard_normal((batch, 7), dtype=np.float32)
    au_logits = np.float32(2.0) * rng.standard_normal((batch, 18), dtype=np.float32)
    labels = rng.integers(0, 7, (batch,)).astype(np.int64)
    au = (rng.random((batch, 18)) < 0.3).astype(np.float32)
    return logits, au_logits, labels, au


def criterion(torch, recipe: str):
    """The recipe's classification loss as its training script builds it (no Mixup)."""
    if recipe == "former_dfer":          # main_DFEW.py
        return torch.nn.CrossEntropyLoss()
    if recipe == "m3dfel":               # solver.py, options.py --label_smoothing 0.1
        return torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    # run_class_finetuning.py: no Mixup and --smoothing 0.1 ->
    # LabelSmoothingCrossEntropy (timm 0.4.12).
    from timm.loss import LabelSmoothingCrossEntropy  # pylint: disable=import-outside-toplevel
    return LabelSmoothingCrossEntropy(smoothing=0.1)


def run(torch, au_loss, prior, pos, au_lambda: float) -> dict:
    """`{recipe: {objective: {loss, ce, au_bce, grad_norm}}}` and the recipe order."""
    out = {"seed": LOSS_SEED, "batch": LOSS_BATCH, "recipes": ["former_dfer", "m3dfel",
                                                               "mae_dfer"]}
    for i, recipe in enumerate(out["recipes"]):
        logits, au_logits, labels, au = loss_inputs(LOSS_SEED, i)
        out[recipe] = {}
        for objective in ("ce", "au"):
            z = torch.from_numpy(logits).requires_grad_()
            a = torch.from_numpy(au_logits).requires_grad_()
            y = torch.from_numpy(labels)
            ce = criterion(torch, recipe)(z, y)
            au_term = au_loss(torch, a, torch.from_numpy(au), y, prior, pos)
            loss = ce if objective == "ce" else (1 - au_lambda) * ce + au_lambda * au_term
            loss.backward()
            sq = sum(float(torch.sum(t.grad.double() ** 2)) for t in (z, a)
                     if t.grad is not None)
            out[recipe][objective] = {"loss": loss.item(), "ce": ce.item(),
                                      "au_bce": au_term.item(), "grad_norm": math.sqrt(sq)}
    return out
