"""reporting.Console: progress lines and the tqdm bar count steady steps only."""

import io

from audfer_jax import reporting


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_eta_counts_steady_steps_and_says_compiling_before():
    out = io.StringIO()
    console = reporting.Console(stream=out)
    console.progress(1, 100, 2.0, 5.0, run_steps=0, run_seconds=0.0)
    # 20 steady steps in 10 s: 0.5 s a step, 79 steps left -> 39.5 s -> 0:40.
    console.progress(21, 100, 1.5, 30.0, run_steps=20, run_seconds=10.0)
    first, second = out.getvalue().splitlines()
    assert first.endswith("ETA compiling")
    assert second.startswith("step 21/100  loss 1.5000  30.0 clips/s")
    assert second.endswith("ETA 0:40")


def test_bar_opens_after_the_first_step_of_the_session():
    out = _Tty()
    console = reporting.Console(stream=out, progress_bar=True)
    console.start_epoch(0, 3, first_batch=0, steps=10)
    assert "epoch 1/3: compiling the train step" in out.getvalue()
    assert console._bar is None                   # nothing timed while compiling
    console.step_done()
    assert console._bar is not None and console._bar.n == 1
    console.step_done()
    assert console._bar.n == 2
    console.end_epoch()
    # Later epochs of the same session open their bar at once.
    console.start_epoch(1, 3, first_batch=0, steps=10)
    assert console._bar is not None and console._bar.n == 0
    assert out.getvalue().count("compiling") == 1
    console.end_epoch()
