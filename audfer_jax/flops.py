"""Compiled FLOPs, achieved FLOP/s and model FLOPs utilisation (MFU).

    compiled = jax.jit(step).lower(state, batch).compile()
    flops = step_flops(compiled)                 # per device, per step
    mfu(flops, seconds_per_step, jax.devices()[0].device_kind)

`step_flops` reads XLA's cost analysis of the compiled program: the floating
point operations XLA counts for the program one device runs (under SPMD
partitioning that is the per-device share). A multiply-add counts 2. It is the
work actually compiled, so activation recomputation (`remat`) counts again,
and it includes the optimizer update and the losses.

XLA counts the body of a loop (`lax.scan`, `while`) once, not once per
iteration, so a program that scans its blocks (MAE-DFER's `scan_blocks`) would
be under-counted; `uncounted_reason` says so, and callers print that instead
of a wrong figure.

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
    """FLOPs of one call of a compiled program, from XLA's cost analysis.

    Args:
        compiled: a `jax.stages.Compiled` (`jax.jit(f).lower(...).compile()`).

    Returns:
        The `flops` entry of `compiled.cost_analysis()` (per device under SPMD
        partitioning), or None when the backend reports no cost analysis.
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


def uncounted_reason(model: Any) -> str | None:
    """Why `step_flops` would mis-count the train step of `model`, or None.

    Args:
        model: the Flax module the step applies (any object).

    Returns:
        One line to print instead of FLOPs and MFU when `model.scan_blocks` is
        true (XLA's cost analysis counts the scanned blocks once, e.g. 71.9
        instead of 232.5 MFLOP on a depth-4 toy MAE-DFER); else None.
    """
    if getattr(model, "scan_blocks", False):
        return ("FLOPs/MFU not counted because scan_blocks is on (XLA counts a scanned "
                "loop body once; set scan_blocks=False for the FLOPs/MFU report)")
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
