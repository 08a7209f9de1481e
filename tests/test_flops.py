"""audfer_jax.flops: XLA FLOP counts, peak table and MFU."""

import jax
import jax.numpy as jnp
import pytest

from audfer_jax import flops


def test_step_flops_counts_a_matmul():
    # [M, K] @ [K, N]: M*N*K multiply-adds = 2*M*N*K FLOPs.
    m, k, n = 32, 64, 16
    compiled = jax.jit(jnp.matmul).lower(jnp.ones((m, k)), jnp.ones((k, n))).compile()
    assert flops.step_flops(compiled) == pytest.approx(2 * m * n * k, rel=0.01)


def test_step_flops_unknown_is_none():
    class NoCost:
        def cost_analysis(self):
            raise NotImplementedError

    class Empty:
        def cost_analysis(self):
            return [{}]

    assert flops.step_flops(NoCost()) is None and flops.step_flops(Empty()) is None


@pytest.mark.parametrize("kind, peak", [("NVIDIA H100 80GB HBM3", 989.5e12),
                                        ("NVIDIA H100 PCIe", 756e12),
                                        ("NVIDIA H200", 989.5e12),
                                        ("NVIDIA A100-SXM4-40GB", 312e12),
                                        ("TPU v4", 275e12), ("TPU v5 lite", 197e12),
                                        ("TPU v5p", 459e12), ("TPU v6 lite", 918e12),
                                        ("cpu", None)])
def test_peak_table(kind, peak):
    assert flops.peak_flops_for(kind) == peak


def test_mfu_and_efficiency():
    # 1e12 FLOPs in 0.01 s = 1e14 FLOP/s; against 312e12 -> 0.3205.
    assert flops.mfu(1e12, 0.01, "NVIDIA A100-SXM4-80GB") == pytest.approx(1e14 / 312e12)
    assert flops.mfu(1e12, 0.01, "cpu") is None
    assert flops.mfu(1e12, 0.01, "cpu", peak_flops=2e14) == pytest.approx(0.5)
    assert flops.mfu(None, 0.01, "TPU v4") is None
    with pytest.raises(ValueError, match="step_seconds"):
        flops.mfu(1.0, 0.0, "TPU v4")
    e = flops.efficiency(4e12, 0.5, clips_per_step=16, device_kind="TPU v4", num_devices=2)
    assert e["flops_per_clip"] == pytest.approx(4e12 * 2 / 16)
    assert e["flops_per_s"] == pytest.approx(8e12)
    assert e["mfu"] == pytest.approx(8e12 / 275e12)
    text = flops.format_efficiency(flops.efficiency(4e12, 0.5, 16, "cpu"))
    assert "MFU n/a" in text and "FLOPs/clip 2.5e+11" in text
