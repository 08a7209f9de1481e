"""`export_checkpoint`: one checkpoint -> an export directory (`audfer-jax export`).

The checkpoint is read exactly as `audfer-jax predict --checkpoint` reads it
(`inference.predictor.load_predictor`: a run directory's best or last step,
a step directory, or a variables checkpoint; the model rebuilt through
`model_state`, an import-path backbone included), so the export computes what
`predict` computes. Then, in order: the `jax.export` artifact, the SavedModel,
and last `model.json` with the files' checksums. A failed export removes what
it wrote; a folder without model.json (an export killed midway) is refused by
readers.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import shutil
import time
from typing import Any, Optional, Sequence

from audfer_jax import au
from audfer_jax import paths
from audfer_jax.export import forward as forward_lib
from audfer_jax.export import jax_format
from audfer_jax.export import manifest as manifest_lib
from audfer_jax.export import savedmodel

FORMATS = ("jax", "savedmodel")


@dataclasses.dataclass
class ExportResult:
    """What `export_checkpoint` wrote.

    Attributes:
        out: the export directory.
        manifest: the contents of its model.json.
        seconds: wall seconds per stage (`load`, `jax`, `savedmodel`, `manifest`).
    """
    out: str
    manifest: dict
    seconds: dict

    def sizes(self) -> dict:
        """Bytes per format: `{"jax": ..., "savedmodel": ...}` (model.json not counted)."""
        out = {}
        for name, entry in self.manifest["files"].items():
            fmt = "jax" if name == jax_format.FILENAME else "savedmodel"
            out[fmt] = out.get(fmt, 0) + int(entry["bytes"])
        return out


def _check_request(out: str, formats: Sequence[str], dtype: str) -> None:
    """Raises ExportError / FileExistsError for bad formats, dtype or a used `out`."""
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise forward_lib.ExportError(f"--format {','.join(formats)}: expected one or more "
                                      f"of {', '.join(FORMATS)}")
    if dtype not in forward_lib.DTYPES:
        raise forward_lib.ExportError(f"--dtype {dtype!r}: expected one of "
                                      f"{', '.join(forward_lib.DTYPES)}")
    if paths.exists(out) and (not paths.isdir(out) or paths.listdir(out)):
        raise FileExistsError(f"{out}: already exists and is not an empty folder; "
                              "choose a new --out")


def export_checkpoint(checkpoint: str, out: str, *, formats: Sequence[str] = FORMATS,
                      dtype: str = "float32", which: str = "best",
                      platforms: Sequence[str] = jax_format.PLATFORMS) -> ExportResult:
    """Writes the export of `checkpoint` into `out` (module docstring).

    Args:
        checkpoint: run directory, step directory or variables checkpoint.
        out: new (or empty) export directory.
        formats: subset of `FORMATS`.
        dtype: "float32" or "bfloat16" (`forward.model_for_dtype`).
        which: "best" or "last" step of a run directory.
        platforms: lowering platforms (subset of `jax_format.PLATFORMS`).

    Returns:
        An `ExportResult`.

    Raises:
        PredictError: the checkpoint cannot be read (as `predict` says it).
        ExportError: bad options, or a model that does not export.
        FileExistsError: `out` is in use.
    """
    from audfer_jax.inference import predictor as predictor_lib  # pylint: disable=g-import-not-at-top
    out = paths.resolve(out)
    _check_request(out, formats, dtype)
    formats = [f for f in FORMATS if f in formats]
    t0 = time.perf_counter()
    predictor = predictor_lib.load_predictor(checkpoint, which)
    name = str(predictor.config.get("model") if predictor.config else "model")
    model = forward_lib.model_for_dtype(predictor.model, dtype, name)
    variables = forward_lib.variables_for_dtype(predictor.variables, dtype)
    shape = (predictor.spec.num_frames, predictor.image_size, predictor.image_size)
    seconds = {"load": time.perf_counter() - t0}
    created = not paths.exists(out)
    paths.makedirs(out)
    try:
        entries = _write_formats(out, model, variables, shape, formats, platforms, seconds)
        t1 = time.perf_counter()
        manifest = _manifest(predictor, name, dtype, shape, checkpoint, entries)
        rels = [r for f in formats for r in manifest_lib.files_under(
                out, jax_format.FILENAME if f == "jax" else savedmodel.DIRNAME)]
        manifest["files"] = {r: manifest_lib.file_entry(paths.join(out, *r.split("/")))
                             for r in rels}
        manifest_lib.write(out, manifest)
    except BaseException:
        _remove_partial(out, created)
        raise
    seconds["manifest"] = time.perf_counter() - t1
    return ExportResult(out=out, manifest=manifest, seconds=seconds)


def _write_formats(out: str, model: Any, variables: Any, shape: tuple,
                   formats: Sequence[str], platforms: Sequence[str], seconds: dict) -> dict:
    """Writes the artifacts; returns model.json's `formats` and fills `seconds`.

    The SavedModel embeds the lowerings the jax.export artifact kept (a
    platform jax.export refused is not tried again).
    """
    entries, ok = {}, list(platforms)
    if "jax" in formats:
        t1 = time.perf_counter()
        exported, refused, forms = jax_format.export(model, variables, shape, platforms)
        jax_format.write(paths.join(out, jax_format.FILENAME), exported)
        ok = [p for p in platforms if p not in refused]
        entries["jax"] = {"file": jax_format.FILENAME, "platforms": ok,
                          "refused_platforms": refused, "layer_forms": forms,
                          "calling_convention_version": exported.calling_convention_version}
        seconds["jax"] = time.perf_counter() - t1
    if "savedmodel" in formats:
        t1 = time.perf_counter()
        forms = savedmodel.write(paths.join(out, savedmodel.DIRNAME), model, variables, shape,
                                 ok)
        entries["savedmodel"] = _savedmodel_entry(ok, forms)
        seconds["savedmodel"] = time.perf_counter() - t1
    return entries


def _remove_partial(out: str, created: bool) -> None:
    """Removes what a failed export wrote (local folders only): `out` itself when
    this export created it, else its contents (it was empty)."""
    if paths.is_remote(out) or not os.path.isdir(out):
        return
    if created:
        shutil.rmtree(out, ignore_errors=True)
        return
    for name in os.listdir(out):
        target = os.path.join(out, name)
        if os.path.isdir(target):
            shutil.rmtree(target, ignore_errors=True)
        else:
            os.remove(target)


def _savedmodel_entry(platforms: Sequence[str], forms: list) -> dict:
    """model.json's `formats.savedmodel`."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    return {"dir": savedmodel.DIRNAME, "signature": savedmodel.SIGNATURE,
            "input": savedmodel.INPUT_NAME, "platforms": list(platforms),
            "layer_forms": forms, "tensorflow": tf.__version__}


