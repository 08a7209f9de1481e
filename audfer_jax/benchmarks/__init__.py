"""The library parts of `audfer-jax bench input|model|train` (commands in `audfer_jax.cli`).

* `input`: clips/s of the training input pipeline, and the jitted device-side
  augmentation's time per batch (`time_device_augment`).
* `model`: forward and forward+backward clips/s and peak memory of a backbone.
* `train`: throughput of the trainer's real train step on synthetic batches,
  its FLOPs and MFU, and the share of step time spent in the AU loss.
"""
