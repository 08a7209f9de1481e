"""`run`: compile a config's steps for a slice, and say what they need and whether they fit.

Every figure goes to `log` as a line (the lines `audfer-jax compile` prints)
and into the returned dict (its `--json`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from audfer_jax.compilation.max_batch import Search, search_bytes, search_max_batch
from audfer_jax.compilation.programs import (Compiled, Programs, batch_bytes_per_chip,
                                             build_programs, compile_program, format_bytes,
                                             memory_line)
from audfer_jax.compilation.topologies import GIB, HBM_GIB, Slice, load_slice, quiet_stderr


@dataclasses.dataclass(frozen=True)
class _Target:
    """What every compile of one `run` shares.

    Attributes:
        config: the experiment config.
        tpu_slice: the TPU slice compiled for.
        hbm: bytes of HBM per chip compared with.
        hbm_source: where `hbm` comes from (`--hbm-gib` or the datasheet).
        quiet: hide what libtpu and XLA print (`quiet_stderr`).
        log: receives each output line.
    """
    config: Any
    tpu_slice: Slice
    hbm: float
    hbm_source: str
    quiet: bool
    log: Callable[[str], None]

    @property
    def prefetched(self) -> int:
        """Batches `train` keeps on the devices beside the step (`prefetch_to_device`)."""
        return int(self.config.get("prefetch_to_device", 0) or 0)

    def programs(self, global_batch: int) -> Programs:
        """`build_programs` of the config for the slice at `global_batch`."""
        return build_programs(self.config, self.tpu_slice.devices, global_batch)

    def compile(self, jitted: Callable, *args) -> Compiled:
        """`compile_program`, with libtpu's and XLA's output hidden when quiet."""
        with quiet_stderr(self.quiet):
            return compile_program(jitted, *args)

    def prefetch_bytes(self, p: Programs) -> int:
        """Bytes per chip of the training batches prefetched to the devices."""
        return self.prefetched * batch_bytes_per_chip(p.train_batch, self.tpu_slice.chips)


def run(config, *, topology: str, batch: int | None = None, max_batch: bool = False,
        hbm_gib: float | None = None, platform: str = "tpu", eval_step: bool = True,
        quiet: bool = True, log: Callable[[str], None] = print) -> dict:
    """Compiles `config`'s train (and eval) step for `topology`; prints and returns figures.

    Args:
        config: experiment config.
        topology: libtpu topology name (`topologies.TOPOLOGY_FORMS`).
        batch: global batch (default `config.batch_size`); ignored with
            `max_batch`.
        max_batch: search the largest per-chip batch that fits.
        hbm_gib: HBM per chip (default `HBM_GIB` of the generation).
        platform: only `tpu`.
        eval_step: also compile the evaluation step.
        quiet: hide what libtpu and XLA print (`quiet_stderr`).
        log: receives each output line.

    Returns:
        A JSON-able dict of every figure printed, with `fits` (bool).

    Raises:
        ValueError: bad topology, platform, batch or config; libtpu missing.
    """
    target = _target(config, topology, hbm_gib, platform, quiet, log)
    out = _describe(target)
    search, cache = None, {}            # cache: per-chip batch -> its train-step compile
    if max_batch:
        search = _search(target, cache, out)
        if search.largest == 0:
            return _nothing_fits(target, cache[1], out)
        batch = search.largest * target.tpu_slice.chips
    global_batch = int(batch if batch else int(config.batch_size))
    p = target.programs(global_batch)
    _log_batches(target, p, global_batch)
    train_c = cache.get(search.largest) if search is not None else None
    if train_c is None:
        train_c = target.compile(p.train_step, p.state, p.train_batch)
    fits = _train_figures(target, p, train_c, global_batch, out)
    if eval_step:
        fits = _eval_figures(target, p, out) and fits
    if search is not None:
        log(_largest_line(search, cache, target.hbm))
    out["fits"] = bool(fits)
    log(f"fits: {'yes' if fits else 'no'}")
    return out


def _target(config, topology: str, hbm_gib: float | None, platform: str, quiet: bool,
            log: Callable[[str], None]) -> _Target:
    """Loads the slice and settles the HBM per chip compared with.

    Raises:
        ValueError: bad topology or platform, libtpu missing, `hbm_gib` < 0.
    """
    with quiet_stderr(quiet):
        sl = load_slice(topology, platform)
    hbm = float(hbm_gib if hbm_gib else HBM_GIB[sl.generation]) * GIB
    if hbm <= 0:
        raise ValueError(f"--hbm-gib must be > 0, got {hbm_gib}")
    source = "--hbm-gib" if hbm_gib else f"{sl.generation} datasheet"
    return _Target(config=config, tpu_slice=sl, hbm=hbm, hbm_source=source, quiet=quiet,
                   log=log)


def _describe(t: _Target) -> dict[str, Any]:
    """Logs the model and the slice; returns the figures' dict with them."""
    from audfer_jax import model_state  # pylint: disable=g-import-not-at-top
    config, sl, hbm = t.config, t.tpu_slice, t.hbm
    out: dict[str, Any] = {
            "model": str(config.model), "dtype": str(config.get("dtype", "float32")),
            "remat_policy": model_state.remat_policy_of(config),
            "scan_blocks": bool(config.get("scan_blocks", True)),
            "topology": sl.name, "chips": sl.chips, "hosts": sl.hosts,
            "device_kind": sl.device_kind, "hbm_gib": hbm / GIB,
            "recipe_batch": int(config.batch_size)}
    t.log(f"model: {out['model']}, {out['dtype']}, remat_policy {out['remat_policy']}, "
          f"scan_blocks {'on' if out['scan_blocks'] else 'off'}; strategy jit")
    t.log(f"topology: {sl.name}: {sl.chips} chips ({sl.device_kind}) in {sl.hosts} host(s), "
          f"{sl.chips // sl.hosts} chips per host; HBM {hbm / GIB:g} GiB per chip "
          f"({t.hbm_source})")
    return out


