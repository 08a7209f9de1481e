"""What a run reports: metric writers, evaluation records, confusion images, config.

Process 0 writes `workdir/metrics.jsonl` (every logged scalar, one JSON object
a line), TensorBoard events (scalars, confusion-matrix images) and
`workdir/config.json`; the other processes only log.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Mapping

import jax
import ml_collections
import numpy as np

from audfer_jax import goodput as goodput_lib
from audfer_jax import paths


def confusion_image(cm, cell: int = 24) -> np.ndarray:
    """A row-normalised confusion matrix as an image, `[1, C*cell, C*cell, 3] uint8`.

    White = 0, dark blue = 1 (recall of the row's class on the diagonal); a
    one-pixel grey grid separates the cells. No text (no plotting library).
    """
    cm = np.asarray(cm, np.float64)
    rows = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    c = cm.shape[0]
    img = np.empty((c * cell, c * cell, 3), np.float64)
    dark = np.array([8, 48, 107], np.float64)
    for i in range(c):
        for j in range(c):
            colour = 255 + rows[i, j] * (dark - 255)
            img[i * cell:(i + 1) * cell, j * cell:(j + 1) * cell] = colour
    img[::cell, :] = 160
    img[:, ::cell] = 160
    return img.astype(np.uint8)[None]


class JsonlWriter:
    """A clu `MetricWriter` appending `{"step", "kind", ...}` lines to a file."""

    def __init__(self, path: str):
        self._file = paths.open_append(path)

    def _write(self, step, kind, values):
        self._file.write(json.dumps({"step": int(step), "kind": kind, **values}) + "\n")

    def write_scalars(self, step, scalars):
        self._write(step, "scalars", {k: float(np.asarray(v)) for k, v in scalars.items()})

    def write_texts(self, step, texts):
        self._write(step, "texts", {k: str(v) for k, v in texts.items()})

    def write_hparams(self, hparams):
        self._write(0, "hparams", {k: jsonable(v) for k, v in hparams.items()})

    def write_summaries(self, step, values, metadata=None):
        del metadata
        self._write(step, "summaries", {k: np.asarray(v).tolist() for k, v in values.items()})

    def write_images(self, step, images):
        del step, images

    def write_videos(self, step, videos):
        del step, videos

    def write_audios(self, step, audios, *, sample_rate):
        del step, audios, sample_rate

    def write_histograms(self, step, arrays, num_buckets=None):
        del step, arrays, num_buckets

    def flush(self):
        self._file.flush()

    def close(self):
        self._file.close()


def jsonable(v):
    try:
        json.dumps(v)
        return v
    except TypeError:
        return str(v)


def make_writer(workdir: str):
    from clu import metric_writers
    if jax.process_index() != 0:
        return metric_writers.create_default_writer(workdir, just_logging=True)
    default = metric_writers.create_default_writer(workdir, asynchronous=False)
    jsonl = JsonlWriter(paths.join(workdir, "metrics.jsonl"))
    return metric_writers.MultiWriter([default, jsonl])


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Writes the resolved config as `workdir/config.json` (process 0)."""
    if jax.process_index() == 0:
        paths.makedirs(workdir)
        paths.write_text(paths.join(workdir, "config.json"),
                         config.to_json_best_effort(indent=2, sort_keys=True))



def write_eval(writer, step: int, summary: dict, prefix: str) -> None:
    scalars = {f"{prefix}/uar": summary["uar"], f"{prefix}/war": summary["war"],
               f"{prefix}/loss": summary["loss"]}
    for name, value in summary["per_class_recall"].items():
        scalars[f"{prefix}/recall/{name}"] = value
    if "au_f1_mean" in summary:
        scalars[f"{prefix}/au_f1_mean"] = summary["au_f1_mean"]
        for name, value in summary["au_f1"].items():
            scalars[f"{prefix}/au_f1/{name}"] = value
    writer.write_scalars(step, scalars)
    writer.write_images(step, {f"{prefix}/confusion_matrix":
                               confusion_image(summary["confusion_matrix"])})
    writer.write_texts(step, {f"{prefix}/confusion_matrix": json.dumps(
            {"class_names": summary["class_names"], "rows_true_cols_pred":
             summary["confusion_matrix"]})})


def flatten_config(d: Mapping, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(flatten_config(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# ---------------------------------------------------------------------------
# The console: the run's own story, process 0 only.
# ---------------------------------------------------------------------------

def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Console:
    """One line per event of a run, on stdout, from process 0.

    Events: the data and model summary, resume or initialisation, training
    progress (a tqdm bar on a terminal; otherwise one line per
    `log_every_steps` with step, loss, clips/s and ETA), each evaluation,
    best-model and checkpoint event, a stop by signal, and where everything
    was written. Library chatter goes through `logging` at WARNING and above
    (`audfer-jax train --verbosity`).

    Args:
        enabled: print at all (process 0 of a run).
        progress_bar: a tqdm bar instead of progress lines; None = when stdout
            is a terminal.
        stream: where to print (default stdout).
    """

    def __init__(self, enabled: bool = True, progress_bar: bool | None = None, stream=None):
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stdout
        tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.progress_bar = tty if progress_bar is None else bool(progress_bar and tty)
        self._bar = None
        self._bar_args = None
        self._compiled = False      # whether this session's first step is done
        self._t0 = time.time()

    def line(self, text: str) -> None:
        """Prints one event line (above the progress bar when there is one)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def start_epoch(self, epoch: int, num_epochs: int, first_batch: int, steps: int) -> None:
        """Opens the epoch's progress bar (on a terminal).

        Until the session's first step is done (it includes XLA's compilation)
        the bar is not drawn: a line says "compiling" instead, and the bar
        opens after that step, so tqdm's rate and ETA count steady steps only.
        """
        if not (self.enabled and self.progress_bar):
            return
        self._bar_args = dict(total=steps, initial=first_batch,
                              desc=f"epoch {epoch + 1}/{num_epochs}")
        if self._compiled:
            self._open_bar()
        else:
            self.line(f"epoch {epoch + 1}/{num_epochs}: compiling the train step "
                      "(the first step includes XLA's compilation)")

    def _open_bar(self) -> None:
        from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
        args = self._bar_args
        self._bar = tqdm(total=args["total"], initial=args["initial"], unit="step",
                         leave=False, desc=args["desc"], dynamic_ncols=True, file=self.stream)

    def step_done(self) -> None:
        """Counts one finished step (the first of a session opens the bar)."""
        first = not self._compiled
        self._compiled = True
        if first and self._bar_args is not None and self._bar is None:
            self._bar_args["initial"] += 1
            self._open_bar()
        elif self._bar is not None:
            self._bar.update(1)

    def end_epoch(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._bar_args = None

    def progress(self, step: int, total: int, loss: float, clips_per_sec: float,
                 run_steps: int, run_seconds: float, mfu: float | None = None) -> None:
        """Step, loss, clips/s, MFU where known, and ETA.

        Args:
            step, total: optimizer steps done and planned.
            loss, clips_per_sec: the log window's mean loss and throughput.
            run_steps, run_seconds: steady steps of this session (those after
                its first, which compiles) and their wall time without
                evaluations; the ETA is their mean step time times the steps
                left ("compiling" while there are none yet).
            mfu: model FLOPs utilisation in [0, 1], if known.
        """
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{loss:.4f}", clips_s=f"{clips_per_sec:.1f}")
            return
        eta = ("compiling" if run_steps < 1 else
               _duration((total - step) * run_seconds / run_steps))
        mfu_text = "" if mfu is None else f"MFU {100 * mfu:.1f} %  "
        self.line(f"step {step}/{total}  loss {loss:.4f}  {clips_per_sec:.1f} clips/s  "
                  f"{mfu_text}ETA {eta}")

    def elapsed(self) -> str:
        return _duration(time.time() - self._t0)

    def goodput(self, summary: dict) -> None:
        """Two lines: the share of the session in train steps, and where the rest went.

        Args:
            summary: `goodput.Ledger.summary()`.
        """
        self.line(goodput_text(summary))


def _seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 60 else _duration(s)


def goodput_text(summary: dict) -> str:
    """The console's goodput lines (see `Console.goodput`).

    Example: "goodput: 47.6 % of this session's 42.1 s in train steps\\n  the rest:
    compilation 12.0 s (21 programs compiled, 0 loaded from the cache), ...".
    """
    seconds = summary["seconds"]
    rest = sorted((k for k in seconds if k != "train"), key=lambda k: -seconds[k])
    parts = []
    for k in rest:
        part = f"{goodput_lib.LABELS[k]} {_seconds(seconds[k])}"
        if k == "compile":
            part += (f" ({summary['programs_compiled']} programs compiled, "
                     f"{summary['programs_from_cache']} loaded from the cache)")
        parts.append(part)
    return (f"goodput: {100 * summary['train_share']:.1f} % of this session's "
            f"{_seconds(summary['wall_seconds'])} in train steps\n  the rest: "
            + ", ".join(parts))


def configure_logging(verbosity: int = -1) -> None:
    """Sets how much library chatter reaches the console (absl's convention).

    Args:
        verbosity: -1 (default) WARNING and above only; 0 INFO (Orbax's
            handler registries, "Deleted step ..."); 1 and more DEBUG. Applies
            to absl logging (Orbax, JAX) and Python loggers (TensorFlow, whose
            deprecation notices are INFO/WARNING lines of its own; they are
            shown from verbosity 0).
    """
    import logging as py_logging  # pylint: disable=g-import-not-at-top
    import warnings  # pylint: disable=g-import-not-at-top
    from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
    level = (py_logging.WARNING if verbosity < 0 else
             py_logging.INFO if verbosity == 0 else py_logging.DEBUG)
    absl_logging.set_verbosity(max(-1, min(1, int(verbosity))))   # absl's own scale
    py_logging.getLogger().setLevel(level)
    py_logging.getLogger("tensorflow").setLevel(py_logging.ERROR if verbosity < 0 else level)
    if verbosity < 0:
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        py_logging.getLogger("absl").addFilter(_tfds_deprecation_filter)


def _tfds_deprecation_filter(record) -> bool:
    """Drops TFDS's own "`TensorInfo.dtype` is deprecated" notices.

    TFDS 4.9 reads the deprecated field itself while building every dataset
    (features/feature.py) and logs it at WARNING through absl, ten times a run;
    nothing a user can change.
    """
    return not ("tensorflow_datasets" in record.pathname
                and "is deprecated" in record.getMessage())
