"""Run with 8 fake CPU devices (conftest.multidevice_env).

The same 3 train steps under (a) jit on an 8-device mesh, (b) pmap over 8
devices with explicit psum/pmean, (c) jit on 1 device give the same
parameters and BatchNorm statistics: max |x - y| / max(1, max |x|) per leaf
below 1e-5 (float32 sums in a different order; measured 0 for pmap vs jit
and about 1e-7 for 8 vs 1 devices). The batches hold padding (`mask` 0) and clips without AU
labels unevenly spread over the devices, so a mean of per-device means would
differ. A BatchNorm + dropout model (SGD) is compared between (a) and (c) only:
under pmap BatchNorm normalises per device (documented in parallel.py).
"""

import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import _train_fakes as fakes  # noqa: E402

from audfer_jax import steps  # noqa: E402
from audfer_jax import au, optim, parallel  # noqa: E402

TOL = 1e-5


def batches(n=3):
    dc = fakes.default_data_config()
    out = []
    for i, b in enumerate(fakes.create_train_dataset(dict(dc, num_train=48), global_batch_size=16,
                                                     seed=1, epoch=0)):
        b = {k: v for k, v in b.items() if k != "index"}
        b["mask"][[1, 2, 3, 15]] = 0          # device 0 keeps 0 of 2 clips, device 1 1 of 2
        b["au_mask"][[4, 5, 9]] = 0
        out.append(b)
    return out[:n]


def run(model, strategy, devices, data, **overrides):
    cfg = fakes.micro_config(**overrides)
    mesh = parallel.make_mesh(devices)
    tx, schedule = optim.make_optimizer(cfg.optim, steps.abstract_params(model, (8, 32, 32)),
                                        steps_per_epoch=3, num_epochs=1, global_batch_size=16)
    state = steps.create_train_state(model, tx, (8, 32, 32), 0, mesh)
    step = steps.make_train_step(model, cfg, tx=tx, schedule=schedule, prior=au.prior("dfew"),
                                 pos_weight=au.pos_weight("dfew", "global"), lam=0.25,
                                 num_classes=7)
    losses = []
    if strategy == "jit":
        f = parallel.jit_step(step, mesh)
        for b in data:
            state, m = f(state, parallel.global_batch(b, mesh))
            losses.append(float(m["loss"]))
        return jax.device_get({"p": state.params, "s": state.batch_stats}), losses
    f = parallel.pmap_step(step)
    state = parallel.to_pmap_state(state, devices)
    for b in data:
        state, m = f(state, parallel.to_pmap_batch(b, len(devices)))
        assert np.all(np.asarray(m["loss"]) == np.asarray(m["loss"])[0])
        losses.append(float(m["loss"][0]))
    host = parallel.from_pmap_state(state)
    return {"p": host.params, "s": host.batch_stats}, losses


def maxdiff(a, b):
    """Largest leaf-wise max |x - y| / max(1, max |x|)."""
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))
                     / max(1.0, float(np.max(np.abs(np.asarray(x))))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def main():
    assert jax.device_count() == 8, jax.devices()
    data = batches()
    devs = jax.devices()
    ln = fakes.MicroModel(num_classes=7, norm="layer")
    (a, la), (b, lb), (c, lc) = (run(ln, "jit", devs, data), run(ln, "pmap", devs, data),
                                 run(ln, "jit", devs[:1], data))
    d_pmap, d_one = maxdiff(a, b), maxdiff(a, c)
    print(f"layernorm: max|jit8 - pmap8| = {d_pmap:.3g}, max|jit8 - jit1| = {d_one:.3g}; "
          f"losses {la} {lb} {lc}")
    assert d_pmap < TOL and d_one < TOL, (d_pmap, d_one)
    np.testing.assert_allclose(la, lb, rtol=1e-5)
    np.testing.assert_allclose(la, lc, rtol=1e-5)
    assert maxdiff(a, run(ln, "jit", devs, data[:1])[0]) > 1e-4   # the steps do move

    bn = fakes.MicroModel(num_classes=7, norm="batch", dropout=0.2)
    # SGD here: Adam divides by sqrt(v) and so magnifies the rounding noise of
    # near-zero gradients (BatchNorm makes several) into lr-sized steps.
    sgd = {"optim.optimizer": "sgd", "optim.lr": 0.1}
    (a, la), (c, lc) = run(bn, "jit", devs, data, **sgd), run(bn, "jit", devs[:1], data, **sgd)
    d = maxdiff(a, c)
    print(f"batchnorm+dropout (sgd): max rel |jit8 - jit1| = {d:.3g}; losses {la} {lc}")
    assert d < TOL, d
    print("OK")


if __name__ == "__main__":
    main()
