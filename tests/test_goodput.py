"""Goodput: a run's wall time by category (audfer_jax.goodput, train.py's summary)."""

from __future__ import annotations

import json
import os
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import _train_fakes as fakes  # noqa: E402

from audfer_jax import goodput  # noqa: E402
from audfer_jax import reporting  # noqa: E402
from audfer_jax import train  # noqa: E402


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_union_of_nested_and_overlapping_spans():
    # [1, 4] holds [2, 3] (a jit traced inside its caller); [3.5, 6] overlaps
    # it; [8, 9] lies outside the window [0, 7].
    spans = [(2, 3), (1, 4), (3.5, 6), (8, 9)]
    assert goodput.union_seconds(spans, 0, 7) == pytest.approx(5.0)
    assert goodput.union_seconds(spans, 2.5, 5) == pytest.approx(2.5)
    assert goodput.union_seconds([], 0, 7) == 0.0


def test_ledger_charges_phases_and_takes_compilation_out():
    clock = FakeClock()
    ledger = goodput.Ledger(clock)
    clock.now += 3                       # start-up
    ledger.switch("train")
    # A compile of 1.5 s inside the first 2 s of train steps, reported twice
    # (a trace nested in its caller's span).
    ledger._on_span(goodput.COMPILE_EVENTS[0], clock.now + 0.1, clock.now + 1.6)
    ledger._on_span(goodput.COMPILE_EVENTS[2], clock.now + 0.5, clock.now + 1.0)
    clock.now += 2
    with ledger.phase("eval"):
        clock.now += 0.5
    assert ledger.category == "train"
    with ledger.phase("input"):
        clock.now += 0.25
        ledger.recharge("train")         # the devices were busy all along
    clock.now += 1
    # A compile on another thread overlaps the main thread's time: ignored.
    worker = threading.Thread(target=ledger._on_span,
                              args=(goodput.COMPILE_EVENTS[2], clock.now - 1, clock.now))
    worker.start()
    worker.join()
    s = ledger.summary()
    assert s["wall_seconds"] == pytest.approx(6.75)
    assert s["seconds"] == pytest.approx({"startup": 3.0, "compile": 1.5, "input": 0.0,
                                          "train": 0.5 + 0.25 + 1.0, "eval": 0.5,
                                          "checkpoint_save": 0.0,
                                          "checkpoint_restore": 0.0, "other": 0.0})
    assert s["train_share"] == pytest.approx(1.75 / 6.75, abs=1e-4)
    assert s["programs_compiled"] == 1 and s["programs_from_cache"] == 0
    with pytest.raises(ValueError, match="unknown goodput category 'training'"):
        ledger.switch("training")


def test_ledger_hears_jax_compile_events():
    """A jit's first call is charged to compile, its later calls are not."""
    f = jax.jit(lambda x: jnp.sin(x) @ x.T + np.float32(time.time() % 1))   # a fresh program
    x = jnp.ones((64, 64))
    with goodput.Ledger() as ledger:
        ledger.switch("train")
        f(x).block_until_ready()
        first = ledger.summary()
        for _ in range(3):
            f(x).block_until_ready()
        later = ledger.summary()
    assert first["seconds"]["compile"] > 0 and first["programs_compiled"] >= 1
    assert later["seconds"]["compile"] == first["seconds"]["compile"]
    assert later["programs_compiled"] == first["programs_compiled"]


def test_console_lines():
    summary = {"wall_seconds": 100.0, "train_share": 0.5,
               "seconds": {"startup": 10.0, "compile": 30.0, "input": 2.0, "train": 50.0,
                           "eval": 5.0, "checkpoint_save": 2.5, "checkpoint_restore": 0.5,
                           "other": 0.0},
               "programs_compiled": 3, "programs_from_cache": 1}
    assert reporting.goodput_text(summary) == (
            "goodput: 50.0 % of this session's 1:40 in train steps\n"
            "  the rest: compilation 30.0 s (3 programs compiled, 1 loaded from the cache), "
            "start-up 10.0 s, evaluation 5.0 s, checkpoint save 2.5 s, waiting for input "
            "2.0 s, checkpoint restore 0.5 s, other 0.0 s")


def test_run_summary_adds_up_to_the_wall_time(tmp_path, capsys):
    durations = []
    listener = lambda event, secs, **kw: durations.append(secs) if (  # noqa: E731
            event == goodput.COMPILE_EVENTS[2]) else None
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        t0 = time.time()
        result = train.train_and_evaluate(fakes.micro_config(), str(tmp_path / "run"),
                                          data=fakes, model=fakes.MicroModel(num_classes=7))
        wall = time.time() - t0
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    g = result["goodput"]
    assert set(g["seconds"]) == set(goodput.CATEGORIES)
    assert sum(g["seconds"].values()) == pytest.approx(g["wall_seconds"], abs=0.01)
    # The ledger starts inside train_and_evaluate and closes before the
    # writers do: within a second of the caller's stopwatch.
    assert wall - 1.0 < g["wall_seconds"] <= wall
    for category in ("startup", "compile", "train", "eval", "checkpoint_save"):
        assert g["seconds"][category] > 0, category
    # XLA's own compile times (JAX's compile log) lie inside the compile category.
    assert g["seconds"]["compile"] >= 0.99 * sum(durations)
    assert g["programs_compiled"] + g["programs_from_cache"] == len(durations) >= 3
    assert g["train_share"] == pytest.approx(g["seconds"]["train"] / g["wall_seconds"],
                                             abs=1e-3)
    with open(tmp_path / "run" / "metrics.json", encoding="utf-8") as f:
        assert json.load(f)["goodput"] == g
    with open(tmp_path / "run" / "metrics.jsonl", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    logged = [r for r in rows if "goodput/train_share" in r]
    assert len(logged) == 1 and logged[0]["step"] == 4
    assert logged[0]["goodput/compile_seconds"] == pytest.approx(g["seconds"]["compile"])
    out = capsys.readouterr().out.splitlines()
    assert out[-3].startswith("goodput: ") and out[-3].endswith(" in train steps")
    assert out[-2].startswith("  the rest: ") and out[-1].startswith("done: 4 steps")
