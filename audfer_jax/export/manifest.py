"""`model.json`: what an exported model needs beside its program, and its checks.

The manifest is written after the artifacts, with their checksums, so that a
reader can tell a complete export from a damaged one. What it records:

* `classes` (label order), `input` (`[B, T, S, S, 3] uint8`, B free) and
  `outputs` (names, shapes, meaning), `compute_dtype`;
* `temporal_sampling`: frames per clip T, the run's evaluation scheme and its
  parameters (`data/sampling.py`, datasets.md section 7) with the index
  formula in words, and the temporal views;
* `spatial_preprocessing`: face crop, resize (bilinear, antialiased, aspect
  not kept; several spatial views: shorter side to S, evenly spaced crops),
  view order and how views combine (`inference/predict.py`);
* `normalisation`: what the program does to the uint8 pixels (inside it);
* `aus`: the 18 AU names, FACS numbers and names (`au.FACS_NAMES`), and
  `au_prior`: the run's AU-expression prior (for `predict --plot`);
* `source` (checkpoint, step, config fingerprint), `versions`, `platforms`,
  `files` (sha256 and size of every artifact file).

`ArtifactError` is every "this is not a usable export" answer: one line that
names the file.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from audfer_jax import paths

MODEL_JSON = "model.json"
FORMAT = "audfer_jax.export"
# Bumped when a reader of an older version could misread the files.
FORMAT_VERSION = 1
OUTPUTS = ("probs", "au_probs", "logits", "au_logits")
_HASH_CHUNK = 1 << 22


class ArtifactError(ValueError):
    """An export that is missing, damaged or incompatible; the message names the file."""


def _eval_formula(scheme: str) -> str:
    """The evaluation index rule of `sampling.eval_indices`, in words (N frames,
    T per clip, view v of V)."""
    if scheme == "segments":
        return ("if N > S + D - 1: start_i = floor((N - D + 1) * (2 * (i * V + v) + 1) / "
                "(2 * S * V)) for i in 0..S-1, frames start_i .. start_i + D - 1 "
                "(clamped to N - 1); else frames 0..N-1 padded to T (see pad), or with "
                "reference_quirks frames 0..D-1 repeated S times")
    if scheme == "uniform":
        return "index_i = min(floor(N * (i * V + v) / (T * V)), N - 1) for i in 0..T-1"
    return ("seq = 0, rate, 2 * rate, ... < N, padded to max(ceil(N / rate), T) entries "
            "(see pad); a T-long window of seq starting at floor((len(seq) - T) / 2) "
            "for V = 1, else floor(v * (len(seq) - T) / (V - 1))")


def sampling_entry(spec, temporal_views: int) -> dict:
    """`temporal_sampling` of model.json from a `sampling.SamplingSpec` and Vt."""
    return {"frames_per_clip": int(spec.num_frames), "scheme": spec.scheme,
            "num_segments": int(spec.num_segments),
            "frames_per_segment": int(spec.frames_per_segment),
            "rate": int(spec.rate), "pad": spec.pad,
            "pad_rule": ("edge: repeat the last index" if spec.pad == "edge"
                         else "loop: index i of k available is i mod k"),
            "reference_quirks": bool(spec.reference_quirks),
            "temporal_views": int(temporal_views),
            "eval_indices": _eval_formula(spec.scheme),
            "source": "audfer_jax.data.sampling.eval_indices (datasets.md section 7)"}


def spatial_entry(image_size: int, spatial_views: int, temporal_views: int) -> dict:
    """`spatial_preprocessing` of model.json (`inference/preprocess.py`)."""
    views = int(temporal_views) * int(spatial_views)
    resize = ("each frame resized to S x S (bilinear, antialiased when shrinking, as "
              "PIL Image.BILINEAR; aspect ratio not kept)" if spatial_views == 1 else
              "shorter side resized to S (bilinear, antialiased), then spatial_views "
              "S x S crops at offsets floor((extent - S) * k / (spatial_views - 1)) "
              "along both axes")
    return {"image_size": int(image_size), "face_crop": (
                "optional: one box (x0, y0, x1, y1) for the whole clip, cropped before "
                "resizing; audfer-jax predict finds it with dlib's HOG detector on the "
                "sampled frames, widened by a margin of 0.15 of the face side"),
            "resize": resize, "spatial_views": int(spatial_views),
            "clips_per_video": views,
            "view_order": "temporal view major, spatial view minor",
            "combine_views": ("class probabilities: mean over a video's views of probs; "
                              "AU probabilities: sigmoid of the mean over views of "
                              "au_logits")}


def normalisation_entry(model_name: str) -> dict:
    """What the exported program does to its uint8 pixels (`normalisation`).

    MAE-DFER: `/255`, then ImageNet mean/std (`models/mae_dfer.py`, timm's
    IMAGENET_DEFAULT_MEAN/STD); Former-DFER and M3DFEL: `/255` only; an
    import-path backbone: `/255` by the AU-head wrapper, then its own.
    """
    entry = {"inside_program": True, "input_range": [0, 255], "scale": 1.0 / 255.0,
             "mean": None, "std": None}
    if str(model_name).startswith("mae_dfer"):
        from audfer_jax.models import mae_dfer  # pylint: disable=g-import-not-at-top
        entry.update(mean=list(mae_dfer.IMAGENET_MEAN), std=list(mae_dfer.IMAGENET_STD))
    elif ":" in str(model_name):
        entry["note"] = "the backbone's own normalisation, if any, is inside the program"
    entry["rule"] = ("x = pixels / 255" + ("; x = (x - mean) / std per channel"
                                           if entry["mean"] else ""))
    return entry


def aus_entry() -> list[dict]:
    """The AU head's 18 outputs in order: name, FACS number and name (`au.FACS_NAMES`)."""
    from audfer_jax import au  # pylint: disable=g-import-not-at-top
    return [{"name": n, "number": int(n[2:]), "facs_name": au.FACS_NAMES[n]}
            for n in au.AU_NAMES]