def _train_memory(t: _Target, per_chip: int) -> tuple[Compiled, int]:
    """The train step's figures and the prefetched batches' bytes per chip (0 if refused)."""
    p = t.programs(per_chip * t.tpu_slice.chips)
    c = t.compile(p.train_step, p.state, p.train_batch)
    if c.out_of_memory:
        t.log(f"  per-chip batch {per_chip}: train step does not fit, "
              f"{memory_line('', c, t.hbm).split(': ', 1)[1]}")
        return c, 0
    t.log(f"  per-chip batch {per_chip}: train step {format_bytes(c.total)} per chip, "
          f"{100 * c.total / t.hbm:.1f} % of HBM before prefetched batches (compiled in "
          f"{c.seconds:.1f} s)")
    return c, t.prefetch_bytes(p)


def _search(t: _Target, cache: dict[int, Compiled], out: dict) -> Search:
    """`search_max_batch` over train-step compiles, each kept in `cache`; figures to `out`."""
    recipe, chips = int(t.config.batch_size), t.tpu_slice.chips

    def measure(n):
        cache[n], extra = _train_memory(t, n)
        return search_bytes(cache[n], extra, t.hbm)
    hint = recipe // chips if recipe % chips == 0 and recipe >= 2 * chips else 8
    t.log(f"searching the largest per-chip batch (linear fit from per-chip 1 and {hint}):")
    search = search_max_batch(measure, t.hbm, hint=hint)
    out["max_batch_per_chip"] = search.largest
    out["max_batch_predicted"] = search.predicted
    out["max_batch_compiles"] = {str(k): v for k, v in search.measured.items()}
    out["max_batch_compile_seconds"] = {str(k): cache[k].seconds for k in search.measured}
    if hint in cache:
        out["hint_per_chip"] = hint
        out["hint_total_bytes"] = cache[hint].total
    return search


def _nothing_fits(t: _Target, c: Compiled, out: dict) -> dict:
    """The end of a search where not even per-chip batch 1 fits (`c`)."""
    t.log(memory_line("train step (per-chip batch 1)", c, t.hbm))
    t.log("largest per-chip batch that fits: 0 (not even one clip per chip)")
    t.log("fits: no")
    out["fits"] = False
    return out


