"""The fold runner of `audfer-jax sweep`: train a config's folds in sequence, then tabulate.

Fold k trains in `WORKDIR/fold_k` with the config variant `fold=k`
(`train.train_and_evaluate`). A fold whose `fold_k/metrics.json` exists is
finished and is read back, not rerun; an unfinished fold is started again and
the trainer resumes it from its newest checkpoint. So an interrupted sweep is
resumed by running the same command again.

The figures follow the evaluation protocol of `tables` (mean over folds of the
per-fold values, sample std, last and best epoch never mixed). Outputs in
WORKDIR: `results.md` (Markdown tables), `results.csv` (one row per table x
fold plus the mean and std rows) and `results.json` (the per-fold records and
the rows). On several hosts every process runs the same folds in the same
order (each run uses the whole slice); process 0 writes the tables.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Callable, Mapping, Sequence

from audfer_jax import paths
from audfer_jax.experiments import published
from audfer_jax.experiments import tables

Runner = Callable[[Any, str], Mapping[str, Any]]


def fold_record(result: Mapping[str, Any]) -> dict:
    """The part of a run's result a sweep tabulates.

    Args:
        result: what `train.train_and_evaluate` returns (and writes to
            `metrics.json`): `{"last": {"epoch", "uar", "war",
            "per_class_recall", ...}, "best": {..., "criterion"}, ...}`.

    Returns:
        `{"last": {...}, "best": {...}}` with `epoch`, `uar`, `war` (%),
        `per_class_recall` ({name: %}) and for best its `criterion`.

    Raises:
        ValueError: the result lacks a last or best evaluation (an unfinished
            or failed run).
    """
    out = {}
    for choice in tables.EPOCH_CHOICES:
        rec = result.get(choice)
        if not rec or "uar" not in rec or "war" not in rec:
            raise ValueError(f"run result has no {choice!r} evaluation with uar/war "
                             f"(keys: {sorted(result)})")
        entry = {"epoch": rec.get("epoch"), "uar": float(rec["uar"]),
                 "war": float(rec["war"])}
        if rec.get("per_class_recall"):
            entry["per_class_recall"] = {k: float(v)
                                         for k, v in rec["per_class_recall"].items()}
        if choice == "best":
            entry["criterion"] = rec.get("criterion", result.get("best_metric"))
        out[choice] = entry
    return out


def fold_dir(workdir: str, fold: int) -> str:
    """`WORKDIR/fold_<k>`."""
    return paths.join(workdir, f"fold_{int(fold)}")


def finished_result(directory: str) -> dict | None:
    """The run result in `directory/metrics.json` if the run finished, else None.

    A run writes `metrics.json` only after its last epoch (`train.py`); a
    stopped or crashed run has none (or one without a last evaluation).
    """
    path = paths.join(directory, "metrics.json")
    if not paths.isfile(path):
        return None
    try:
        result = json.loads(paths.read_text(path))
    except json.JSONDecodeError:
        return None
    if not (result.get("last") and result.get("best")):
        return None
    return result


def is_main_process() -> bool:
    """True on process 0 of a multi-host run (only it writes the tables)."""
    if "jax" not in sys.modules:
        return True
    return sys.modules["jax"].process_index() == 0


def _train(config, directory: str) -> Mapping[str, Any]:
    """The default runner: `train.train_and_evaluate(config, directory)`."""
    # Imported on the first fold to train: reading back a finished sweep (or
    # grid) does not pay for JAX and TensorFlow.
    from audfer_jax import train  # pylint: disable=g-import-not-at-top
    return train.train_and_evaluate(config, directory)


def _run_fold(fold: int, directory: str, make_config: Callable[[int], Any], runner: Runner,
              log: Callable[[str], None]) -> dict:
    """The result of fold `fold`: read back if it finished earlier, else trained now.

    Raises:
        RuntimeError: the run returned without finishing.
    """
    result = finished_result(directory)
    if result is not None:
        log(f"fold {fold}: finished earlier, read {paths.join(directory, 'metrics.json')}")
        return result
    log(f"fold {fold}: training in {directory}")
    result = dict(runner(make_config(fold), directory))
    if not (result.get("last") and result.get("best")):
        raise RuntimeError(f"fold {fold} in {directory} did not finish (result keys "
                           f"{sorted(result)}); run the sweep again to resume it")
    return result


def _write_results(workdir: str, per_fold: Mapping[int, dict], rows: Sequence[tables.Row],
                   title: str, reference: Mapping[str, Any] | None) -> None:
    """Writes `results.md`, `results.csv` and `results.json` to `workdir`."""
    paths.write_text(paths.join(workdir, "results.md"),
                     tables.to_markdown(rows, per_fold, title, reference))
    paths.write_text(paths.join(workdir, "results.csv"), tables.to_csv(rows))
    paths.write_text(paths.join(workdir, "results.json"),
                     json.dumps(tables.to_json(per_fold, rows), indent=2))


def run_sweep(make_config: Callable[[int], Any], folds: Sequence[int], workdir: str, *,
              runner: Runner | None = None, log: Callable[[str], None] = print,
              title: str = "") -> tuple[dict[int, dict], list[tables.Row]]:
    """Runs the folds in sequence (skipping finished ones) and writes the tables.

    Args:
        make_config: fold -> the config of that fold.
        folds: fold numbers, run in this order.
        workdir: sweep directory; fold k runs in `workdir/fold_k`.
        runner: `(config, fold_workdir) -> result` (default
            `train.train_and_evaluate`); tests pass a fake.
        log: progress messages.
        title: heading of `results.md`.

    Returns:
        `(per_fold, rows)`: `fold_record` of each fold and
        `tables.summarize_folds` rows. Also writes `results.md`, `results.csv`,
        `results.json` in `workdir` (process 0).

    Raises:
        RuntimeError: a fold's run returned without finishing (e.g. stopped
            early); the sweep stops there, the finished folds stay on disk.
    """
    runner = runner or _train
    workdir = paths.resolve(workdir)
    if is_main_process():
        paths.makedirs(workdir)
    per_fold: dict[int, dict] = {}
    for fold in folds:
        result = _run_fold(fold, fold_dir(workdir, fold), make_config, runner, log)
        per_fold[fold] = rec = fold_record(result)
        log(f"fold {fold}: last UAR {rec['last']['uar']:.2f} WAR {rec['last']['war']:.2f} | "
            f"best UAR {rec['best']['uar']:.2f} WAR {rec['best']['war']:.2f} "
            f"(epoch {rec['best']['epoch']})")
    rows = tables.summarize_folds(per_fold)
    if not is_main_process():
        return per_fold, rows
    reference = published.for_config(make_config(folds[0])) if folds else None
    _write_results(workdir, per_fold, rows, title, reference)
    return per_fold, rows
