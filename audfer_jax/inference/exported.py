"""An exported model (`audfer-jax export`) as a `Predictor`: `predict --model DIR`.

`load_exported(path)` reads `model.json` (`export.manifest`), checks the
artifact's files against its checksums, loads the program with JAX
(`model.jax_export`) or TensorFlow (`savedmodel/`) and returns an
`ExportedPredictor`: a `Predictor` whose `apply` runs the exported program
and whose sampling, views, input size, classes and AU prior come from
model.json. Everything downstream (`predict.predict_clip`, the timeline, the
picture) runs on it unchanged, so `--model` and `--checkpoint` give the same
outputs.

Which format: `path` a directory with model.json -> its `jax` artifact when
there is one, else its SavedModel; `DIR/model.jax_export` or `DIR/savedmodel`
picks that one.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Optional

import numpy as np

from audfer_jax import paths
from audfer_jax.data import sampling
from audfer_jax.inference.predictor import Predictor
from audfer_jax.inference.video import PredictError

FORMATS = ("jax", "savedmodel")


class ExportedOutput(NamedTuple):
    """The part of `models.base.ModelOutput` inference reads, as NumPy arrays.

    Attributes:
        logits: `[B, C] float32`.
        au_logits: `[B, 18] float32`.
    """
    logits: np.ndarray
    au_logits: np.ndarray


@dataclasses.dataclass
class ExportedPredictor(Predictor):
    """A `Predictor` backed by an exported program (`model` and `variables` are None).

    Attributes:
        format: "jax" or "savedmodel".
        directory: the export directory.
        manifest: its model.json.
    """
    format: str = ""
    directory: str = ""
    manifest: Optional[dict] = None


def _locate(path: str) -> tuple[str, Optional[str]]:
    """`(export directory, format or None)` of a `--model` path.

    Raises:
        PredictError: nothing there.
    """
    from audfer_jax.export import jax_format, manifest, savedmodel  # pylint: disable=g-import-not-at-top
    path = paths.resolve(path)
    if not paths.exists(path):
        raise PredictError(f"{path}: no exported model there (expected the --out folder of "
                           "`audfer-jax export`)")
    name = paths.basename(path)
    parent = paths.dirname(path)
    if name == jax_format.FILENAME:
        return parent, "jax"
    if name == savedmodel.DIRNAME and paths.isfile(paths.join(parent, manifest.MODEL_JSON)):
        return parent, "savedmodel"
    return path, None


def _runner(directory: str, fmt: str, meta: dict):
    """`clips -> {probs, au_probs, logits, au_logits}` of one format, files verified.

    Raises:
        ArtifactError: damaged, incompatible or missing files.
    """
    from audfer_jax.export import jax_format, manifest, savedmodel  # pylint: disable=g-import-not-at-top
    rel = jax_format.FILENAME if fmt == "jax" else savedmodel.DIRNAME
    manifest.verify_files(directory, meta, rel)
    want = tuple(meta["input"]["shape"][1:])
    path = paths.join(directory, rel)
    if fmt == "savedmodel":
        run = savedmodel.read(path)
        got = run.input_shape
    else:
        exported = jax_format.read(path)
        got = tuple(exported.in_avals[0].shape[1:]) if len(exported.in_avals) == 1 else None
        run = exported.call
    if got != want:
        raise manifest.ArtifactError(f"{path}: takes clips {got}, {manifest.MODEL_JSON} says "
                                     f"{want}: files of different exports")
    return run


def _spec(meta: dict) -> sampling.SamplingSpec:
    """The evaluation `SamplingSpec` recorded in model.json."""
    ts = meta["temporal_sampling"]
    return sampling.SamplingSpec(scheme=ts["scheme"], num_frames=int(ts["frames_per_clip"]),
                                 num_segments=int(ts["num_segments"]),
                                 frames_per_segment=int(ts["frames_per_segment"]),
                                 rate=int(ts["rate"]), pad=ts["pad"],
                                 reference_quirks=bool(ts["reference_quirks"]))


def load_exported(path: str, fmt: Optional[str] = None) -> ExportedPredictor:
    """Loads an export for inference (module docstring).

    Args:
        path: the export directory, `DIR/model.jax_export` or `DIR/savedmodel`.
        fmt: "jax" or "savedmodel" to insist on one (default: from `path`,
            else jax when exported, else the SavedModel).

    Returns:
        An `ExportedPredictor`.

    Raises:
        PredictError: nothing there, an unknown format, or an artifact that
            is missing, damaged or incompatible (one line naming the file).
    """
    from audfer_jax.export import manifest  # pylint: disable=g-import-not-at-top
    directory, picked = _locate(path)
    try:
        meta = manifest.read(directory)
        fmt = fmt or picked or next((f for f in FORMATS if f in meta["formats"]), None)
        if fmt not in FORMATS or fmt not in meta["formats"]:
            raise manifest.ArtifactError(
                    f"{paths.join(directory, manifest.MODEL_JSON)}: no {fmt!r} artifact "
                    f"(exported: {', '.join(meta['formats']) or 'none'})")
        run = _runner(directory, fmt, meta)
        spec = _spec(meta)
    except manifest.ArtifactError as e:
        raise PredictError(str(e)) from None
    except (KeyError, TypeError, ValueError) as e:
        # A model.json that parses but lacks or mistypes an entry.
        raise PredictError(f"{paths.join(directory, manifest.MODEL_JSON)}: malformed "
                           f"({type(e).__name__}: {e})") from None
    return _predictor(meta, run, spec, directory, fmt)


def _predictor(meta: dict, run, spec: sampling.SamplingSpec, directory: str,
               fmt: str) -> ExportedPredictor:
    """The `ExportedPredictor` of a verified export."""

    def apply(_variables: Any, clips: np.ndarray) -> ExportedOutput:
        out = run(np.ascontiguousarray(clips, np.uint8))
        return ExportedOutput(np.asarray(out["logits"]), np.asarray(out["au_logits"]))

    prior = meta.get("au_prior") or {}
    source = meta.get("source") or {}
    step = source.get("step")
    origin = source.get("loaded") or source.get("checkpoint") or "unknown checkpoint"
    return ExportedPredictor(
            model=None, variables=None, class_names=list(meta["classes"]), spec=spec,
            temporal_views=int(meta["temporal_sampling"]["temporal_views"]),
            spatial_views=int(meta["spatial_preprocessing"]["spatial_views"]),
            image_size=int(meta["spatial_preprocessing"]["image_size"]),
            source=f"{directory} ({'jax.export' if fmt == 'jax' else 'SavedModel'}; "
                   f"exported from {origin})",
            apply=apply,
            prior=None if prior.get("matrix") is None else np.asarray(prior["matrix"],
                                                                     np.float32),
            prior_label=str(prior.get("label", "")), step=step, format=fmt,
            directory=directory, manifest=meta)
