"""The accelerator path of the three backbones (tiny variants): bfloat16
compute, rematerialisation, dot_product_attention."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from audfer_jax import models
from audfer_jax.models import layers
from model_testing import numpy_variables

NAMES = ["former_dfer_tiny", "m3dfel_tiny", "mae_dfer_tiny"]


def _clips(name, batch=2, seed=0):
    t, h, w = models.default_input_shape(name)
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.integers(0, 256, (batch, t, h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_eval_logits_close_to_float32(name):
    clips = _clips(name)
    f32 = models.get_model(name)
    bf16 = models.get_model(name, dtype="bfloat16")
    assert bf16.dtype == jnp.bfloat16
    variables = numpy_variables(f32, clips, train=False)
    want = jax.jit(lambda v, c: f32.apply(v, c, train=False))(variables, clips)
    got = jax.jit(lambda v, c: bf16.apply(v, c, train=False))(variables, clips)
    # Outputs stay float32; parameters are the same float32 arrays.
    assert got.logits.dtype == jnp.float32 and got.au_logits.dtype == jnp.float32
    # bfloat16 keeps 8 mantissa bits (relative step 2^-8 = 0.4 %); through a
    # few dozen layers the logits drift by a few percent of their range.
    for a, b in ((want.logits, got.logits), (want.au_logits, got.au_logits)):
        a, b = np.asarray(a), np.asarray(b)
        scale = np.abs(a).max() + 1e-3
        assert np.abs(a - b).max() <= 0.1 * scale, (np.abs(a - b).max(), scale)
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.98


@pytest.mark.parametrize("name", NAMES)
def test_remat_policy_and_the_old_remat_switch(name):
    for policy in ("none", "full", "dots_with_no_batch_dims_saveable", "dots_saveable"):
        assert models.get_model(name, remat_policy=policy).remat_policy == policy
    # `remat=True/False` (configs and code from before remat_policy).
    assert models.get_model(name, remat=True).remat_policy == "full"
    assert models.get_model(name, remat=False).remat_policy == "none"
    with pytest.raises(ValueError, match="remat_policy must be one of"):
        models.get_model(name, remat_policy="everything")


def test_unknown_dtype_is_an_error():
    with pytest.raises(ValueError, match="dtype"):
        models.get_model("former_dfer_tiny", dtype="int8")


def _grads(model, variables, clips, labels):
    extra = {k: v for k, v in variables.items() if k != "params"}

    def loss_fn(params):
        out, _ = model.apply({"params": params, **extra}, clips, train=True,
                             rngs={"dropout": jax.random.PRNGKey(7)}, mutable=list(extra))
        return optax.softmax_cross_entropy_with_integer_labels(out.logits, labels).mean()

    return jax.jit(jax.value_and_grad(loss_fn))(variables["params"])


@pytest.mark.parametrize("name", NAMES)
def test_remat_gives_the_same_loss_and_gradients(name):
    clips = _clips(name)
    labels = jnp.asarray([1, 4])
    plain, remat = models.get_model(name), models.get_model(name, remat_policy="full")
    variables = numpy_variables(plain, clips, train=False)
    # Same parameter tree: checkpoints load with either setting.
    assert (jax.tree.structure(numpy_variables(remat, clips, train=False))
            == jax.tree.structure(variables))
    loss0, g0 = _grads(plain, variables, clips, labels)
    loss1, g1 = _grads(remat, variables, clips, labels)
    np.testing.assert_allclose(float(loss1), float(loss0), rtol=1e-6)
    # Recomputation may fuse differently: equal up to float32 rounding, i.e.
    # far below the size of the leaf's gradient.
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        a, b = np.asarray(a), np.asarray(b)
        assert np.abs(a - b).max() <= 1e-3 * np.abs(a).max() + 1e-7


@pytest.mark.parametrize("implementation", ["fused", "einsum", "cpu", None])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dot_product_attention_equals_explicit_softmax(dtype, implementation):
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal(s).astype(np.float32)
               for s in ((2, 3, 5, 4, 8), (2, 3, 7, 4, 8), (2, 3, 7, 4, 8)))
    scale = 8 ** -0.5
    # NumPy reference: softmax(q k^T * scale) v per head, in float64.
    logits = np.einsum("abnhd,abmhd->abhnm", q, k).astype(np.float64) * scale
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    want = np.einsum("abhnm,abmhd->abnhd", w, v)
    got = layers.dot_product_attention(*(jnp.asarray(t, dtype) for t in (q, k, v)), scale,
                                       implementation)
    assert got.dtype == dtype and got.shape == want.shape
    tol = 1e-5 if dtype == jnp.float32 else 3e-2
    np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=tol, atol=tol)


def test_fused_and_einsum_attention_gradients_agree():
    rng = np.random.default_rng(1)
    q, k, v = (jnp.asarray(rng.standard_normal((2, 6, 2, 8)), jnp.float32) for _ in range(3))

    def grads(impl):
        return jax.grad(lambda *a: jnp.sum(layers.dot_product_attention(*a, 0.3, impl) ** 2),
                        argnums=(0, 1, 2))(q, k, v)

    for impl in ("einsum", "cpu"):
        for a, b in zip(grads("fused"), grads(impl)):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="implementation"):
        layers.dot_product_attention(q, k, v, 0.3, "flash")


def test_bfloat16_training_reduces_the_loss_like_float32():
    name = "former_dfer_tiny"
    clips, labels = _clips(name, batch=4), jnp.asarray([0, 1, 2, 3])
    tx = optax.adam(1e-3)
    losses = {}
    for dtype in ("float32", "bfloat16"):
        model = models.get_model(name, dtype=dtype)
        variables = numpy_variables(model, clips, train=False)

        @jax.jit
        def step(params, stats, opt_state, model=model):
            def loss_fn(p):
                out, new = model.apply({"params": p, "batch_stats": stats}, clips, train=True,
                                       mutable=["batch_stats"])
                return optax.softmax_cross_entropy_with_integer_labels(
                        out.logits, labels).mean(), new["batch_stats"]
            (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
            # Parameters, gradients and optimizer state stay float32.
            assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), new_stats, opt_state, loss

        params, stats = variables["params"], variables["batch_stats"]
        opt_state = tx.init(params)
        trace = []
        for _ in range(6):
            params, stats, opt_state, loss = step(params, stats, opt_state)
            trace.append(float(loss))
        losses[dtype] = trace
    for trace in losses.values():
        assert trace[-1] < 0.7 * trace[0], losses
    # bfloat16 follows the float32 trajectory.
    np.testing.assert_allclose(losses["bfloat16"], losses["float32"], rtol=0.1, atol=0.05)


# ---------------------------------------------------------------------------
# Memory that follows dtype and remat (issue 29): what the backward pass keeps.
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_layer_norm_equals_flax_values_and_gradients(dtype):
    """`layers.LayerNorm` computes nn.LayerNorm(use_fast_variance=False)'s
    values and gradients (its backward is written out)."""
    from flax import linen as nn
    rng = np.random.default_rng(0)
    x = jnp.asarray(3.0 + 2.0 * rng.standard_normal((4, 7, 32)), dtype)
    params = {"scale": jnp.asarray(1 + 0.3 * rng.standard_normal(32), jnp.float32),
              "bias": jnp.asarray(0.2 * rng.standard_normal(32), jnp.float32)}
    cot = jnp.asarray(rng.standard_normal((4, 7, 32)), jnp.float32)
    ours = layers.LayerNorm(epsilon=1e-6, dtype=dtype)
    ref = nn.LayerNorm(epsilon=1e-6, use_fast_variance=False, dtype=dtype,
                       param_dtype=jnp.float32)

    def run(module):
        def f(p, x):
            y = module.apply({"params": p}, x)
            return jnp.sum(y.astype(jnp.float32) * cot), y
        (_, y), grads = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(params, x)
        return y, grads

    (y0, g0), (y1, g1) = run(ref), run(ours)
    assert y1.dtype == dtype and g1[1].dtype == dtype
    tol = 1e-5 if dtype == jnp.float32 else 1e-2
    np.testing.assert_allclose(np.asarray(y1, np.float32), np.asarray(y0, np.float32),
                               rtol=tol, atol=tol)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1), strict=True):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        assert np.abs(a - b).max() <= tol * (np.abs(a).max() + 1), (np.abs(a - b).max())
    assert jax.tree.structure(ours.init(jax.random.key(0), x)) == jax.tree.structure(
            ref.init(jax.random.key(0), x))


def test_tpu_forms_compute_the_same_values():
    """The forms traced for TPU (GELU between optimisation barriers, the
    recomputed attention) give the CPU forms' values and gradients."""
    from audfer_jax.models import mae_dfer, platform
    model = mae_dfer.mae_dfer_tiny(depth=2)
    clips = _clips("mae_dfer_tiny")
    variables = numpy_variables(model, clips, train=False)

    def loss(v):
        return jnp.sum(model.apply(v, clips, train=False).logits ** 2)

    want = jax.jit(jax.value_and_grad(loss))(variables)
    with platform.target("tpu"), platform.record_forms() as forms:
        got = jax.jit(jax.value_and_grad(loss))(variables)   # traced for TPU, run on CPU
    assert ("fused_attention", "tpu") in forms
    np.testing.assert_allclose(float(got[0]), float(want[0]), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(want[1]), jax.tree.leaves(got[1]), strict=True):
        a, b = np.asarray(a), np.asarray(b)
        assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max() + 1e-7
    x = jnp.linspace(-4, 4, 101)
    with platform.target("tpu"):
        np.testing.assert_array_equal(jax.jit(lambda x: layers.gelu(x, False))(x),
                                      jax.nn.gelu(x, approximate=False))


