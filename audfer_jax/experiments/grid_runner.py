"""Runs the variants of a grid (`audfer-jax sweep --grid`) and writes their comparison.

Variant `NAME` runs its folds in `WORKDIR/NAME/fold_k` (`folds.run_sweep`, with
its own per-variant tables and a `variant.json` that records what it is), then
the comparison against the baseline goes to WORKDIR: `results.md`,
`results.csv`, `results.json` (one table per metric and epoch choice, paired
statistics over folds: `comparison`, `stats`) and `results.png`
(`figures/sweep.py`). A variant finished earlier, also under another name (a
grid extended by an axis renames its variants), is read back, not trained
again. On several hosts every process runs the same variants and folds in the
same order (each run uses the whole slice); process 0 writes the tables.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Mapping, Sequence

from audfer_jax import paths
from audfer_jax.experiments import comparison
from audfer_jax.experiments import folds as folds_lib
from audfer_jax.experiments import grid
from audfer_jax.experiments import published
from audfer_jax.experiments import stats

TEST = f"{stats.TEST_NAME} over folds"


def _variant_dir(workdir: str, variant: grid.Variant, log) -> str:
    """`WORKDIR/<name>`, or the directory of an earlier run of the same experiment.

    A directory of another name whose `variant.json` has the same fingerprint
    (a grid extended by an axis renames its variants) is reused, so that its
    finished folds are not trained again.
    """
    own = paths.join(workdir, variant.name)
    if paths.isfile(paths.join(own, "variant.json")):
        return own
    for path in paths.glob(workdir, "*"):
        record = paths.join(path, "variant.json")
        if not paths.isfile(record):
            continue
        try:
            if json.loads(paths.read_text(record)).get("fingerprint") == variant.fingerprint:
                log(f"variant {variant.label()}: same experiment as {path}; reusing it")
                return path
        except json.JSONDecodeError:
            continue
    return own


def _check_or_record(directory: str, variant: grid.Variant, log) -> None:
    """Warns if `directory/variant.json` records another config; writes it if absent."""
    record_path = paths.join(directory, "variant.json")
    if paths.isfile(record_path):
        try:
            recorded = json.loads(paths.read_text(record_path)).get("fingerprint")
        except json.JSONDecodeError:
            recorded = None
        if recorded != variant.fingerprint:
            log(f"warning: {record_path} records another resolved config "
                f"({recorded} != {variant.fingerprint}: other --config. values than before?); "
                "its finished folds are read back as they are")
    elif folds_lib.is_main_process():
        # The first run of a variant records what it is; later runs (also of an
        # extended grid that reuses it under another name) leave it as it is.
        paths.makedirs(directory)
        record = {"name": variant.name, "assignments": [list(a) for a in variant.assignments],
                  "merged": [[list(a) for a in m] for m in variant.merged],
                  "fingerprint": variant.fingerprint}
        paths.write_text(record_path, json.dumps(record, indent=2))


def _reference(configs: Sequence[Any]) -> dict | None:
    """The published row, only when every variant is the same paper recipe on the
    same dataset (a grid over `dataset=` or `--config.model` has no single reference)."""
    recipes = {(str(c.model), str(c.data.name)) for c in configs}
    return published.for_config(configs[0]) if len(recipes) == 1 else None


def _write_comparison(workdir: str, tables: Sequence[dict], variants: Sequence[grid.Variant],
                      baseline: grid.Variant, per_variant: Mapping[str, Mapping],
                      dirs: Mapping[str, str], *, title: str, criterion: str,
                      merged: Sequence[str]) -> None:
    """Writes `results.md`, `results.csv`, `results.json` and `results.png` to `workdir`."""
    paths.write_text(paths.join(workdir, "results.md"), comparison.to_markdown(
            tables, title=title, baseline_label=baseline.label(), criterion=criterion,
            merged=merged))
    paths.write_text(paths.join(workdir, "results.csv"), comparison.to_csv(tables))
    paths.write_text(paths.join(workdir, "results.json"), json.dumps(
            {"std": "sample (ddof=1)", "test": TEST, "baseline": baseline.name,
             "variants": {v.name: {"label": v.label(), "directory": dirs[v.name],
                                   "merged": [dict(m) for m in v.merged],
                                   "per_fold": {str(k): r for k, r in
                                                per_variant[v.name].items()}}
                          for v in variants},
             "tables": comparison.to_json(tables)}, indent=2))
    # matplotlib is imported only to draw the figure.
    from audfer_jax import figures  # pylint: disable=g-import-not-at-top
    from audfer_jax.figures import sweep as sweep_figure  # pylint: disable=g-import-not-at-top
    fig = sweep_figure.results_figure(tables, title=title)
    figures.save(fig, paths.join(workdir, "results.png"))


def run_grid(variants: Sequence[grid.Variant], make_config: Callable[[Any, int], Any],
             folds: Sequence[int], workdir: str, *, baseline: grid.Variant,
             runner: folds_lib.Runner | None = None, log: Callable[[str], None] = print,
             title: str = "", criterion: str = "", merged: Sequence[str] = ()
             ) -> list[dict]:
    """Runs each variant's folds in turn (`folds.run_sweep`) and writes the comparison.

    Args:
        variants: `grid.expand` output, in run order.
        make_config: `(variant, fold) -> config`.
        folds: fold numbers.
        workdir: sweep directory; variant v in `workdir/<v.name or reused>`.
        baseline: the variant the others are compared with.
        runner, log: as `folds.run_sweep`.
        title: heading of `results.md` and `results.png`.
        criterion: best-epoch criterion for the headings.
        merged: lines describing merged grid points (printed in `results.md`).

    Returns:
        `comparison.build_tables` output. Writes `results.{md,csv,json,png}` to
        `workdir` (process 0); each variant's own tables and `variant.json` in
        its directory.

    Raises:
        RuntimeError: a fold's run returned without finishing (`folds.run_sweep`).
    """
    workdir = paths.resolve(workdir)
    if folds_lib.is_main_process():
        paths.makedirs(workdir)
    per_variant, labels, dirs = {}, {}, {}
    for i, v in enumerate(variants, 1):
        directory = dirs[v.name] = _variant_dir(workdir, v, log)
        log(f"variant {i}/{len(variants)}: {v.label()} in {directory}")
        _check_or_record(directory, v, log)
        per_fold, _ = folds_lib.run_sweep(
                lambda fold, v=v: make_config(v, fold), folds, directory, runner=runner,
                log=lambda m: log(f"  {m}"), title=f"{title}: {v.label()}")
        per_variant[v.name] = per_fold
        labels[v.name] = v.label()
    reference = _reference([make_config(v, folds[0]) for v in variants])
    tables = comparison.build_tables(per_variant, labels, baseline.name, reference)
    if folds_lib.is_main_process():
        _write_comparison(workdir, tables, variants, baseline, per_variant, dirs, title=title,
                          criterion=criterion, merged=merged)
    return tables