def config_fingerprint(config: Any) -> Optional[str]:
    """sha256 of the run config as canonical JSON (sorted keys), or None without one."""
    if config is None:
        return None
    data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    text = json.dumps(data, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def versions() -> dict:
    """Versions of the software that wrote the export."""
    import jax  # pylint: disable=g-import-not-at-top
    import jaxlib  # pylint: disable=g-import-not-at-top
    import audfer_jax  # pylint: disable=g-import-not-at-top
    out = {"audfer_jax": audfer_jax.__version__, "jax": jax.__version__,
           "jaxlib": jaxlib.__version__}
    try:
        import flax  # pylint: disable=g-import-not-at-top
        out["flax"] = flax.__version__
    except ImportError:
        pass
    return out


def io_entries(input_shape: Sequence[int], num_classes: int, num_aus: int) -> tuple[dict, dict]:
    """`(input, outputs)` of model.json for clips `(T, S, S)`, C classes, A AUs."""
    t, h, w = (int(v) for v in input_shape)
    inp = {"name": "clips", "shape": [None, t, h, w, 3], "dtype": "uint8",
           "layout": "batch, frame, height, width, RGB", "range": [0, 255]}
    outs = {"probs": {"shape": [None, num_classes], "dtype": "float32",
                      "what": "softmax of the expression logits, per clip"},
            "au_probs": {"shape": [None, num_aus], "dtype": "float32",
                         "what": "sigmoid of the AU logits, per clip (auxiliary head)"},
            "logits": {"shape": [None, num_classes], "dtype": "float32",
                       "what": "expression logits"},
            "au_logits": {"shape": [None, num_aus], "dtype": "float32",
                          "what": "AU logits"}}
    return inp, outs


def file_entry(path: str) -> dict:
    """`{"sha256", "bytes"}` of one file."""
    digest, size = hashlib.sha256(), 0
    with paths.open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return {"sha256": digest.hexdigest(), "bytes": size}


def files_under(out: str, rel: str) -> list[str]:
    """Relative paths of the files at or under `out/rel`, sorted ('/'-separated)."""
    root = paths.join(out, rel)
    if not paths.isdir(root):
        return [rel] if paths.isfile(root) else []
    found = []
    for name in paths.listdir(root):
        found.extend(files_under(out, f"{rel}/{name}"))
    return sorted(found)


def write(out: str, manifest: Mapping[str, Any]) -> str:
    """Writes `out/model.json` (indented, sorted keys) and returns its path."""
    path = paths.join(out, MODEL_JSON)
    paths.write_text(path, json.dumps(manifest, indent=2, sort_keys=True,
                                      default=_json_default) + "\n")
    return path


def _json_default(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def read(directory: str) -> dict:
    """`directory/model.json`, checked to be an export this version can read.

    Raises:
        ArtifactError: missing or unreadable, not an export manifest, a newer
            format version, or required keys missing (names the file).
    """
    path = paths.join(directory, MODEL_JSON)
    if not paths.isfile(path):
        raise ArtifactError(f"{path}: missing; not an audfer-jax export directory "
                            "(write one with `audfer-jax export`)")
    try:
        data = json.loads(paths.read_text(path))
    except (ValueError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ArtifactError(f"{path}: not an audfer-jax export manifest "
                            f"(format {data.get('format') if isinstance(data, dict) else None!r})")
    if int(data.get("format_version", 0)) > FORMAT_VERSION:
        raise ArtifactError(f"{path}: format version {data['format_version']} is newer than "
                            f"this audfer_jax reads ({FORMAT_VERSION}); upgrade audfer_jax")
    missing = [k for k in ("classes", "input", "temporal_sampling", "spatial_preprocessing",
                           "files", "formats") if k not in data]
    if missing:
        raise ArtifactError(f"{path}: missing keys {missing}")
    return data


def verify_files(directory: str, manifest: Mapping[str, Any], rel: str) -> None:
    """Checks every file of the artifact `rel` against model.json's size and sha256.

    Raises:
        ArtifactError: a file listed is missing, has another size or sha256
            (damaged or replaced), or the artifact has files model.json does
            not list (names the first such file).
    """
    listed = {k: v for k, v in manifest["files"].items() if k == rel or k.startswith(rel + "/")}
    if not listed:
        raise ArtifactError(f"{paths.join(directory, rel)}: not listed in "
                            f"{paths.join(directory, MODEL_JSON)}")
    for name in sorted(listed):
        path = paths.join(directory, *name.split("/"))
        if not paths.isfile(path):
            raise ArtifactError(f"{path}: missing (listed in {MODEL_JSON})")
        # The size first: a truncated local file is told without reading it.
        size = None if paths.is_remote(path) else os.path.getsize(path)
        if size is not None and size != listed[name]["bytes"]:
            raise ArtifactError(f"{path}: {size} bytes, {MODEL_JSON} says "
                                f"{listed[name]['bytes']}: damaged or replaced")
        if file_entry(path)["sha256"] != listed[name]["sha256"]:
            raise ArtifactError(f"{path}: sha256 differs from {MODEL_JSON}: damaged or "
                                "replaced")
    extra = sorted(set(files_under(directory, rel)) - set(listed))
    if extra:
        raise ArtifactError(f"{paths.join(directory, extra[0])}: not listed in {MODEL_JSON} "
                            "(a file added after the export)")
