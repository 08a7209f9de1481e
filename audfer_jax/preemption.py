"""Preemption: SIGTERM and SIGINT stop training at the next step boundary, saved.

Cloud TPU, Slurm and Kubernetes preempt a job with SIGTERM (then SIGKILL after
a grace period); people press Ctrl-C. `PreemptionGuard` records the first such
signal instead of dying; the loop asks `should_stop()` at every step boundary,
and every process of a multi-host run gets the same answer at the same step
(the local flags are combined with an all-gather, so no process saves a step
that another has not reached). The loop then saves a checkpoint of that step
and returns; rerunning the same command resumes from it exactly.

A second Ctrl-C (SIGINT) exits at once (`KeyboardInterrupt`); a second SIGTERM
takes the default action (terminate). Handlers are only installed from the
main thread (Python's rule); elsewhere the guard is inert.
"""

from __future__ import annotations

import signal
import threading
from typing import Optional

import jax
import numpy as np

# Exit status of a run stopped by a signal: the shell convention 128 + signal.
EXIT_CODES = {"SIGTERM": 128 + signal.SIGTERM, "SIGINT": 128 + signal.SIGINT}


class PreemptionGuard:
    """Context manager that turns SIGTERM/SIGINT into a request to stop cleanly.

    Attributes:
        signal_name: 'SIGTERM' or 'SIGINT' once one was received, else None
            (on this process; `should_stop` combines all processes).
    """

    def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
        self._signals = tuple(signals)
        self._previous: dict = {}
        self.signal_name: Optional[str] = None

    def __enter__(self) -> "PreemptionGuard":
        if threading.current_thread() is threading.main_thread():
            for sig in self._signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> bool:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        return False

    def _handle(self, signum, frame) -> None:
        del frame
        name = signal.Signals(signum).name
        if self.signal_name is not None:
            # Second signal: stop waiting for the step boundary.
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
            return
        self.signal_name = name
        print(f"\n{name} received: saving a checkpoint at the next step boundary "
              "(Ctrl-C again to exit at once)", flush=True)

    def reason(self) -> str:
        """What stopped the run, for the console."""
        return self.signal_name or "a signal received by another process"

    def should_stop(self) -> bool:
        """True on every process when any process has received a signal.

        Single process: the local flag. Several processes: an all-gather of
        the flags (one tiny collective per call), so all agree on the step.
        """
        local = self.signal_name is not None
        if jax.process_count() == 1:
            return local
        from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
        flags = multihost_utils.process_allgather(np.asarray([int(local)], np.int32))
        return bool(np.max(flags))
