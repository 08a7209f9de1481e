"""Preemption: SIGTERM and SIGINT stop training at the next step boundary, saved.

Cloud TPU, Slurm and Kubernetes preempt a job with SIGTERM (then SIGKILL after
a grace period, 30 s by default on Kubernetes and Cloud TPU); people press
Ctrl-C. `PreemptionGuard` records the first such signal instead of dying; the
loop asks `should_stop()` at every step boundary, and every process of a
multi-host run gets the same answer at the same step: the processes exchange
the signal numbers they received (an all-gather), so no process saves a step
that another has not reached, and all of them agree on *which* signal stopped
the run (the one of the lowest process that received one). The loop then
saves a checkpoint of that step and every process exits with the same status,
`exit_code()`: 128 + the signal number (143 for SIGTERM, 130 for SIGINT),
whichever process received it. Rerunning the same command resumes exactly.

No silent hang: the signal is read by a watcher thread (through
`signal.set_wakeup_fd`, written by the interpreter's C-level handler), not
only by the Python handler, which runs on the main thread and so never runs
while that thread is blocked inside a C call (a cross-process barrier, a
collective, a data read). From the first signal the watcher gives the process
`grace_seconds` to reach the step boundary, save and return; past that it
prints one line naming what the main thread was doing (`phase`, set by the
trainer, and the innermost Python frame) and exits with the signal's status,
without a new checkpoint. A second SIGTERM or SIGINT exits at once (same
status), also while the main thread is blocked.

Handlers are only installed from the main thread (Python's rule); elsewhere
the guard is inert.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
from typing import Callable, Optional

import jax
import numpy as np

# Exit status of a run stopped by a signal: the shell convention 128 + signal.
EXIT_CODES = {"SIGTERM": 128 + signal.SIGTERM, "SIGINT": 128 + signal.SIGINT}

# Kubernetes' and Cloud TPU's default time between SIGTERM and SIGKILL is 30 s;
# 20 s leaves the process time to print and exit before the SIGKILL.
DEFAULT_GRACE_SECONDS = 20.0


class PreemptionGuard:
    """Context manager that turns SIGTERM/SIGINT into a request to stop cleanly.

    Args:
        signals: the signals handled.
        grace_seconds: seconds from the first signal until the process gives
            up (one line on stderr, exit with the signal's status); 0 or None
            waits forever.
        exit_fn: how the watcher ends the process (`os._exit`: the main thread
            may be blocked, so nothing that needs it can be used); tests pass
            a recorder.

    Attributes:
        signal_name: 'SIGTERM' or 'SIGINT' once one was received by this
            process, else None.
        agreed_signal: the signal number all processes agreed on in the last
            `should_stop` that returned True, else None.
        agreed_process: the process that received `agreed_signal`.
        phase: what the main thread is doing, for the grace-period message
            (set through `in_phase`).
    """

    def __init__(self, signals=(signal.SIGTERM, signal.SIGINT), *,
                 grace_seconds: Optional[float] = DEFAULT_GRACE_SECONDS,
                 exit_fn: Callable[[int], None] = os._exit):
        self._signals = tuple(signals)
        self._previous: dict = {}
        self._grace = float(grace_seconds or 0.0)
        self._exit = exit_fn
        self._lock = threading.Lock()
        self._signum: Optional[int] = None
        self._done = threading.Event()
        self._sockets: Optional[tuple[socket.socket, socket.socket]] = None
        self._previous_fd: Optional[int] = None
        self._watcher: Optional[threading.Thread] = None
        self._timer: Optional[threading.Timer] = None
        self.signal_name: Optional[str] = None
        self.agreed_signal: Optional[int] = None
        self.agreed_process: Optional[int] = None
        self.phase = "starting"

    # -- installation ------------------------------------------------------

    def __enter__(self) -> "PreemptionGuard":
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in self._signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        # The C-level handler writes each signal number to this socket even
        # while the main thread is blocked; the watcher thread reads it.
        r, w = socket.socketpair()
        w.setblocking(False)
        self._sockets = (r, w)
        self._previous_fd = signal.set_wakeup_fd(w.fileno(), warn_on_full_buffer=False)
        self._watcher = threading.Thread(target=self._watch, name="preemption-watcher",
                                         daemon=True)
        self._watcher.start()
        return self

    def __exit__(self, *exc) -> bool:
        self._done.set()
        if self._timer is not None:
            self._timer.cancel()
        if self._sockets is not None:
            signal.set_wakeup_fd(self._previous_fd if self._previous_fd is not None else -1)
            r, w = self._sockets
            with contextlib.suppress(OSError):
                w.send(b"\0")          # wakes the watcher, which sees _done and ends
            if self._watcher is not None:
                self._watcher.join(timeout=5)
            r.close()
            w.close()
            self._sockets = None
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        return False

    def _handle(self, signum, frame) -> None:
        # The watcher thread does the work (it also sees signals while this
        # main-thread handler cannot run); installing a Python handler is what
        # makes the interpreter write the wakeup byte.
        del frame
        if self._sockets is None:
            self._received(signum)

    def _watch(self) -> None:
        r = self._sockets[0]
        while not self._done.is_set():
            try:
                data = r.recv(64)
            except OSError:
                return
            if self._done.is_set() or not data:
                return
            for signum in data:
                if signum in self._signals:
                    self._received(signum)

    # -- what a signal does ------------------------------------------------

    def _received(self, signum: int) -> None:
        """First signal: record it and start the grace timer; second: exit at once."""
        with self._lock:
            first = self._signum is None
            if first:
                self._signum = signum
                self.signal_name = signal.Signals(signum).name
        name = signal.Signals(signum).name
        if not first:
            _say(f"{name} received again: exiting at once, without a checkpoint "
                 f"(exit {128 + signum})")
            self._exit(128 + signum)
            return
        grace = (f"; giving up after {self._grace:g} s" if self._grace else "")
        _say(f"{name} received: saving a checkpoint at the next step boundary{grace} "
             f"({name} again to exit at once)")
        if self._grace and self._timer is None:
            self._timer = threading.Timer(self._grace, self._expired)
            self._timer.daemon = True
            self._timer.start()

    def _expired(self) -> None:
        if self._done.is_set():
            return
        name = self.signal_name or "a signal"
        _say(f"{name} received {self._grace:g} s ago and the run did not stop in time "
             f"(config.preemption_grace_seconds): still waiting for {self.phase}"
             f"{_main_thread_location()}; exiting without a new checkpoint (exit "
             f"{128 + (self._signum or 0)}); rerun the same command to resume from the "
             "newest checkpoint")
        self._exit(128 + (self._signum or 0))

    @contextlib.contextmanager
    def in_phase(self, what: str):
        """Names what the main thread does inside the block (grace-period message)."""
        before, self.phase = self.phase, what
        try:
            yield
        finally:
            self.phase = before

    # -- agreement ---------------------------------------------------------

    def reason(self) -> str:
        """What stopped the run, for the console ('SIGTERM (process 1)')."""
        if self.agreed_signal is None:
            return self.signal_name or "a signal"
        name = signal.Signals(self.agreed_signal).name
        if jax.process_count() > 1:
            return f"{name} (received by process {self.agreed_process})"
        return name

    def exit_code(self) -> int:
        """128 + the agreed signal (the same on every process), or 1 if none."""
        signum = self.agreed_signal or self._signum
        return 128 + signum if signum else 1

    def should_stop(self) -> bool:
        """True on every process when any process has received a signal.

        Single process: the local flag. Several processes: an all-gather of
        the received signal numbers (one tiny collective per call), so all
        processes agree on the step and on the signal (`agreed_signal`).
        """
        local = self._signum or 0
        if jax.process_count() == 1:
            signums = np.asarray([local])
        else:
            from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
            signums = np.asarray(multihost_utils.process_allgather(
                    np.asarray([local], np.int32))).reshape(-1)
        received = np.flatnonzero(signums)
        if not received.size:
            return False
        self.agreed_process = int(received[0])
        self.agreed_signal = int(signums[received[0]])
        return True


def _say(line: str) -> None:
    """One line on stderr, flushed (the process may end right after)."""
    print(f"\n{line}", file=sys.stderr, flush=True)


def _main_thread_location() -> str:
    """' (main thread in file:line function)' of the innermost Python frame."""
    frames = sys._current_frames()  # pylint: disable=protected-access
    frame = frames.get(threading.main_thread().ident)
    if frame is None:
        return ""
    code = frame.f_code
    return f" (main thread in {os.path.basename(code.co_filename)}:{frame.f_lineno} {code.co_name})"
