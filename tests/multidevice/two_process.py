"""One of two processes of a jax.distributed CPU run on 127.0.0.1.

`python two_process.py PROCESS_ID PORT WORKDIR` (both with the same PORT and
WORKDIR, each with 2 fake CPU devices: 4 devices in the mesh). Trains the
micro model for one epoch of 3 steps through `train_and_evaluate`
(`config.multihost`), then restores the final checkpoint and prints one JSON
line: the metrics and a checksum of this process's copy of the parameters,
which the parent compares between the processes.
"""

import json
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import _train_fakes as fakes  # noqa: E402


def main(process_id, port, workdir):
    from audfer_jax import checkpoint as ckpt_lib
    from audfer_jax import experiment, parallel, train
    cfg = fakes.micro_config(**{"data": dict(fakes.default_data_config(), num_train=24),
                                "num_epochs": 1})
    cfg.multihost = True
    cfg.coordinator_address = f"127.0.0.1:{port}"
    cfg.num_processes = 2
    cfg.process_id = process_id
    model = fakes.MicroModel(num_classes=7, norm="batch", dropout=0.1)
    result = train.train_and_evaluate(cfg, workdir, data=fakes, model=model)
    assert jax.process_count() == 2 and jax.device_count() == 4, jax.devices()
    with jax.set_mesh(parallel.make_mesh()):
        setup = experiment.Experiment(cfg, workdir, fakes, for_training=False, model=model)
        ck = ckpt_lib.TrainCheckpointer(workdir)
        state, meta = ck.restore(setup.state)
        ck.close()
    local = [np.asarray(x.addressable_data(0), np.float64) for x in jax.tree.leaves(state.params)]
    checksum = float(sum(np.sum(x * (i + 1)) for i, x in enumerate(local)))
    print(json.dumps({"process": jax.process_index(), "steps": result["steps"],
                      "uar": result["last"]["uar"], "war": result["last"]["war"],
                      "cm": result["last"]["confusion_matrix"], "checksum": checksum,
                      "step": int(np.asarray(state.step.addressable_data(0)))}))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
