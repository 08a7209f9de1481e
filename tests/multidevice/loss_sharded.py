"""Run with 8 fake CPU devices (see conftest.multidevice_env): the AU-DFER loss
of a batch sharded over 8 devices equals the 1-device loss, under jit with
shardings and under shard_map with the explicit psum of numerators and
denominators (`axis_name`)."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from audfer_jax import au, losses


def main():
    assert jax.device_count() == 8, jax.devices()
    rng = np.random.default_rng(0)
    b = 32
    logits = rng.normal(size=(b, 7)).astype(np.float32)
    z = rng.normal(size=(b, 18)).astype(np.float32) * 2
    y = rng.integers(0, 7, b).astype(np.int32)
    a = (rng.random((b, 18)) < 0.3).astype(np.float32)
    # Unequal valid counts per device: padding and clips without AU labels.
    mask = np.ones(b, np.float32)
    mask[[3, 4, 5, 30]] = 0
    au_mask = np.ones(b, np.float32)
    au_mask[[0, 1, 2, 9, 17]] = 0
    prior, pw = au.prior("dfew"), au.pos_weight("dfew", "distinct")

    def f(logits, z, y, a, mask, au_mask, axis_name=None):
        return losses.audfer_loss(logits, z, y, a, prior, pw, label_smoothing=0.1,
                                  mask=mask, au_mask=au_mask, axis_name=axis_name)[1]

    args = (logits, z, y, a, mask, au_mask)
    with jax.default_device(jax.devices()[0]):
        ref = {k: float(v) for k, v in jax.jit(f)(*args).items()}

    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sharded = [jax.device_put(x, NamedSharding(mesh, P("data"))) for x in args]
    got = {k: float(v) for k, v in jax.jit(f)(*sharded).items()}

    per_device = jax.shard_map(lambda *xs: f(*xs, axis_name="data"), mesh=mesh,
                               in_specs=(P("data"),) * 6, out_specs=P())
    got_sm = {k: float(v) for k, v in jax.jit(per_device)(*sharded).items()}

    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-6, err_msg=f"jit {k}")
        np.testing.assert_allclose(got_sm[k], ref[k], rtol=1e-6, err_msg=f"shard_map {k}")
    # A mean of per-device means would differ here (unequal valid counts).
    dev_means = [float(losses.cross_entropy(logits[i:i + 4], y[i:i + 4], 0.1, mask[i:i + 4]))
                 for i in range(0, b, 4)]
    assert abs(np.mean(dev_means) - ref["ce"]) > 1e-4
    print("OK", ref)


if __name__ == "__main__":
    main()
