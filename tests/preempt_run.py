"""A training run for the preemption test: micro model, in-memory data, slow batches.

    python preempt_run.py WORKDIR SECONDS_PER_BATCH [BLOCKED_MARKER GRACE_SECONDS]

Prints the final result as JSON on its last line; exits with the code of
`audfer_jax.preemption.EXIT_CODES` when stopped by a signal. With
BLOCKED_MARKER, the first train step blocks inside XLA (a host callback that
never returns; it writes that file first), as a step hung in a cross-process
barrier does: the main thread waits in C for the step's results, where no
Python signal handler runs; `config.preemption_grace_seconds` is GRACE_SECONDS.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import _train_fakes as fakes  # noqa: E402

from audfer_jax import train  # noqa: E402


class BlockingModel(fakes.MicroModel):
    """The micro model whose training forward pass blocks forever.

    Initialisation and evaluation (`train=False`) run normally.
    """
    marker: str = ""

    def __call__(self, clips, train: bool = False):
        import jax  # pylint: disable=import-outside-toplevel
        import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
        import numpy as np  # pylint: disable=import-outside-toplevel

        def wait(x):
            with open(self.marker, "w", encoding="utf-8"):
                pass
            while True:
                time.sleep(3600)
            return np.zeros_like(x)

        if train:
            # No gradient flows through the callback (its input is a constant
            # to autodiff), so it may sit inside the differentiated step.
            probe = jax.lax.stop_gradient(jnp.mean(clips.astype(jnp.float32)))
            zero = jax.pure_callback(wait, jax.ShapeDtypeStruct((), jnp.float32), probe)
            clips = clips + zero.astype(clips.dtype)
        return super().__call__(clips, train)


def main():
    workdir, delay = sys.argv[1], float(sys.argv[2])
    cfg = fakes.micro_config(**{"data": dict(fakes.default_data_config(), num_train=48),
                                "num_epochs": 3, "log_every_steps": 1})
    model = fakes.MicroModel(num_classes=7, dropout=0.1)
    if len(sys.argv) > 3:
        model = BlockingModel(num_classes=7, dropout=0.1, marker=sys.argv[3])
        cfg.preemption_grace_seconds = float(sys.argv[4])
    result = train.train_and_evaluate(cfg, workdir, data=fakes.SlowData(delay), model=model)
    print(json.dumps(result), flush=True)
    if "preempted_at_step" in result:
        sys.exit(result["exit_code"])


if __name__ == "__main__":
    main()
