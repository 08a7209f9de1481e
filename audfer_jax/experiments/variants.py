"""The config of each grid point and fold of `audfer-jax sweep --grid`, resolved up front.

A `--grid` key without a dot that the config file's `get_config(arg)` accepts
is a config argument (its values go into `FILE.py:...,KEY=V`, so the file's own
logic runs, e.g. MAFW's prior); any other key is a config field
(`--config.KEY=V`). `resolve_grid` resolves and checks every variant of every
fold and the baseline before anything trains, so that a bad value is one line
at once rather than an error after hours of training.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from audfer_jax import config_lib
from audfer_jax import hints
from audfer_jax import hints
from audfer_jax.experiments import grid

Overrides = Sequence[tuple[str, str]]
Assignments = Sequence[tuple[str, str]]


def _is_argument(spec: str, axis: grid.Axis) -> tuple[bool, str]:
    """Whether `axis.key` is a config argument of `spec`, and the file's error if not.

    Raises:
        ValueError: the file knows the argument but rejects the axis' first value.
    """
    if "." in axis.key:
        return False, ""
    try:
        config_lib.load_config_file(config_lib.with_arg(spec, axis.key, axis.values[0]))
        return True, ""
    except ValueError as e:
        arg_error = hints.one_line(e)
        if f"unknown config argument {axis.key!r}" not in arg_error:
            raise ValueError(f"--grid {axis.key}={axis.values[0]}: {arg_error}") from None
        return False, arg_error


def classify_axes(spec: str, axes: Sequence[grid.Axis]) -> list[grid.Axis]:
    """Marks each axis as a config argument of `spec`'s file or a config field.

    Raises:
        ValueError: a value the config file rejects for an argument key, or a key
            that is neither an argument nor a field.
    """
    base = None
    out = []
    for axis in axes:
        is_arg, arg_error = _is_argument(spec, axis)
        if not is_arg:
            if base is None:
                base = grid.flat_fields(config_lib.load_config_file(spec))
            if axis.key not in base:
                args_text = arg_error.partition("; ")[2].split("; did you mean")[0]
                raise ValueError(
                        f"--grid {axis.key}: neither a config argument of "
                        f"{config_lib.config_file_path(spec)}"
                        + (f" ({args_text})" if args_text else "")
                        + " nor a config field"
                        + (hints.did_you_mean(axis.key, list(base)) or
                           " (a field is e.g. au.lam or optim.lr)"))
        out.append(grid.Axis(axis.key, axis.values, is_arg))
    return out


def fold_config(spec: str, overrides: Overrides, fold: int):
    """The config of `spec` for fold `fold`, with the `--config.` overrides applied.

    Raises:
        ValueError, KeyError, OSError: as `config_lib.load_config_file` and
            `config_lib.apply_overrides`.
    """
    return config_lib.apply_overrides(
            config_lib.load_config_file(config_lib.with_fold(spec, fold)), overrides)


def variant_config(spec: str, axes: Sequence[grid.Axis], overrides: Overrides,
                   assignments: Assignments, fold: int):
    """The config of one grid point and fold: `spec` with the argument values and
    the fold, then the `--config.` overrides, then the grid's field values.

    Raises:
        ValueError: a config argument the file rejects, a grid field that does not
            exist or a value of the wrong type (one line naming the `--grid` entry).
    """
    kinds = {a.key: a.is_argument for a in axes}
    for key, value in assignments:
        if kinds[key]:
            spec = config_lib.with_arg(spec, key, value)
    try:
        config = config_lib.load_config_file(config_lib.with_fold(spec, fold))
    except ValueError as e:
        grid_args = ",".join(f"{k}={v}" for k, v in assignments if kinds[k])
        raise ValueError(f"--grid {grid_args}: {hints.one_line(e)}") from None
    config_lib.apply_overrides(config, overrides)
    for key, value in assignments:
        if not kinds[key]:
            try:
                config_lib.apply_overrides(config, [(key, value)])
            except (KeyError, ValueError) as e:
                text = hints.one_line(e).partition(": ")[2]
                raise ValueError(f"--grid {key}={value}: {text}") from None
    return config


@dataclasses.dataclass(frozen=True)
class GridPlan:
    """Every variant of a grid, resolved and checked; the baseline among them.

    Attributes:
        spec: the `--config` spec.
        overrides: the `--config.KEY=V` pairs, applied to every variant.
        axes: the classified `--grid` axes, in command-line order.
        variants: the distinct variants in grid order (`grid.expand`).
        merges: `(kept variant, merged assignments)` per merged grid point.
        baseline: the variant the others are compared with.
    """
    spec: str
    overrides: tuple[tuple[str, str], ...]
    axes: tuple[grid.Axis, ...]
    variants: tuple[grid.Variant, ...]
    merges: tuple[tuple[grid.Variant, tuple[tuple[str, str], ...]], ...]
    baseline: grid.Variant

    def config(self, variant: grid.Variant, fold: int):
        """The config of `variant` for fold `fold`."""
        return variant_config(self.spec, self.axes, self.overrides, variant.assignments, fold)

    def merged_lines(self) -> list[str]:
        """One line per merged grid point (for the console and `results.md`)."""
        lines = []
        for kept, assign in self.merges:
            text = ", ".join(f"{k}={v}" for k, v in assign)
            lines.append(f"{text} trains the same experiment as {kept.label()} "
                         f"(resolved configs equal): merged into {kept.name}")
        return lines

    def grid_text(self) -> str:
        """The axes as typed: `--grid loss=ce,au --grid au.lam=0.1,0.25`."""
        return " ".join(f"--grid {a.key}={','.join(a.values)}" for a in self.axes)

    def criterion(self, fold: int) -> str:
        """The best-epoch criterion of the first variant's config (for headings)."""
        first = self.config(self.variants[0], fold)
        return str(first.get("best_metric", "")) if hasattr(first, "get") else ""


def resolve_grid(spec: str, grid_texts: Sequence[str], overrides: Overrides,
                 folds: Sequence[int], baseline: str = "") -> GridPlan:
    """Parses the `--grid` axes and resolves every variant of every fold.

    Args:
        spec: the `--config` spec.
        grid_texts: the `--grid KEY=V1,V2` texts.
        overrides: the `--config.KEY=V` pairs.
        folds: the fold numbers (non-empty).
        baseline: the `--baseline KEY=V` text; "" = the first variant.

    Raises:
        ValueError, KeyError, OSError: a bad axis, value, override or baseline
            (one line naming the flag), before anything trains.
    """
    axes = grid.parse_axes(grid_texts)
    override_keys = {k for k, _ in overrides}
    for a in axes:
        if a.key in override_keys:
            raise ValueError(f"--grid {a.key} and --config.{a.key} both set {a.key}; keep one")
    axes = classify_axes(spec, axes)

    def make(assign: Assignments, fold: int) -> Any:
        return variant_config(spec, axes, overrides, assign, fold)

    variants, merges = grid.expand(axes, lambda a: make(a, folds[0]))
    for v in variants:
        for fold in folds[1:]:
            make(v.assignments, fold)
    if baseline:
        chosen = grid.find_baseline(variants, grid.parse_baseline(baseline, axes))
    else:
        chosen = variants[0]
    return GridPlan(spec, tuple(overrides), tuple(axes), tuple(variants), tuple(merges),
                    chosen)
