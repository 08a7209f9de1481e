"""Save a train-state-like tree on 8 devices, restore it on 1 (and vice versa).

`python checkpoint_reshard.py save DIR` (run with 8 fake devices) writes a
replicated tree and a batch-sharded array with known values through
`TrainCheckpointer`; `python checkpoint_reshard.py restore DIR` (run with 1
device) restores onto abstract targets carrying the current shardings and
checks every value bit for bit and the data position in the meta.
"""

import sys

import jax
import numpy as np

from audfer_jax import checkpoint as ckpt_lib
from audfer_jax import parallel


def expected():
    return {"params": {"w": np.arange(24, dtype=np.float32).reshape(4, 6) / 7,
                       "b": np.linspace(-1, 1, 6, dtype=np.float32)},
            "step": np.int32(12), "rng": np.array([0, 42], np.uint32),
            "sharded": np.arange(64, dtype=np.float32).reshape(16, 4) * 0.5}


def main(mode, directory):
    mesh = parallel.make_mesh()
    tree = expected()
    shardings = jax.tree.map(lambda _: parallel.replicated(mesh), tree)
    shardings["sharded"] = parallel.batch_sharded(mesh)
    ck = ckpt_lib.TrainCheckpointer(directory, extra_steps=[12])
    if mode == "save":
        assert jax.device_count() == 8
        state = jax.tree.map(jax.device_put, tree, shardings)
        assert len(state["sharded"].sharding.device_set) == 8
        assert ck.maybe_save(12, state, {"epoch": 3, "batch_in_epoch": 0})
    else:
        assert jax.device_count() == 1
        target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype,
                                                                sharding=s), tree, shardings)
        state, meta = ck.restore(target)
        assert meta == {"epoch": 3, "batch_in_epoch": 0}, meta
        for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(tree)):
            assert got.sharding.device_set == {jax.devices()[0]}
            np.testing.assert_array_equal(np.asarray(got), want)
    ck.close()
    print("OK", mode)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
