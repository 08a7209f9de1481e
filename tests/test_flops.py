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


# MAE-DFER tiny (embed 64, 2 heads, MLP 256, token grid 4x4x4 in 4 regions of
# 16 tokens, S = 17 with the region token), batch 2: the matrix products of one
# full LGBlock's forward pass, written out from the LGBlock docstring (a
# Dense [T, I] x [I, O] is 2*T*I*O FLOPs; attention 2*2*T1*T2*C per row set).
def _tiny_block_matmul_flops(b=2, n=4, s=17, c=64, hidden=256):
    rows = b * n * s                              # step 1 and the MLP: every token
    local = b * n * (s - 1)                       # step 3's queries
    return (4 * 2 * rows * c * c + b * n * 2 * 2 * s * s * c              # 1: local
            + 4 * 2 * b * n * c * c + b * 2 * 2 * n * n * c               # 2: global
            + 2 * 2 * local * c * c + 2 * 2 * b * n * c * c               # 3: q, proj; k, v
            + b * 2 * 2 * (local // b) * n * c                            # 3: attention
            + 2 * 2 * rows * c * hidden)                                  # 4: MLP


def _forward(model, clips):
    def fn(params):
        return model.apply({"params": params}, clips, train=False).logits
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), clips, train=False))["params"]
    return fn, params


def test_unrolled_flops_counts_every_scanned_block():
    from audfer_jax.models import mae_dfer
    clips = jnp.zeros((2, 8, 32, 32, 3), jnp.uint8)
    unrolled, looped = {}, {}
    for depth in (2, 3, 4):
        fn, params = _forward(mae_dfer.mae_dfer_tiny(depth=depth), clips)
        unrolled[depth] = flops.unrolled_flops(jax.jit(fn), params)
        looped[depth] = flops.lowered_flops(jax.jit(fn).lower(params))
        # The same count as the model built with scan_blocks=False.
        fn_u, _ = _forward(mae_dfer.mae_dfer_tiny(depth=depth, scan_blocks=False), clips)
        assert flops.lowered_flops(jax.jit(fn_u).lower(params)) == unrolled[depth]
    # Each added block adds one block's work (linear in depth) ...
    per_block = unrolled[3] - unrolled[2]
    assert unrolled[4] - unrolled[3] == pytest.approx(per_block, rel=1e-9)
    # ... which is the block's matrix products plus its norms, GELU and softmax.
    assert 1.0 < per_block / _tiny_block_matmul_flops() < 1.25
    # The loop's own count misses the added blocks (XLA counts a body once).
    assert looped[4] - looped[3] < 0.05 * per_block
    assert looped[4] < unrolled[4] - 1.5 * per_block


def test_lowered_flops_of_a_compile_only_tpu_program():
    """libtpu's compile-only client has no `Lowered.cost_analysis`: the count
    comes from the CPU client's analysis of the same HLO."""
    from audfer_jax.compilation import topologies
    try:
        sl = topologies.load_slice("v5e:2x2", "tpu")
    except ValueError as e:
        pytest.skip(f"no libtpu: {e}")
    sharding = jax.sharding.NamedSharding(jax.sharding.Mesh(sl.devices, ("d",)),
                                          jax.sharding.PartitionSpec())
    x = jax.ShapeDtypeStruct((64, 32), jnp.float32, sharding=sharding)
    y = jax.ShapeDtypeStruct((32, 16), jnp.float32, sharding=sharding)
    assert flops.lowered_flops(jax.jit(jnp.matmul).lower(x, y)) == 2 * 64 * 32 * 16
