"""`audfer-jax evaluate`: score a trained run on its test split.

    audfer-jax evaluate --workdir runs/x [--checkpoint best|last|STEP|PATH]
        [--config configs/x.py:ARGS] [--config.key=value ...] [--json out.json]

The run's own config (`WORKDIR/config.json`, written by `train.py`) is used
unless `--config FILE.py:ARGS` replaces it; `--config.key=value` overrides
apply on top (e.g. `--config.data.data_dir=/elsewhere`,
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

from audfer_jax.cli import errors as cli_errors
from audfer_jax import paths
from audfer_jax import config_lib


def load_run_config(workdir: str):
    """The config a run saved in `workdir/config.json`, as a `ConfigDict`.

    Raises:
        FileNotFoundError: no `config.json` there (names the path and the
            `--config` alternative).
    """
    import ml_collections
    path = paths.join(workdir, "config.json")
    if not paths.isfile(path):
        raise FileNotFoundError(
                f"{path}: not found; is {workdir} a training run directory? Pass the run's "
                "config with --config configs/<backbone>.py:... otherwise")
    return ml_collections.ConfigDict(json.loads(paths.read_text(path)))


def _steps(directory: str) -> list[int]:
    """Integer-named step directories of an Orbax manager directory, sorted.

    In-progress saves (`<step>.orbax-checkpoint-tmp-*`) are not integers and
    are skipped.
    """
    if not paths.isdir(directory):
        return []
    return sorted(int(n) for n in paths.listdir(directory)
                  if n.isdigit() and paths.isdir(paths.join(directory, n)))


def resolve_checkpoint(workdir: str, checkpoint: str = "best") -> tuple[str, str, int | None]:
    """Finds the step directory a `--checkpoint` value names.

    Args:
        workdir: run directory (holds `checkpoints/` and `best/`).
        checkpoint: `best`, `last`, an integer step, or a directory path.

    Returns:
        `(path, choice, step)`: the step directory, the label (`best`, `last`,
        `step`, or `path`) and the step (None when unknown).

    Raises:
        FileNotFoundError: no such checkpoint (lists the steps there are).
        ValueError: a value that is none of the above.
    """
    ckpt_dir = paths.join(workdir, "checkpoints")
    best_dir = paths.join(workdir, "best")
    latest, best = _steps(ckpt_dir), _steps(best_dir)
    available = (f"checkpoints/ has steps {latest or 'none'}, best/ has steps "
                 f"{best or 'none'}")
    if checkpoint == "best":
        if not best:
            raise FileNotFoundError(f"{best_dir}: no best checkpoint ({available})")
        return paths.join(best_dir, str(best[-1])), "best", best[-1]
    if checkpoint == "last":
        if not latest:
            raise FileNotFoundError(f"{ckpt_dir}: no checkpoint ({available})")
        return paths.join(ckpt_dir, str(latest[-1])), "last", latest[-1]
    if checkpoint.isdigit():
        step = int(checkpoint)
        for directory, steps in ((ckpt_dir, latest), (best_dir, best)):
            if step in steps:
                return paths.join(directory, str(step)), "step", step
        raise FileNotFoundError(f"{workdir}: no checkpoint at step {step} ({available})")
    if paths.isdir(checkpoint):
        base = paths.basename(checkpoint)
        return paths.resolve(checkpoint), "path", int(base) if base.isdigit() else None
    raise ValueError(f"--checkpoint {checkpoint!r}: expected best, last, a step number "
                     "or a checkpoint directory")


def _best_criterion(workdir: str, config) -> str:
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
            `resolve_checkpoint`).
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
    workdir = paths.resolve(workdir)
    if not paths.isdir(workdir) and not paths.isdir(checkpoint):
        raise FileNotFoundError(f"{workdir}: no such run directory")
    path, choice, step = resolve_checkpoint(workdir, checkpoint)
    if config is None:
        run_dir = workdir
        if choice == "path" and not paths.isfile(paths.join(workdir, "config.json")):
            # A step directory `RUN/checkpoints/<step>`: the config is in RUN.
            run_dir = paths.dirname(paths.dirname(path))
        config = load_run_config(run_dir)
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


def main(argv: list[str]) -> int:
    """`audfer-jax evaluate --workdir DIR [--checkpoint best|last|STEP] [--config ...]`."""
    try:
        rest, overrides = config_lib.split_config_overrides(argv)
    except ValueError as e:
        return cli_errors.report("audfer-jax evaluate", e, status=2)
    parser = cli_errors.ArgumentParser(
            prog="audfer-jax evaluate",
            description="Evaluate a trained run on its test split: UAR, WAR, per-class "
                        "recall, AU F1, confusion matrix. --config.key=value overrides "
                        "apply to the run's saved config.")
    parser.add_argument("--workdir", required=True,
                        help="the training run directory (local or gs://...)")
    parser.add_argument("--checkpoint", default="best",
                        help="best (default), last, a step number, or a step directory")
    parser.add_argument("--config", default=None,
                        help="configs/<backbone>.py:ARGS to use instead of WORKDIR/config.json")
    parser.add_argument("--json", default=None,
                        help="where to write the figures (default "
                             "WORKDIR/evaluation_<choice>_step<step>.json)")
    args = parser.parse_args(rest)
    try:
        config = config_lib.load_config_file(args.config) if args.config else None
        summary = evaluate(args.workdir, args.checkpoint, config=config, overrides=overrides)
    except (OSError, ValueError, KeyError) as e:
        return cli_errors.report("audfer-jax evaluate", e)
    import jax  # pylint: disable=g-import-not-at-top
    if jax.process_index() != 0:        # multi-host: one report, one file
        return 0
    print(format_report(summary))
    out = paths.resolve(args.json or default_json_path(summary, paths.resolve(args.workdir)))
    paths.makedirs(paths.dirname(out))
    paths.write_text(out, json.dumps(summary, indent=2))
    print(f"\nwrote {out}")
    return 0
