"""FLOPs of a train step, achieved FLOP/s and model FLOPs utilisation (MFU).

    flops = unrolled_flops(jitted_step, state, batch)   # whole step, all devices
    mfu(flops / jax.device_count(), seconds_per_step, jax.devices()[0].device_kind)

XLA's cost analysis counts the floating point operations of a program (a
multiply-add counts 2); it includes the optimizer update, the losses and any
activation recomputation (`remat`) the program does. It counts the body of a
loop (`lax.scan`, `while`) once, not once per iteration, so the count of
MAE-DFER's train step, whose stacked blocks run as one scan, would miss 14 of
its 15 scanned blocks. `unrolled_flops` therefore counts a twin of the step:
the same function traced inside `models.platform.unrolled_scans()`, where the
stacked blocks are written out as straight-line code (same parameters and
values), and only lowered, never compiled (lowering the full-size step takes
seconds; compiling the unrolled program took 627 s on v5e:4x4). The lowered
program is the global computation before SPMD partitioning, so its count is
the whole batch's. `step_flops` reads the count of an already compiled (per
device) or lowered program as it is, for programs without scans.

MFU = achieved FLOP/s per device / the device's peak dense bfloat16 FLOP/s
(`PEAK_BF16_FLOPS`; override with `peak_flops=`). CPUs have no entry: their
MFU is reported as unknown ("n/a").
"""

from __future__ import annotations

from typing import Any, Mapping

# Peak dense (no sparsity) bfloat16 matrix throughput per device, FLOP/s.
# Sources, vendor datasheets:
# * NVIDIA H100 / H200: "NVIDIA H100 Tensor Core GPU" datasheet and "NVIDIA
#   H200 Tensor Core GPU" datasheet: BF16 Tensor Core 1,979 TFLOPS (SXM) /
#   1,513 TFLOPS (PCIe) / 1,671 TFLOPS (NVL) *with sparsity*; dense is half.
# * NVIDIA A100: "NVIDIA A100 Tensor Core GPU" datasheet: BF16 312 TFLOPS dense
#   (624 with sparsity), both SXM and PCIe.
# * NVIDIA B200: "NVIDIA DGX B200" / HGX B200 datasheet: 2.25 PFLOPS dense
#   BF16 per GPU (4.5 PFLOPS with sparsity).
# * NVIDIA L4: "NVIDIA L4 Tensor Core GPU" datasheet: 242 TFLOPS BF16 with
#   sparsity (121 dense).
# * Google Cloud TPU system architecture pages (cloud.google.com/tpu/docs/
#   v2 ... v6e): peak bf16 per chip v2 45, v3 123, v4 275, v5e 197, v5p 459,
#   v6e (Trillium) 918 TFLOPS.
# Keys are lowercase substrings of `jax.Device.device_kind`; the first match
# in this order wins, so more specific names come first.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("h100 pcie", 756e12),
    ("h100 nvl", 835.5e12),
    ("h100", 989.5e12),
    ("h200", 989.5e12),
    ("gh200", 989.5e12),
    ("b200", 2250e12),
    ("a100", 312e12),
    ("l4", 121e12),
    ("tpu v6 lite", 918e12),     # v6e (Trillium)
    ("tpu v6e", 918e12),
    ("tpu v5 lite", 197e12),     # v5e
    ("tpu v5e", 197e12),
    ("tpu v5p", 459e12),
    ("tpu v5", 459e12),          # v5p reports "TPU v5"
    ("tpu v4", 275e12),
    ("tpu v3", 123e12),
    ("tpu v2", 45e12),
)


def step_flops(compiled: Any) -> float | None:
    """FLOPs of one call of a compiled or lowered program, from XLA's cost analysis.

    A loop body counts once (module docstring): for a step that scans, use
    `unrolled_flops`.

    Args:
        compiled: a `jax.stages.Compiled` (`jax.jit(f).lower(...).compile()`)
            or `jax.stages.Lowered`.

    Returns:
        The `flops` entry of `compiled.cost_analysis()` (per device under SPMD
        partitioning; a lowering's is the global program's), or None when the
        backend reports no cost analysis.
    """
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # noqa: BLE001  (backends without a cost model raise)
        return None
    if isinstance(analysis, (list, tuple)):      # older JAX: one dict per program
        analysis = analysis[0] if analysis else None
    if not isinstance(analysis, Mapping) or "flops" not in analysis:
        return None
    value = float(analysis["flops"])
    return value if value > 0 else None


def unrolled_flops(jitted: Any, *args: Any) -> float | None:
    """XLA's FLOPs of one call of `jitted(*args)`, counted with every scan unrolled.

    Traces the function under `jitted` (a `jax.jit` of it, or the function
    itself) inside `models.platform.unrolled_scans()` in a fresh `jax.jit`
    (so nothing is taken from the jit cache of the program that runs) and
    reads the cost analysis of its lowering; nothing is compiled.

    Args:
        jitted: the step, `jax.jit`-wrapped or not (e.g. `parallel.jit_step(fn,
            mesh)`); its shardings and donation are not needed for counting.
        *args: its arguments: arrays or `jax.ShapeDtypeStruct`s (sharded or not).

    Returns:
        FLOPs of the whole call over all devices (the lowered program is the
        global computation), or None when the backend has no cost analysis.
    """
    import jax  # pylint: disable=g-import-not-at-top
    from audfer_jax.models import platform  # pylint: disable=g-import-not-at-top
    # A jitted function (it has `lower`) is unwrapped one level: the function
    # jit was given, e.g. `parallel.jit_step`'s platform-target wrapper.
    fn = jitted.__wrapped__ if hasattr(jitted, "lower") else jitted

    def unrolled(*a):
        with platform.unrolled_scans():
            return fn(*a)

    return lowered_flops(jax.jit(unrolled).lower(*args))


