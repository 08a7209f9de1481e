"""The largest per-chip batch whose train step fits the chip's HBM, in few compiles."""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

from audfer_jax.compilation.programs import Compiled


def search_bytes(compiled: Compiled, extra: int, hbm: float) -> float:
    """The bytes per chip `search_max_batch` sees for one compile.

    A program XLA:TPU refused never fits, whatever the HBM compared with:
    XLA's own limit (15.75 GiB on a v5e) is below the datasheet's 16 GiB, so a
    refused program that needed 15.76 GiB must not count as fitting 16 GiB
    (a MAE-DFER search did so before). Its required bytes still place the
    line through the sizes; below `hbm` they are raised to just above it.

    Args:
        compiled: the train step's `Compiled`.
        extra: bytes of the prefetched batches beside the step.
        hbm: bytes per chip compared with.

    Returns:
        bytes; `inf` for a refused program whose message names no size.
    """
    if not compiled.out_of_memory:
        return float(compiled.total + extra)
    if not compiled.required:
        return math.inf
    return max(float(compiled.required + extra), math.nextafter(float(hbm), math.inf))


@dataclasses.dataclass
class Search:
    """The result of `search_max_batch`.

    Attributes:
        largest: the largest per-chip batch that fits (0: not even 1).
        measured: `{per-chip batch: bytes}` of every compile, in order.
        predicted: the first linear fit's prediction of `largest`.
    """
    largest: int
    measured: dict
    predicted: int | None


def search_max_batch(measure: Callable[[int], float], limit: float, hint: int = 8,
                     max_compiles: int = 16) -> Search:
    """The largest per-chip batch n with `measure(n) <= limit`, in few compiles.

    Memory grows about linearly in the batch (activations), so `measure` at
    per-chip 1 and `hint` gives a line, and the size it predicts is compiled;
    while sizes fit, each new line runs through the smallest and the largest
    size that fit (per-chip 1 only while no other exists: tiny batches can
    take more memory than larger ones, padded to the chip's tiles). The size
    after a fitting one is compiled only where the line says it should not
    fit (the edge is near); once a size fails, lines inside the
    bracket, where each line that does not halve the bracket is followed by a
    bisection (memory may grow in steps), until a size that fits sits next to
    one that does not.
    Assumes `measure` does not decrease with n beyond the smallest sizes.

    Args:
        measure: per-chip batch -> bytes per chip (one compile each).
        limit: bytes per chip available.
        hint: the second size tried (e.g. the recipe's per-chip batch).
        max_compiles: stop after this many (then `largest` is the largest
            size seen to fit, and `measured` has no failing size after it).

    Returns:
        A `Search`.
    """
    pts: dict[int, float] = {}

    def m(n: int) -> float:
        if n not in pts:
            pts[n] = float(measure(n))
        return pts[n]

    if m(1) > limit:
        return Search(0, pts, None)
    m(max(2, int(hint)))
    predicted = None
    width = math.inf              # the bracket's width when its last line was drawn
    while len(pts) < max_compiles:
        fit = [n for n in pts if pts[n] <= limit]
        lo = max(fit)
        over = [n for n in pts if n > lo and pts[n] > limit]
        hi = min(over) if over else None
        if hi == lo + 1:
            break
        if hi is not None and hi - lo > width / 2:
            # Memory may grow in steps (tiled layouts): where the last line
            # did not halve the bracket, bisect it once.
            width = hi - lo
            m((lo + hi) // 2)
            continue
        if hi is not None:
            width = hi - lo
        if hi is not None:
            n1, n2 = lo, hi
        else:
            base = [n for n in fit if n >= 2 and n < lo]
            n1, n2 = (min(base) if base else min(fit)), lo
        slope = (pts[n2] - pts[n1]) / (n2 - n1)
        guess = (lo + int(math.floor((limit - pts[lo]) / slope)) if slope > 0 else 2 * lo)
        if predicted is None:
            predicted = guess
        cand = max(lo + 1, guess)
        if hi is not None:
            cand = min(cand, hi - 1)
        fits = m(cand) <= limit
        near = slope > 0 and limit - pts[cand] < slope
        if (near and fits and len(pts) < max_compiles
                and (hi is None or cand + 1 < hi)):
            m(cand + 1)           # the line says the next size does not fit: check
    largest = max(n for n in pts if pts[n] <= limit)
    return Search(largest, pts, predicted)
