"""A training run for the preemption test: micro model, in-memory data, slow batches.

    python preempt_run.py WORKDIR SECONDS_PER_BATCH

Prints the final result as JSON on its last line; exits with the code of
`audfer_jax.preemption.EXIT_CODES` when stopped by a signal.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import _train_fakes as fakes  # noqa: E402

from audfer_jax import preemption  # noqa: E402
from audfer_jax import train  # noqa: E402


class SlowData:
    """The in-memory stand-in, each training batch `delay` seconds late."""

    def __init__(self, delay: float):
        self.delay = delay

    def __getattr__(self, name):
        return getattr(fakes, name)

    def create_train_dataset(self, *args, **kwargs):
        for batch in fakes.create_train_dataset(*args, **kwargs):
            time.sleep(self.delay)
            yield batch


def main():
    workdir, delay = sys.argv[1], float(sys.argv[2])
    cfg = fakes.micro_config(**{"data": dict(fakes.default_data_config(), num_train=48),
                                "num_epochs": 3, "log_every_steps": 1})
    result = train.train_and_evaluate(cfg, workdir, data=SlowData(delay),
                                      model=fakes.MicroModel(num_classes=7, dropout=0.1))
    print(json.dumps(result), flush=True)
    if "preempted_at_step" in result:
        sys.exit(preemption.EXIT_CODES[result["signal"]])


if __name__ == "__main__":
    main()