def lowered_flops(lowered: Any) -> float | None:
    """FLOPs of a lowered program (the global computation), from XLA's HLO cost analysis.

    `Lowered.cost_analysis()` is not available on PJRT plug-in backends such
    as libtpu's compile-only client (`audfer-jax compile`); there the same
    analysis (`HloCostAnalysis`, which counts from the HLO's shapes alone) runs
    on the CPU client instead.

    Args:
        lowered: a `jax.stages.Lowered`.

    Returns:
        The count, or None when neither gives one.
    """
    value = step_flops(lowered)
    if value is not None:
        return value
    import jax  # pylint: disable=g-import-not-at-top
    try:
        from jax._src.lib import _jax  # pylint: disable=g-import-not-at-top
        module = lowered.compiler_ir("hlo").as_hlo_module()
        analysis = _jax.hlo_module_cost_analysis(jax.devices("cpu")[0].client, module)
    except Exception:  # noqa: BLE001  (a private JAX entry point: absent in other versions)
        return None
    value = float(analysis.get("flops", 0.0))
    return value if value > 0 else None


def uncounted_reason(model: Any) -> str | None:
    """Why `step_flops` of the compiled or lowered step of `model` would mis-count, or None.

    Args:
        model: the Flax module the step applies (any object).

    Returns:
        One line to print instead of FLOPs and MFU when the program loops over
        `model`'s blocks (`model.scan_blocks`, MAE-DFER's default): count with
        `unrolled_flops` instead. None otherwise.
    """
    if getattr(model, "scan_blocks", False):
        return ("FLOPs/MFU not counted from this program: it scans its blocks and XLA counts a "
                "loop body once (flops.unrolled_flops counts them)")
    return None


def peak_flops_for(device_kind: str) -> float | None:
    """Peak dense bfloat16 FLOP/s of one device of that kind, or None (CPU, unknown).

    Args:
        device_kind: `jax.Device.device_kind`, e.g. `NVIDIA H100 80GB HBM3`, `TPU v4`.
    """
    kind = device_kind.lower()
    for key, value in PEAK_BF16_FLOPS:
        if key in kind:
            return value
    return None


def mfu(flops_per_step: float | None, step_seconds: float, device_kind: str | None = None,
        peak_flops: float | None = None) -> float | None:
    """Model FLOPs utilisation of one device, as a fraction in [0, 1].

    Args:
        flops_per_step: per-device FLOPs of one step (`step_flops`).
        step_seconds: wall-clock seconds per step.
        device_kind: looked up in `PEAK_BF16_FLOPS` when `peak_flops` is None.
        peak_flops: peak FLOP/s of one device; overrides the table.

    Returns:
        `flops_per_step / step_seconds / peak`, or None when the FLOPs or the
        peak are unknown (e.g. on CPU).

    Raises:
        ValueError: `step_seconds <= 0` or `peak_flops <= 0`.
    """
    if step_seconds <= 0:
        raise ValueError(f"step_seconds must be > 0, got {step_seconds}")
    if peak_flops is not None and peak_flops <= 0:
        raise ValueError(f"peak_flops must be > 0, got {peak_flops}")
    peak = peak_flops if peak_flops is not None else (
        peak_flops_for(device_kind) if device_kind else None)
    if flops_per_step is None or peak is None:
        return None
    return flops_per_step / step_seconds / peak


def efficiency(flops_per_step: float | None, step_seconds: float, clips_per_step: int,
               device_kind: str | None = None, peak_flops: float | None = None,
               num_devices: int = 1) -> dict[str, float | None]:
    """The figures `bench train` and the training log print.

    Args:
        flops_per_step: per-device FLOPs of one step (`step_flops`).
        step_seconds: seconds per step.
        clips_per_step: global batch size (all devices).
        device_kind, peak_flops: see `mfu`.
        num_devices: devices sharing the step (the FLOPs are per device).

    Returns:
        `{"flops_per_clip", "flops_per_s" (per device), "mfu"}`; each None when
        unknown.
    """
    if flops_per_step is None:
        return {"flops_per_clip": None, "flops_per_s": None, "mfu": None}
    return {"flops_per_clip": flops_per_step * num_devices / clips_per_step,
            "flops_per_s": flops_per_step / step_seconds,
            "mfu": mfu(flops_per_step, step_seconds, device_kind, peak_flops)}


def format_efficiency(e: Mapping[str, float | None]) -> str:
    """`FLOPs/clip 1.23e+11, achieved 4.5e+11 FLOP/s/device, MFU 12.3 %` (or n/a)."""
    def fmt(v, unit=""):
        return "n/a" if v is None else f"{v:.3g}{unit}"
    m = e.get("mfu")
    mfu_text = "n/a (no peak for this device; pass peak_flops)" if m is None else f"{100 * m:.1f} %"
    return (f"FLOPs/clip {fmt(e.get('flops_per_clip'))}, achieved "
            f"{fmt(e.get('flops_per_s'))} FLOP/s per device, MFU {mfu_text}")
