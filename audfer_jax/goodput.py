"""Where a run's wall time goes: the share spent in train steps, and the rest.

A pod slice bills every chip for every second of a run, whether it trains or
waits. `Ledger` splits one session's wall time (from the start of
`train.train_and_evaluate` to its summary) into the categories below by host
timers at the loop's phase boundaries; they add up to the wall time by
construction. The categories follow ml-goodput-measurement's badput types
(AI-Hypercomputer/ml-goodput-measurement, `goodput_utils.BadputType`):

    startup              TPU_INITIALIZATION + TRAINING_PREP: jax.distributed,
                         devices, data and model set-up, writers, checkpointer
    compile              PROGRAM_STARTUP: JAX tracing, lowering and XLA
                         compilation (or loading from the persistent cache)
    input                DATA_LOADING_SYNC: getting the next batch while the
                         devices had nothing left to run
    train                the train steps (goodput)
    eval                 evaluation (ml-goodput-measurement has no category:
                         its OTHER)
    checkpoint_save      UNPRODUCTIVE_CHECKPOINT_SAVE_TIME (the blocking part)
    checkpoint_restore   UNPRODUCTIVE_CHECKPOINT_RESTORE_TIME (and `init_from`)
    other                the rest: stop agreements, logging, the summary

That package itself is not used: it records through Google Cloud Logging and
computes from the logged entries (`google-cloud-logging`,
`google-cloud-monitoring` and `google-cloud-storage` are required
dependencies of version 0.2.3, and its recorder and calculator create a
`google.cloud.logging.Client`), so it needs a Google Cloud project and
credentials; a run on a workstation, a Slurm cluster or in the tests has
neither.

Compilation is measured from JAX's own events
(`jax.monitoring.register_event_time_span_listener`):
'/jax/core/compile/jaxpr_trace_duration', '.../jaxpr_to_mlir_module_duration'
and '.../backend_compile_duration' (JAX 0.10's `dispatch.py`), as the union of
their time spans on the ledger's thread (nested jits trace inside their
caller's trace), and taken out of the phase they fell in: the first train
step's compilation counts as compile, not train.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Callable, Iterator

import jax

CATEGORIES = ("startup", "compile", "input", "train", "eval", "checkpoint_save",
              "checkpoint_restore", "other")
LABELS = {"startup": "start-up", "compile": "compilation", "input": "waiting for input",
          "train": "train steps", "eval": "evaluation", "checkpoint_save": "checkpoint save",
          "checkpoint_restore": "checkpoint restore", "other": "other"}

COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                  "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")
_BACKEND_COMPILE = COMPILE_EVENTS[2]
_CACHE_HIT = "/jax/compilation_cache/cache_hits"


def union_seconds(spans: list[tuple[float, float]], lo: float, hi: float) -> float:
    """Length of the union of `spans` clipped to `[lo, hi]`, in seconds.

    Args:
        spans: `(start, end)` pairs, seconds on one clock; may overlap or nest.
        lo, hi: the window.
    """
    total, reach = 0.0, lo
    for start, end in sorted(spans):
        start, end = max(start, reach), min(end, hi)
        if end > start:
            total += end - start
            reach = end
    return total


class Ledger:
    """Wall time of one session by category; compile time from JAX's events.

    Use as a context manager (it listens to JAX's compile events while
    entered). The ledger starts in 'startup'; `switch` and `phase` move it to
    another category at a phase boundary. Time is charged to the category in
    force when the interval closes, less the compilation inside it.

    Args:
        clock: seconds since the epoch (JAX stamps its events with
            `time.time()`, so the ledger uses the same clock).
    """

    def __init__(self, clock: Callable[[], float] = time.time):
        self._clock = clock
        self._thread = threading.get_ident()
        self._lock = threading.Lock()
        self._start = self._since = clock()
        self._category = "startup"
        self._seconds = dict.fromkeys(CATEGORIES, 0.0)
        self._spans: list[tuple[float, float]] = []
        self.backend_compiles = 0    # programs compiled or loaded from the cache
        self.cache_hits = 0          # programs loaded from the persistent cache

    def __enter__(self) -> "Ledger":
        jax.monitoring.register_event_time_span_listener(self._on_span)
        jax.monitoring.register_event_listener(self._on_event)
        return self

    def __exit__(self, *exc) -> None:
        jax.monitoring.unregister_event_time_span_listener(self._on_span)
        jax.monitoring.unregister_event_listener(self._on_event)

    def _on_span(self, event: str, start_time: float, end_time: float, **kwargs) -> None:
        del kwargs
        # Compilations on other threads (a background checkpoint writer) overlap
        # the main thread's time instead of adding to it.
        if event in COMPILE_EVENTS and threading.get_ident() == self._thread:
            with self._lock:
                self._spans.append((start_time, end_time))
                self.backend_compiles += event == _BACKEND_COMPILE

    def _on_event(self, event: str, **kwargs) -> None:
        del kwargs
        if event == _CACHE_HIT and threading.get_ident() == self._thread:
            self.cache_hits += 1

    @property
    def category(self) -> str:
        return self._category

    def recharge(self, category: str) -> None:
        """Charges the interval now running (since the last switch) to `category`."""
        self._check(category)
        self._category = category

    def switch(self, category: str) -> str:
        """Closes the running interval and starts one of `category`; returns the old one."""
        self._check(category)
        now = self._clock()
        with self._lock:
            compiled = union_seconds(self._spans, self._since, now)
            self._spans = []
        self._seconds[self._category] += max(0.0, now - self._since - compiled)
        self._seconds["compile"] += compiled
        previous, self._category, self._since = self._category, category, now
        return previous

    @contextlib.contextmanager
    def phase(self, category: str) -> Iterator["Ledger"]:
        """Charges the time inside the block to `category`, then resumes the previous one."""
        previous = self.switch(category)
        try:
            yield self
        finally:
            self.switch(previous)

    def summary(self) -> dict:
        """This session so far: `{"wall_seconds", "train_share", "seconds": {category:
        seconds}, "programs_compiled", "programs_from_cache"}`.

        `train_share` is train seconds over wall seconds (0 to 1);
        `programs_compiled` counts the XLA compilations that did not come from
        the persistent cache.
        """
        self.switch(self._category)
        wall = self._since - self._start
        seconds = {k: round(v, 3) for k, v in self._seconds.items()}
        return {"wall_seconds": round(wall, 3),
                "train_share": round(self._seconds["train"] / wall, 4) if wall > 0 else 0.0,
                "seconds": seconds,
                "programs_compiled": self.backend_compiles - self.cache_hits,
                "programs_from_cache": self.cache_hits}

    @staticmethod
    def _check(category: str) -> None:
        if category not in CATEGORIES:
            raise ValueError(f"unknown goodput category {category!r}; expected one of "
                             f"{CATEGORIES}")


def step_running(metrics) -> bool:
    """Whether the device step that produces `metrics` (a pytree of arrays) still runs."""
    leaves = jax.tree.leaves(metrics)
    return bool(leaves) and not all(getattr(x, "is_ready", lambda: True)() for x in leaves)
