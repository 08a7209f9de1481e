"""Former-DFER + AU-DFER loss (backbones.md section 1 recipe, `main_DFEW.py`).

SGD lr 0.01, momentum 0.9, coupled L2 1e-4; StepLR 40 epochs, gamma 0.1; 100
epochs; batch 32; plain cross-entropy; 16 frames = 8 segments x 2, 112 x 112,
random-sized crop and flip. Trained from scratch.

    audfer-jax train --config configs/former_dfer.py:dataset=dfew,fold=1,loss=au --workdir DIR
"""

from __future__ import annotations

from audfer_jax import config_lib as common


def get_config(arg: str | None = None):
    """`arg`: `dataset=` dfew|ferv39k|mafw, `fold=` 1..5, `loss=` (common.LOSSES)."""
    a = common.parse_arg(arg, dataset="dfew", fold=1, loss="au")
    c = common.base_config()
    c.model = "former_dfer"
    c.data.num_frames = 16
    c.data.image_size = 112
    # Frames stored square at 128 px (`audfer-jax prepare --prepare_size 128`): the
    # crop source of the random crop, so the host only decodes and the train step
    # augments (data.augment_device). The reference crops from the releases'
    # 224 px frames: prepare_size=None with augment_device=False does that, on the host.
    c.data.prepare_size = 128
    c.data.sampling = "segments"
    c.data.num_segments = 8
    c.data.frames_per_segment = 2
    c.data.augment = "former_dfer"
    c.batch_size = 32
    c.num_epochs = 100
    c.optim.update(dict(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=1e-4,
                        decay_rule="all", schedule="step", step_epochs=40, gamma=0.1))
    c.label_smoothing = 0.0
    return common.apply_variant(c, a.dataset, a.fold, a.loss)
