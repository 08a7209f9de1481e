"""Experiments over folds: the library behind `audfer-jax sweep`.

    folds.py        run a config's folds in sequence (resuming), write the tables
    tables.py       per-fold rows, mean and sample std; Markdown and CSV
    grid.py         `--grid` axes: expansion, names, de-duplication, baseline
    variants.py     the config of each grid point and fold, checked before training
    grid_runner.py  run every variant's folds and write the comparison
    comparison.py   the comparison tables: variants against a baseline, fold by fold
    stats.py        sample std and the paired t-test over folds
    published.py    the original papers' UAR/WAR as reference rows (reference_data/)

Imports nothing heavy: JAX, TensorFlow, SciPy and matplotlib load only when a
fold trains, a test is computed or a figure is drawn.
"""