SIZES = {"f32": 4, "bf16": 2, "f16": 2}


def _saved_bytes(model, clips, params):
    """Bytes of the activations the backward pass keeps (`print_saved_residuals`
    of the training loss traced for TPU), parameters and inputs excluded."""
    import contextlib
    import io
    import re
    from jax.ad_checkpoint import print_saved_residuals
    from audfer_jax.models import platform

    def loss(p):
        out = model.apply({"params": p}, clips, train=True, rngs={"dropout": jax.random.key(1)})
        return jnp.sum(out.logits)

    text = io.StringIO()
    with platform.target("tpu"), contextlib.redirect_stdout(text):
        print_saved_residuals(loss, params)
    total = 0
    for line in text.getvalue().splitlines():
        m = re.match(r"(\w+)\[([\d,]*)\] (.*)", line)
        if m and "argument" not in m.group(3) and m.group(1) in SIZES:
            total += SIZES[m.group(1)] * int(np.prod([int(d) for d in m.group(2).split(",")
                                                      if d]))
    return total


def test_mae_dfer_saved_activations_follow_dtype_and_remat():
    """MAE-DFER's saved activations (tiny, 4 blocks, 8 clips): bfloat16 keeps
    at most 0.6x float32's bytes (float32 LayerNorm and softmax intermediates
    once made it 0.82x), `full` remat under 0.2x of `none`, and a policy that
    keeps matrix products lies between."""
    from audfer_jax.models import mae_dfer
    clips = _clips("mae_dfer_tiny", batch=8)
    base = mae_dfer.mae_dfer_tiny(depth=4)
    params = jax.eval_shape(lambda: base.init(jax.random.key(0), clips, train=False))["params"]
    saved = {(dtype, policy): _saved_bytes(
                     base.clone(dtype=jnp.dtype(dtype), remat_policy=policy), clips, params)
             for dtype in ("float32", "bfloat16")
             for policy in ("none", "full", "dots_with_no_batch_dims_saveable")}
    for policy in ("none", "full", "dots_with_no_batch_dims_saveable"):
        assert saved["bfloat16", policy] <= 0.6 * saved["float32", policy], (policy, saved)
    for dtype in ("float32", "bfloat16"):
        none, full = saved[dtype, "none"], saved[dtype, "full"]
        dots = saved[dtype, "dots_with_no_batch_dims_saveable"]
        assert full < 0.2 * none and full < dots < none, (dtype, saved)