def _log_batches(t: _Target, p: Programs, global_batch: int) -> None:
    """Logs the train batch (global, per chip, per host, clip shape) and the eval batch."""
    sl = t.tpu_slice
    per_chip, per_host = global_batch // sl.chips, global_batch // sl.hosts
    frames, side, _ = p.host_clip
    aug = (f"; the device augments ({p.augment}) to {p.input_shape[1]}x{p.input_shape[2]}"
           if p.augment else "")
    t.log(f"batch: global {global_batch} clips, {per_chip} per chip, {per_host} per host; "
          f"train clips {frames}x{side}x{side}x3 uint8{aug}")
    t.log(f"eval batch: global {p.eval_batch_size}, {p.eval_batch_size // sl.chips} per chip, "
          f"{p.views} view(s) per clip")


def _train_figures(t: _Target, p: Programs, train_c: Compiled, global_batch: int,
                   out: dict) -> bool:
    """Logs the train step's compile, FLOPs, HBM and prefetch; whether it fits."""
    sl, hbm = t.tpu_slice, t.hbm
    out.update(global_batch=global_batch, per_chip_batch=global_batch // sl.chips,
               per_host_batch=global_batch // sl.hosts, train_compile_s=train_c.seconds,
               train=dataclasses.asdict(train_c), train_total_bytes=train_c.total)
    t.log(f"train step: compiled in {train_c.seconds:.1f} s")
    _log_flops(t, p, global_batch, out)
    t.log(memory_line("train step", train_c, hbm))
    # `train` puts the next `prefetch_to_device` batches on the devices while
    # a step runs: HBM beside the step's own arguments.
    prefetch = t.prefetch_bytes(p)
    out["prefetch_bytes"] = prefetch
    if prefetch:
        t.log(f"  + {t.prefetched} batches prefetched to the devices "
              f"(config.prefetch_to_device): {format_bytes(prefetch)} -> "
              f"{format_bytes(train_c.total + prefetch)}"
              f" ({100 * (train_c.total + prefetch) / hbm:.1f} %)")
    return train_c.total + prefetch <= hbm and not train_c.out_of_memory


def _log_flops(t: _Target, p: Programs, global_batch: int, out: dict) -> None:
    """Logs XLA's FLOPs per training clip, counted on the step's unrolled lowering.

    Not the compiled program's count: for a step that scans its blocks that
    misses all but one loop iteration (`flops.unrolled_flops`).
    """
    from audfer_jax import flops as flops_lib  # pylint: disable=g-import-not-at-top
    with quiet_stderr(t.quiet):
        total = flops_lib.unrolled_flops(p.train_step, p.state, p.train_batch)
    if not total:
        t.log("train step FLOPs: n/a (no cost analysis)")
        return
    per_clip = total / global_batch
    out["flops_per_clip"] = per_clip
    t.log(f"train step: {per_clip:.3g} FLOPs per clip (XLA cost analysis of the step's "
          f"lowering with its block loop unrolled; forward, backward and update)")


def _eval_figures(t: _Target, p: Programs, out: dict) -> bool:
    """Compiles the eval step; logs its compile and HBM; whether it fits."""
    eval_c = t.compile(p.eval_step, p.state, p.eval_batch)
    out.update(eval_compile_s=eval_c.seconds, eval=dataclasses.asdict(eval_c),
               eval_total_bytes=eval_c.total)
    t.log(f"eval step: compiled in {eval_c.seconds:.1f} s")
    t.log(memory_line("eval step", eval_c, t.hbm))
    return eval_c.total <= t.hbm and not eval_c.out_of_memory


def _largest_line(search: Search, cache: dict[int, Compiled], hbm: float) -> str:
    """The search's result: the largest size, its bytes, and why the next one fails."""
    nxt = search.largest + 1
    if nxt in cache and cache[nxt].out_of_memory:
        needs = f", needs {format_bytes(cache[nxt].required)}" if cache[nxt].required else ""
        edge = f"; per-chip {nxt}: XLA:TPU refused it{needs}"
    elif nxt in search.measured:
        edge = f"; per-chip {nxt}: {format_bytes(search.measured[nxt])} does not"
    else:
        edge = ""
    return (f"largest per-chip batch that fits: {search.largest} (train step and prefetched "
            f"batches {format_bytes(search.measured[search.largest])} of {hbm / GIB:g} GiB"
            f"{edge}; first linear fit predicted {search.predicted}; "
            f"{len(search.measured)} compiles)")
