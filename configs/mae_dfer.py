"""MAE-DFER + AU-DFER loss (backbones.md section 3 recipe, DFEW fine-tuning script).

AdamW betas (0.9, 0.999), eps 1e-8, weight decay 0.05 without 1-D tensors,
biases and `lg_region_tokens`; lr 1e-3 x batch / 256 (3.75e-4 at batch 96),
min 1e-6 x batch / 256; 5 warmup epochs linear from 0, then cosine per
iteration; layer-wise lr decay 0.75; 100 epochs; batch 96; mixup 0.8 / cutmix
1.0 (switch 0.5, smoothing 0.1) with soft-target cross-entropy; 16 frames every
4th (DFEW, MAFW) or every frame (FERV39k), 160 x 160; test on 2 temporal x 2
spatial views. Reported figure: the last epoch. Initialise from the converted
VoxCeleb2 pre-training (`audfer-jax convert`, then `--config.init_from`).

    audfer-jax train --config configs/mae_dfer.py:dataset=dfew,fold=1,loss=au --workdir DIR
"""

from __future__ import annotations

from audfer_jax import config_lib as common


def get_config(arg: str | None = None):
    """`arg`: `dataset=` dfew|ferv39k|mafw, `fold=` 1..5, `loss=` (common.LOSSES)."""
    a = common.parse_arg(arg, dataset="dfew", fold=1, loss="au")
    c = common.base_config()
    c.model = "mae_dfer"
    c.data.num_frames = 16
    c.data.image_size = 160
    # Frames stored square at 192 px (`audfer-jax prepare --prepare_size 192`): the
    # crop source of the random crop, so the host only decodes and the train step
    # augments (data.augment_device). The reference crops from the releases'
    # 224 px frames: prepare_size=None with augment_device=False does that, on the host.
    c.data.prepare_size = 192
    c.data.sampling = "fixed_rate"
    c.data.sampling_rate = 1 if a.dataset == "ferv39k" else 4
    c.data.augment = "mae_dfer"
    c.data.eval_temporal_views = 2
    c.data.eval_spatial_views = 2
    c.batch_size = 96
    c.num_epochs = 100
    c.optim.update(dict(optimizer="adamw", lr=1e-3, min_lr=1e-6, lr_batch_base=256,
                        b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.05,
                        decay_rule="mae_dfer", layer_decay=0.75, grad_clip_norm=0.0,
                        schedule="warmup_cosine", warmup_epochs=5.0, warmup_lr_init=0.0))
    # With Mixup (the recipe) the smoothing is in the mixed targets and the CE
    # adds none (steps._mix); without it (mixup.enabled=False) the original
    # trains with LabelSmoothingCrossEntropy(--smoothing 0.1), this value.
    c.label_smoothing = 0.1
    c.mixup.update(dict(enabled=True, mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5,
                        prob=1.0, label_smoothing=0.1))
    return common.apply_variant(c, a.dataset, a.fold, a.loss)