def _manifest(predictor: Any, name: str, dtype: str, shape: tuple, checkpoint: str,
              formats: dict) -> dict:
    """model.json without `files` (`manifest` module docstring)."""
    inp, outs = manifest_lib.io_entries(shape, len(predictor.class_names), au.NUM_AUS)
    prior: Optional[list] = None if predictor.prior is None else predictor.prior.tolist()
    return {
            "format": manifest_lib.FORMAT, "format_version": manifest_lib.FORMAT_VERSION,
            "model": name, "classes": list(predictor.class_names),
            "input": inp, "outputs": outs, "compute_dtype": dtype,
            "temporal_sampling": manifest_lib.sampling_entry(predictor.spec,
                                                             predictor.temporal_views),
            "spatial_preprocessing": manifest_lib.spatial_entry(
                    predictor.image_size, predictor.spatial_views, predictor.temporal_views),
            "normalisation": manifest_lib.normalisation_entry(name),
            "aus": manifest_lib.aus_entry(),
            "au_prior": {"label": predictor.prior_label, "matrix": prior},
            "source": {"checkpoint": paths.resolve(checkpoint), "loaded": predictor.source,
                       "step": predictor.step,
                       "config_fingerprint": manifest_lib.config_fingerprint(predictor.config),
                       "exported_at": datetime.datetime.now(datetime.timezone.utc)
                       .isoformat(timespec="seconds")},
            "versions": manifest_lib.versions(),
            "formats": formats,
    }
