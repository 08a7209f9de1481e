"""`audfer-jax train`: train and evaluate one config.

    audfer-jax train --config configs/former_dfer.py:dataset=dfew,fold=1,loss=au \
        --workdir runs/former_dfer_dfew_f1 --config.batch_size=64
    python -m audfer_jax.main --config configs/demo.py --workdir runs/demo

`--config` is a big_vision-style config file with an optional `:arg` variant
(`get_config(arg)`), `--config.x=y` overrides any field
(`ml_collections.config_flags`). A workdir that already holds checkpoints is
resumed. Prints the final metrics as JSON.
"""

from __future__ import annotations

import json
import os
import sys

from absl import flags
from absl import logging
from ml_collections import config_flags

_FLAGS = flags.FlagValues()
config_flags.DEFINE_config_file("config", None, "experiment config file[:variant]",
                                flag_values=_FLAGS, lock_config=True)
flags.DEFINE_string("workdir", None, "run directory (checkpoints, logs, metrics); "
                    "local or gs://...",
                    flag_values=_FLAGS)
flags.DEFINE_bool("evaluate_only", False, "evaluate the workdir's newest checkpoint "
                  "instead of training", flag_values=_FLAGS)
flags.DEFINE_bool("best", False, "with --evaluate_only: the best checkpoint",
                  flag_values=_FLAGS)


def main(argv: list[str] | None = None) -> int:
    """Parses `argv` (without the program name), trains, prints the metrics.

    Returns:
        0 on success, 2 on a usage error.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        _FLAGS(["audfer-jax train"] + argv)
    except flags.Error as e:
        print(f"audfer-jax train: {e}\n\nusage: audfer-jax train --config FILE[:ARG] "
              "--workdir DIR [--config.FIELD=VALUE ...]", file=sys.stderr)
        return 2
    if _FLAGS.config is None or not _FLAGS.workdir:
        print("audfer-jax train: --config and --workdir are required", file=sys.stderr)
        return 2
    logging.set_verbosity(logging.INFO)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from audfer_jax import train
    config = _FLAGS.config
    try:
        if _FLAGS.evaluate_only:
            result = train.evaluate_checkpoint(config, _FLAGS.workdir, best=_FLAGS.best)
        else:
            result = train.train_and_evaluate(config, _FLAGS.workdir)
    except (FileNotFoundError, ValueError, FloatingPointError) as e:
        print(f"audfer-jax train: error: {e}", file=sys.stderr)
        return 1
    import jax
    if jax.process_index() == 0:
        print(_summary(result, _FLAGS.workdir))
    return 0


def _summary(result: dict, workdir: str) -> str:
    """A few lines for the console; every figure is in WORKDIR/metrics.json."""
    lines = []
    for which in ("last", "best"):
        r = result.get(which)
        if not isinstance(r, dict) or "uar" not in r:
            continue
        what = f"{which} epoch"
        if which == "best" and r.get("criterion"):
            what += f" (by {r['criterion']})"
        if "epoch" in r:
            what += f", epoch {r['epoch']}"
        lines.append(f"{what}: UAR {r['uar']:.2f} %  WAR {r['war']:.2f} %")
        if which == "last" and r.get("per_class_recall"):
            lines.append("  per-class recall: " + ", ".join(
                f"{k} {v:.1f}" for k, v in r["per_class_recall"].items()))
    if not lines:  # evaluate_only and other shapes of result
        lines.append(json.dumps(result, indent=1))
    from audfer_jax import paths
    w = paths.resolve(workdir)
    lines += [f"checkpoints: {paths.join(w, 'checkpoints')} (best: {paths.join(w, 'best')})",
              f"metrics:     {paths.join(w, 'metrics.json')}, {paths.join(w, 'metrics.jsonl')}",
              f"TensorBoard: tensorboard --logdir {w}"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
