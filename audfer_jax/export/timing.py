"""Load time, first-call time and clips/s of `predict` through a checkpoint or an export.

    python -c "from audfer_jax.export import timing; timing.report('KIND', 'PATH')"
    python -c "from audfer_jax.export import timing; timing.random_checkpoint('CONFIG', 'OUT')"

KIND is `checkpoint` (`inference.predictor.load_predictor`), `jax` or
`savedmodel` (`inference.exported.load_exported`, PATH the export
directory). Each measurement should run in a fresh process, as `predict`
does, so that the load time counts the imports its format needs (Orbax and
Flax, JAX, TensorFlow). The call is what `predict` runs per model call:
`predictor.apply` on `batch` clips and the view-mean probabilities on the
host (`predict.view_mean_probabilities`), on random uint8 clips of the
model's input size.

`random_checkpoint` writes a variables checkpoint of a config's model with
random variables (speed and file sizes do not depend on the values), so that
the figures of docs/export.md can be measured without a trained run.
"""

from __future__ import annotations

import json
import time

import numpy as np

KINDS = ("checkpoint", "jax", "savedmodel")


def measure(kind: str, path: str, batch: int = 8, calls: int = 5) -> dict:
    """Times loading `path` as `kind`, its first call and `calls` more calls.

    Args:
        kind: one of `KINDS`.
        path: checkpoint (kind `checkpoint`) or export directory.
        batch: clips per call (`predict --window_batch`'s default is 8).
        calls: calls after the first, timed together.

    Returns:
        `{"kind", "load_s", "first_call_s" (compilation included),
        "call_s" (mean of the later calls), "clips_per_s" (batch / call_s),
        "batch", "input": [T, S, S]}`.

    Raises:
        ValueError: unknown kind.
        PredictError: the path does not load.
    """
    from audfer_jax.inference import predict  # pylint: disable=g-import-not-at-top
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}: expected one of {KINDS}")
    t0 = time.perf_counter()
    if kind == "checkpoint":
        from audfer_jax.inference import predictor as predictor_lib  # pylint: disable=g-import-not-at-top
        p = predictor_lib.load_predictor(path)
    else:
        from audfer_jax.inference import exported  # pylint: disable=g-import-not-at-top
        p = exported.load_exported(path, kind)
    load = time.perf_counter() - t0
    shape = (p.spec.num_frames, p.image_size, p.image_size)
    clips = np.random.default_rng(0).integers(0, 256, (batch, *shape, 3), dtype=np.uint8)

    def call():
        return predict.view_mean_probabilities(p.apply(p.variables, clips), 1)

    t1 = time.perf_counter()
    call()
    first = time.perf_counter() - t1
    t2 = time.perf_counter()
    for _ in range(calls):
        call()
    per = (time.perf_counter() - t2) / max(1, calls)
    return {"kind": kind, "load_s": load, "first_call_s": first, "call_s": per,
            "clips_per_s": batch / per, "batch": batch, "input": list(shape)}


def report(kind: str, path: str, batch: int = 8, calls: int = 5) -> dict:
    """`measure` and print its result as one JSON line; returns it."""
    result = measure(kind, path, batch, calls)
    print(json.dumps(result))
    return result


def random_checkpoint(config_spec: str, out: str, seed: int = 0) -> str:
    """A variables checkpoint of `config_spec`'s model with random variables.

    Weights are N(0, 0.02^2) (the scale of ViT/timm initialisations), BatchNorm
    statistics mean 0 and variance 1; the metadata holds the whole config, so
    `predict` and `export` read it as they read a run.

    Args:
        config_spec: a config file with its argument, e.g.
            `configs/mae_dfer.py:dataset=dfew`.
        out: the checkpoint directory to write (must not exist).
        seed: NumPy seed.

    Returns:
        The path written.
    """
    import jax  # pylint: disable=g-import-not-at-top
    from audfer_jax import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
    from audfer_jax import classes, config_lib, model_state  # pylint: disable=g-import-not-at-top
    from audfer_jax.data import config as data_config_lib  # pylint: disable=g-import-not-at-top
    config = config_lib.load_config_file(config_spec)
    data = config.get("data", {}) or {}
    names = list(classes.class_names(data.get("dataset", data.get("name"))))
    built = model_state.build(config, len(names), steps_per_epoch=1,
                              data_config=data_config_lib.DataConfig.from_config(
                                      data, strict=False))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = getattr(path[-1], "key", "")
        if name in ("mean", "var"):
            return (np.zeros if name == "mean" else np.ones)(leaf.shape, leaf.dtype)
        return (0.02 * rng.standard_normal(leaf.shape)).astype(leaf.dtype)

    variables = jax.tree_util.tree_map_with_path(fill, built.variables)
    return ckpt_lib.save_variables(out, variables, {"model": config.model, "class_names": names,
                                                    "config": config.to_dict()})
