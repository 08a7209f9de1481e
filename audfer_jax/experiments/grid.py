"""Grids of config variants for `audfer-jax sweep --grid`: expansion, names, de-duplication.

    --grid loss=ce,au,au_distinct --grid au.lam=0.1,0.25

Each `--grid KEY=V1,V2,...` is one axis. KEY is either a config argument of the
config file (the `FILE.py:ARG` part, e.g. `loss`, `dataset`, `prior`) or a
config field as `--config.KEY` would set it (e.g. `au.lam`, `optim.lr`); a key
the config file accepts as an argument is an argument. The variants are the
product of the axes, the first `--grid` varying slowest. Two variants whose
resolved configs train the same experiment are one variant (a lambda axis
under `loss=ce` trains one model, not three): the first in grid order keeps
its name and the others are merged into it.

A variant's name is its assignments in `--grid` order, e.g.
`loss-au__au.lam-0.25`: it depends only on the command line, so the same grid
names the same directories on every run, and extending a grid keeps the names
of the variants it had.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
from typing import Any, Callable, Sequence

# Fields that do not change what a run computes under a loss variant, so that
# variants differing only there are one experiment. `experiment.resolve_loss`:
# `ce` trains with lambda = 0 (the AU term is logged only), so the whole `au`
# group is inert; `au_none` uses no pos_weight, so the pos_weight options
# (`per_class`, `minor_classes`) are inert.
_INERT_UNDER_LOSS = {
    "ce": ("au",),
    "au_none": ("au.per_class", "au.minor_classes"),
}
# Fields that never change the experiment: the fold (set per fold) and the
# output/logging knobs.
_NEVER_COMPARED = ("data.fold", "progress_bar", "log_every_steps", "compile_cache_dir",
                   "async_checkpoints")

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclasses.dataclass(frozen=True)
class Axis:
    """One `--grid KEY=V1,V2`: `key`, its value texts, and whether KEY is a config argument."""
    key: str
    values: tuple[str, ...]
    is_argument: bool = False


@dataclasses.dataclass
class Variant:
    """One point of the grid after de-duplication.

    Attributes:
        name: directory name under the sweep's WORKDIR (filesystem and gs:// safe).
        assignments: `((key, value text), ...)` in `--grid` order.
        fingerprint: hex digest of the resolved config (fold and logging fields
            excluded, inert fields dropped): equal fingerprints = same experiment.
        merged: assignments of the grid points merged into this one.
    """
    name: str
    assignments: tuple[tuple[str, str], ...]
    fingerprint: str
    merged: list[tuple[tuple[str, str], ...]] = dataclasses.field(default_factory=list)

    def label(self) -> str:
        """`loss=au, au.lam=0.25` (as typed on the command line)."""
        return ", ".join(f"{k}={v}" for k, v in self.assignments) or "(config as given)"

    def matches(self, wanted: Sequence[tuple[str, str]]) -> bool:
        """True if this variant, or a grid point merged into it, has every `wanted` pair."""
        for assign in [self.assignments, *self.merged]:
            have = dict(assign)
            if all(have.get(k) == v for k, v in wanted):
                return True
        return False


def parse_axis(text: str) -> Axis:
    """`"au.lam=0.1,0.25"` -> `Axis("au.lam", ("0.1", "0.25"))`.

    Raises:
        ValueError: no `=`, an empty key, an empty value list or a repeated value.
    """
    if "=" not in text:
        raise ValueError(f"--grid {text!r}: expected KEY=V1,V2,... (e.g. loss=ce,au)")
    key, values_text = (s.strip() for s in text.split("=", 1))
    if not key:
        raise ValueError(f"--grid {text!r}: no config argument or field before '='")
    values = tuple(v.strip() for v in values_text.split(",") if v.strip())
    if not values:
        raise ValueError(f"--grid {key}=: empty list of values (expected e.g. {key}=A,B)")
    if len(set(values)) != len(values):
        raise ValueError(f"--grid {text}: a value is listed twice")
    if key in ("fold", "data.fold"):
        raise ValueError(f"--grid {key}: folds are chosen by --folds, not by a grid")
    return Axis(key, values)


def parse_axes(texts: Sequence[str]) -> list[Axis]:
    """Every `--grid` argument; a key given in two `--grid`s is an error."""
    axes = [parse_axis(t) for t in texts]
    keys = [a.key for a in axes]
    for k in keys:
        if keys.count(k) > 1:
            raise ValueError(f"--grid {k} is given twice; put all its values in one --grid")
    return axes


def variant_name(assignments: Sequence[tuple[str, str]]) -> str:
    """`(("loss", "au"), ("au.lam", "0.25"))` -> `"loss-au__au.lam-0.25"`.

    Characters outside `[A-Za-z0-9._-]` in keys or values become `_`, so the
    name is a valid directory name locally and on gs://.
    """
    parts = [f"{_SAFE.sub('_', k)}-{_SAFE.sub('_', v)}" for k, v in assignments]
    return "__".join(parts)


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """`ConfigDict`/dict -> `{"a.b": leaf}` with JSON-able leaves (tuples as lists)."""
    if hasattr(node, "to_dict"):
        node = node.to_dict()
    out: dict[str, Any] = {}
    if isinstance(node, dict):
        for k in sorted(node):
            out.update(_flatten(node[k], f"{prefix}{k}."))
        return out
    if isinstance(node, tuple):
        node = list(node)
    out[prefix[:-1]] = node
    return out


def flat_fields(config) -> dict[str, Any]:
    """Every leaf field of `config` as `{"a.b": value}` (tuples as lists)."""
    return _flatten(config)


def resolved_fields(config) -> dict[str, Any]:
    """The fields of `config` that decide the experiment, flattened to `"a.b": value`.

    Drops the fold and logging fields (`_NEVER_COMPARED`) and the fields that
    the config's loss does not read (`_INERT_UNDER_LOSS`).
    """
    flat = _flatten(config)
    drop = _NEVER_COMPARED + _INERT_UNDER_LOSS.get(str(flat.get("loss")), ())
    return {k: v for k, v in flat.items()
            if not any(k == d or k.startswith(d + ".") for d in drop)}


def fingerprint(config) -> str:
    """SHA-256 (hex, 16 characters) of `resolved_fields(config)` as canonical JSON."""
    text = json.dumps(resolved_fields(config), sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def expand(axes: Sequence[Axis],
           make_config: Callable[[Sequence[tuple[str, str]]], Any]
           ) -> tuple[list[Variant], list[tuple[Variant, tuple[tuple[str, str], ...]]]]:
    """The product of `axes`, de-duplicated by resolved config.

    Args:
        axes: the `--grid` axes, in command-line order (the first varies slowest).
        make_config: assignments -> the resolved config of that grid point (of
            one fold); it raises ValueError/KeyError for a bad value, which
            propagates, so every point is checked before anything trains.

    Returns:
        `(variants, merges)`: the distinct variants in grid order, and for each
        grid point merged into an earlier one `(kept variant, merged assignments)`.
        With no axes, one variant named `""` (the config as given).
    """
    points = [tuple(zip([a.key for a in axes], combo))
              for combo in itertools.product(*[a.values for a in axes])]
    variants: list[Variant] = []
    by_print: dict[str, Variant] = {}
    merges = []
    for assign in points:
        fp = fingerprint(make_config(assign))
        if fp in by_print:
            kept = by_print[fp]
            kept.merged.append(assign)
            merges.append((kept, assign))
            continue
        v = Variant(variant_name(assign), assign, fp)
        by_print[fp] = v
        variants.append(v)
    # Sanitising can map two different value texts to one name (`a b`, `a_b`):
    # keep names unique with the fingerprint, deterministically.
    names = [v.name for v in variants]
    for v in variants:
        if names.count(v.name) > 1:
            v.name = f"{v.name}__{v.fingerprint[:8]}"
    return variants, merges


def parse_baseline(text: str, axes: Sequence[Axis]) -> list[tuple[str, str]]:
    """`"loss=ce"` or `"loss=ce,au.lam=0.1"` -> `[("loss", "ce"), ...]`.

    Each key must be a grid axis and each value one of its values.

    Raises:
        ValueError: bad syntax, a key that is no axis, a value not on its axis.
    """
    known = {a.key: a for a in axes}
    pairs = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        if "=" not in item:
            raise ValueError(f"--baseline {text!r}: expected KEY=VALUE[,KEY=VALUE] "
                             "among the --grid values")
        k, v = (s.strip() for s in item.split("=", 1))
        if k not in known:
            raise ValueError(f"--baseline {text!r}: {k!r} is not a --grid key "
                             f"(grid keys: {', '.join(known) or 'none'})")
        if v not in known[k].values:
            raise ValueError(f"--baseline {text!r}: {k}={v} is not among the variants "
                             f"({k} takes {', '.join(known[k].values)})")
        pairs.append((k, v))
    if not pairs:
        raise ValueError(f"--baseline {text!r}: expected KEY=VALUE among the --grid values")
    return pairs


def find_baseline(variants: Sequence[Variant], wanted: Sequence[tuple[str, str]]) -> Variant:
    """The one variant matching `wanted` (merged grid points count).

    Raises:
        ValueError: no variant matches, or several distinct ones do.
    """
    hits = [v for v in variants if v.matches(wanted)]
    text = ",".join(f"{k}={v}" for k, v in wanted)
    if not hits:
        raise ValueError(f"--baseline {text}: not among the variants")
    if len(hits) > 1:
        raise ValueError(f"--baseline {text} matches {len(hits)} variants "
                         f"({'; '.join(v.name for v in hits)}); add the other grid keys "
                         "to pick one")
    return hits[0]
