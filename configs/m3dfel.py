"""M3DFEL + AU-DFER loss (backbones.md section 2 recipe, `options.py`, `solver.py`).

AdamW lr 5e-4, betas (0.9, 0.999), eps 1e-8, weight decay 0.05 on every
parameter; timm cosine per iteration over 300 epochs, 20 warmup epochs from 0,
lr_min 5e-6, warmup_prefix False; batch 256; cross-entropy with label
smoothing 0.1; seed 42; 16 uniformly spaced frames with jitter (also at test),
112 x 112, crop, flip and colour jitter. Backbone from Kinetics-400 R3D-18
weights: convert them (`audfer-jax convert`) and set `--config.init_from`.

    audfer-jax train --config configs/m3dfel.py:dataset=dfew,fold=1,loss=au --workdir DIR
"""

from __future__ import annotations

from audfer_jax import config_lib as common


def get_config(arg: str | None = None):
    """`arg`: `dataset=` dfew|ferv39k|mafw, `fold=` 1..5, `loss=` (common.LOSSES)."""
    a = common.parse_arg(arg, dataset="dfew", fold=1, loss="au")
    c = common.base_config()
    c.model = "m3dfel"
    c.seed = 42
    c.data.num_frames = 16
    c.data.image_size = 112
    # Frames stored square at 128 px (`audfer-jax prepare --prepare_size 128`): the
    # crop source of the random crop, so the host only decodes and the train step
    # augments (data.augment_device). The reference crops from the releases'
    # 224 px frames: prepare_size=None with augment_device=False does that, on the host.
    c.data.prepare_size = 128
    c.data.sampling = "uniform"
    c.data.jitter = "reference"
    c.data.augment = "m3dfel"
    c.batch_size = 256
    c.num_epochs = 300
    c.optim.update(dict(optimizer="adamw", lr=5e-4, b1=0.9, b2=0.999, eps=1e-8,
                        weight_decay=0.05, decay_rule="all", schedule="timm_cosine",
                        warmup_epochs=20.0, warmup_lr_init=0.0, min_lr=5e-6))
    c.label_smoothing = 0.1
    return common.apply_variant(c, a.dataset, a.fold, a.loss)
