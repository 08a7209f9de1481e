"""Demo: a tiny Former-DFER with the AU loss on the synthetic demo set.

Writes the demo set (`audfer_jax.data.demo`) and prepares it on first use
(`prepare_data`), then trains for a few minutes on 2 CPU cores: 8 frames
(4 segments x 2) of 32 x 32, batch 16, SGD with the Former-DFER recipe's
momentum and L2 at a constant lr.

    audfer-jax train --config configs/demo.py --workdir runs/demo
    audfer-jax train --config configs/demo.py:num_clips=35,epochs=1 --workdir /tmp/d

`arg`: `loss=` (common.LOSSES), `num_clips=` clips in the demo set (>= 35),
`epochs=`, `data_dir=` where the demo set and its prepared fold go.
"""

from __future__ import annotations

try:
    from configs import common
except ImportError:      # loaded by path (config_flags) from outside the repository root
    import os
    import sys
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from configs import common


def get_config(arg: str | None = None):
    a = common.parse_arg(arg, loss="au", num_clips=350, epochs=3, data_dir="data/demo")
    c = common.base_config()
    c.model = "former_dfer_tiny"
    c.data.data_dir = a.data_dir
    c.data.num_frames = 8
    c.data.image_size = 32
    c.data.sampling = "segments"
    c.data.num_segments = 4
    c.data.frames_per_segment = 2
    c.data.augment = "former_dfer"
    c.data.shuffle_buffer = 256
    c.prepare_data = True
    c.demo.update(dict(num_clips=a.num_clips, seed=0, image_size=48))
    c.batch_size = 16
    c.num_epochs = a.epochs
    c.log_every_steps = 5
    c.optim.update(dict(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=1e-4,
                        schedule="constant"))
    return common.apply_variant(c, "demo", 1, a.loss)
