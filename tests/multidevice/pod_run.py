"""One process of a pod-like training run on 127.0.0.1, for tests/test_pod_runs.py.

    python pod_run.py PROCESS_ID PORT WORKDIR SECONDS_PER_BATCH

PROCESS_ID 0 or 1: one of two `jax.distributed` processes (one CPU device
each, `conftest.multidevice_env(1)`); -1: a single process (the reference,
with two fake CPU devices, `multidevice_env(2)`). The micro model with
BatchNorm on the in-memory data (`_train_fakes`): 24 clips, global batch 8,
so 3 steps an epoch, 2 epochs; asynchronous checkpoints every 2 steps next to
the epoch-end best and latest checkpoints (step 3 has both: the saves that
collided in issue 19). Training batches arrive `SECONDS_PER_BATCH` late (time
to send a signal).

Process 1 reaches every Orbax write-complete barrier 1.5 s late, as a host
with slower storage does (`slow_write_barriers`): the best and latest saves of
one step then wait at their barriers at the same time on process 0, which is
the race that made them collide when both used the same barrier name.

Prints the result as JSON on its last line and exits with
`audfer-jax train`'s status (128 + the agreed signal when stopped).
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import _train_fakes as fakes  # noqa: E402


def slow_write_barriers(delay: float) -> None:
    """Delays this process's arrival at Orbax's `async_write_complete` barriers."""
    from orbax.checkpoint._src.multihost import multihost  # pylint: disable=g-import-not-at-top
    make = multihost.get_barrier_sync_fn

    def get_barrier_sync_fn(**kwargs):
        sync = make(**kwargs)

        def fn(*, key, timeout_ms):
            if "async_write_complete" in key:
                time.sleep(delay)
            return sync(key=key, timeout_ms=timeout_ms)
        return fn

    multihost.get_barrier_sync_fn = get_barrier_sync_fn


def config(process_id: int, port: int):
    cfg = fakes.micro_config(**{"data": dict(fakes.default_data_config(), num_train=24),
                                "num_epochs": 2, "log_every_steps": 1,
                                "checkpoint_every_steps": 2, "async_checkpoints": True,
                                "keep_checkpoints": 10})
    if process_id >= 0:
        cfg.multihost = True
        cfg.coordinator_address = f"127.0.0.1:{port}"
        cfg.num_processes = 2
        cfg.process_id = process_id
    return cfg


def main():
    process_id, port, workdir, delay = (int(sys.argv[1]), int(sys.argv[2]), sys.argv[3],
                                        float(sys.argv[4]))
    from audfer_jax import train  # pylint: disable=g-import-not-at-top
    import jax  # pylint: disable=g-import-not-at-top
    if process_id == 1:
        slow_write_barriers(1.5)
    result = train.train_and_evaluate(
            config(process_id, port), workdir, data=fakes.SlowData(delay),
            model=fakes.MicroModel(num_classes=7, norm="batch", dropout=0.1))
    result["process"] = jax.process_index()
    result["devices"] = jax.device_count()
    print(json.dumps(result), flush=True)
    sys.exit(int(result.get("exit_code", 0)))


if __name__ == "__main__":
    main()
