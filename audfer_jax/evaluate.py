"""Scoring a trained run on its test split: the library of `audfer-jax evaluate`.

    audfer-jax evaluate --workdir runs/x [--checkpoint best|last|STEP|PATH]
        [--config configs/x.py:ARGS] [--config.key=value ...] [--json out.json]

The command (flags, printing) is `audfer_jax/cli/evaluate.py`; the run
directory lookup (`checkpoint.resolve_checkpoint`, `checkpoint.load_run_config`)
is `checkpoint.py`. The run's own config (`WORKDIR/config.json`, written by
`train.py`) is used unless `--config FILE.py:ARGS` replaces it;
`--config.key=value` overrides apply on top (e.g. `--config.data.data_dir=/elsewhere`,
`--config.eval_batch_size=8`). The checkpoint is one of:

* `best` (default): the single state in `WORKDIR/best/<step>`, the evaluated
  epoch with the highest criterion (`config.best_metric`, default WAR+UAR,
  chosen on the test split: optimistic, datasets.md section 8);
* `last`: the newest state in `WORKDIR/checkpoints/<step>` (the last epoch of
  a finished run);
* `STEP`: that step of `checkpoints/` (or of `best/`);
* a path to a step directory.

Prints UAR, WAR (in %), per-class recall, per-AU F1 of the AU head, the
confusion matrix (rows = true class, columns = predicted), always labelled
with the checkpoint choice and step, and writes the figures as JSON into the
workdir (`evaluation_<choice>_step<step>.json`) or to `--json`. Evaluation
itself is `train.evaluate_checkpoint` (the trainer's own eval step: padded,
masked batches, multi-view mean of softmax), so figures equal the trainer's.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from audfer_jax import config_lib
from audfer_jax import paths


def _best_criterion(workdir: str, config) -> str:
    """The criterion the run's best state was picked by (`metrics.json`, else the config)."""
    path = paths.join(workdir, "metrics.json")
    if paths.isfile(path):
        try:
            best = json.loads(paths.read_text(path)).get("best") or {}
        except json.JSONDecodeError:
            best = {}
        if best.get("criterion"):
            return str(best["criterion"])
    return str(config.get("best_metric", "war+uar"))


def evaluate(workdir: str, checkpoint: str = "best", *, config=None,
             overrides: Sequence[tuple[str, str]] = (), data=None,
             evaluate_fn: Callable | None = None) -> dict:
    """Evaluates one checkpoint of a run; returns the labelled figures.

    Args:
        workdir: run directory.
        checkpoint: `best`, `last`, a step, or a step directory (see
            `checkpoint.resolve_checkpoint`).
        config: the run's config; None reads `workdir/config.json`.
        overrides: `("a.b", "value")` pairs applied to the config.
        data: input-pipeline module (default `audfer_jax.data.pipeline`).
        evaluate_fn: `(config, step_dir, data=...) -> summary` (default
            `train.evaluate_checkpoint`).

    Returns:
        `metrics.summarize` figures (`uar`, `war`, `per_class_recall`,
        `confusion_matrix`, `class_names`, `num_clips`, `au_f1`,
        `au_f1_mean`, in %) plus `loss`, `step`, `checkpoint` (path),
        `epoch_choice` (`best`, `last`, `step`, `path`), `criterion` (for
        best) and `dataset`, `fold`, `model`.

    Raises:
        FileNotFoundError: missing workdir, config or checkpoint.
    """
    # Imported here: Orbax and JAX load in seconds, and `evaluate --help` or a
    # bad flag needs neither.
    from audfer_jax import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
    workdir = paths.resolve(workdir)
    if not paths.isdir(workdir) and not paths.isdir(checkpoint):
        raise FileNotFoundError(f"{workdir}: no such run directory")
    path, choice, step = ckpt_lib.resolve_checkpoint(workdir, checkpoint)
    if config is None:
        run_dir = workdir
        if choice == "path" and not paths.isfile(ckpt_lib.run_config_path(workdir)):
            # A step directory `RUN/checkpoints/<step>`: the config is in RUN.
            run_dir = ckpt_lib.run_dir_of_step(path)
        config = ckpt_lib.load_run_config(run_dir)
    config = config_lib.apply_overrides(config, overrides)
    if evaluate_fn is None:
        from audfer_jax import train
        evaluate_fn = train.evaluate_checkpoint
    summary = dict(evaluate_fn(config, path, data=data))
    summary["checkpoint"] = path
    summary["epoch_choice"] = choice
    if summary.get("step") is None:
        summary["step"] = step
    if choice == "best":
        summary["criterion"] = _best_criterion(workdir, config)
    data_cfg = config.get("data", {}) or {}
    summary.setdefault("dataset", data_cfg.get("dataset", data_cfg.get("name")))
    summary.setdefault("fold", data_cfg.get("fold"))
    summary.setdefault("model", config.get("model"))
    return summary


def format_report(summary: Mapping[str, Any]) -> str:
    """The figures of `evaluate` as text (UAR/WAR, recalls, AU F1, confusion matrix)."""
    choice = summary.get("epoch_choice", "?")
    label = {"best": f"best epoch (criterion {summary.get('criterion', '?')}, picked on "
                     "the test split)",
             "last": "last checkpoint (last epoch of a finished run)",
             "step": "checkpoint at a given step",
             "path": "checkpoint given by path"}.get(choice, choice)
    lines = [f"checkpoint: {summary.get('checkpoint')}",
             f"  {label}; step {summary.get('step')}",
             f"model {summary.get('model')}, dataset {summary.get('dataset')}, fold "
             f"{summary.get('fold')}, {summary.get('num_clips')} clips",
             f"[{choice}] UAR {summary['uar']:.2f} %   WAR {summary['war']:.2f} %"
             + (f"   test loss {summary['loss']:.4f}" if "loss" in summary else ""),
             "", "per-class recall (%):"]
    names = list(summary["class_names"])
    width = max(len(n) for n in names)
    for name in names:
        lines.append(f"  {name:<{width}}  {summary['per_class_recall'][name]:6.2f}")
    if summary.get("au_f1"):
        lines += ["", f"AU head F1 (%), mean {summary['au_f1_mean']:.2f} (clips with AU "
                      "labels only; the AU head is a training aid):"]
        items = list(summary["au_f1"].items())
        for i in range(0, len(items), 6):
            lines.append("  " + "  ".join(f"{k} {v:5.1f}" for k, v in items[i:i + 6]))
    cm = np.asarray(summary["confusion_matrix"], np.int64)
    cell = max(width, max(len(str(int(cm.max()))) if cm.size else 1, 5))
    short = [n[:cell] for n in names]
    lines += ["", "confusion matrix (rows = true class, columns = predicted):",
              " " * (width + 3) + " ".join(f"{n:>{cell}}" for n in short)]
    for name, row in zip(names, cm):
        lines.append(f"  {name:<{width}} " + " ".join(f"{int(v):>{cell}}" for v in row))
    return "\n".join(lines)


def default_json_path(summary: Mapping[str, Any], workdir: str) -> str:
    """`workdir/evaluation_<choice>_step<step>.json`."""
    return paths.join(workdir, f"evaluation_{summary.get('epoch_choice')}_step"
                                 f"{summary.get('step')}.json")
