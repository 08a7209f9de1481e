"""`audfer-jax predict`: expression and AU probabilities for one video or frame folder.

    audfer-jax predict --checkpoint runs/x VIDEO_OR_FRAME_DIR [--top_k 3]
        [--json out.json] [--detect_face | --no_detect_face] [--which best|last]
        [--plot out.png] [--timeline out.csv] [--window_seconds 2]
        [--stride_seconds 0.5] [--window_batch 8] [--fps 30]

Steps, each mirroring the evaluation input pipeline (`data/pipeline.py`) of
the run that made the checkpoint:

1. Read every frame, once (`video.py`): a video with PyAV (any container/codec
   FFmpeg decodes), or an image folder (`.jpg/.jpeg/.png`) ordered by the
   trailing integer of each file stem, like the dataset readers (`1.jpg,
   2.jpg, ..., 10.jpg`, not lexicographic; datasets.md section 0).
2. Find the face (on by default for a video file, off for a frame folder,
   which is usually a face crop already; `--detect_face/--no_detect_face`):
   the largest frontal face in each frame the model will see, by dlib's HOG +
   linear SVM detector (`dlib.get_frontal_face_detector`, Dalal-Triggs HOG
   features; its model is compiled into the library, nothing is downloaded),
   then one crop for the whole clip: the median centre and median side of the
   per-frame boxes, made square and widened by `margin` of the side on each
   side. Frames without a detection use that crop and are counted in the
   output; a clip with no face in any checked frame gets no expression
   (`NoFaceError`; the CLI exits with status 3, or writes an explicit
   "no face" result with `--json`).
3. Sample T frames with the run's deterministic evaluation scheme
   (`sampling.eval_indices`, datasets.md section 7) and `eval_temporal_views`
   views; resize each frame to S x S (bilinear, antialiased; aspect not kept,
   as the references and the pipeline do) or, with several spatial views,
   shorter side to S and evenly spaced S x S crops.
4. Apply the model in eval mode; class probabilities are the mean over views
   of the softmax (as the trainer's eval step and MAE-DFER's multi-view test),
   AU probabilities the sigmoid of the view-averaged AU logits.

With a timeline (`timeline.predict_timeline`), steps 2-4 run again on every window
of W seconds every S seconds (`video.window_bounds`), windows batched into
one compiled shape; the face detector's result for a frame is reused by every
window that samples it. `--plot` draws the clip's prediction
(`figures/predict.py`).

The AU head is an auxiliary training head of AU-DFER (au_dfer_method.md
section 1); its probabilities are shown for inspection only.

Checkpoints accepted by `load_predictor`:
* a training run directory (`config.json` + `best/<step>` and/or
  `checkpoints/<step>`, written by `train.py`): its best state by default;
* one step directory `RUN/checkpoints/<step>` or `RUN/best/<step>`;
* a variables checkpoint written by `checkpoint.save_variables`, whose
  metadata names the model: `model` (registry name or import path
  `package.module:factory`, imported again here), `class_names`, and
  optionally `model_overrides` (dict), `data` (data-config fields such as
  `num_frames`, `image_size`, `sampling`, ...) or a whole run `config` dict.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from audfer_jax.cli import errors as cli_errors
from audfer_jax import paths
from audfer_jax import video
from audfer_jax.data import sampling
# Reading and windowing live in `video.py`; these names stay importable here.
from audfer_jax.video import (PredictError, VIDEO_HINT, read_clip,  # noqa: F401
                              read_frame_folder, read_video)


# ---------------------------------------------------------------------------
# Face box.
# ---------------------------------------------------------------------------

def combine_face_boxes(boxes: Sequence[Optional[Sequence[float]]], height: int, width: int,
                       margin: float = 0.15) -> Optional[tuple[int, int, int, int]]:
    """One square crop for a clip from per-frame face boxes.

    The centre is the median of the per-frame box centres and the side the
    median of the per-frame `max(w, h)`, widened by `margin * side` on each
    side (medians ignore a few missed or spurious detections). The square is
    shifted to lie inside the frame where it fits, else clipped to the frame.

    Args:
        boxes: per frame `(x, y, w, h)` in pixels (left, top, width, height),
            or None where no face was found.
        height, width: frame size in pixels.
        margin: fraction of the face side added on each side.

    Returns:
        `(x0, y0, x1, y1)` integer pixel bounds (x1, y1 exclusive), or None
        when no frame has a face.
    """
    found = np.asarray([b for b in boxes if b is not None], np.float64).reshape(-1, 4)
    if found.size == 0:
        return None
    cx = float(np.median(found[:, 0] + found[:, 2] / 2))
    cy = float(np.median(found[:, 1] + found[:, 3] / 2))
    side = float(np.median(np.maximum(found[:, 2], found[:, 3]))) * (1 + 2 * margin)
    side = int(round(min(side, height, width)))

    def span(centre, size):
        lo = int(round(centre - side / 2))
        lo = min(max(lo, 0), size - side)
        return lo, lo + side

    x0, x1 = span(cx, width)
    y0, y1 = span(cy, height)
    return x0, y0, x1, y1


# dlib's HOG detector scans an 80 x 80 window; frames whose shorter side is
# below this are upsampled once (x2), which finds faces down to ~40 px at 4x
# the cost (dlib's face_detector.py example: "upsample ... to detect more faces").
UPSAMPLE_BELOW = 320


class NoFaceError(PredictError):
    """Face detection is on and no checked frame of the clip has a face.

    Attributes:
        detections: the `FaceDetections` that found nothing.
    """

    def __init__(self, message: str, detections: "FaceDetections"):
        super().__init__(message)
        self.detections = detections


@dataclasses.dataclass(frozen=True)
class FaceDetections:
    """Per-frame face detections of one clip and the crop made from them.

    Attributes:
        frame_indices: the frames the detector ran on (indices into the clip).
        boxes: per checked frame, the largest face `(x, y, w, h)` in pixels
            (may extend past the frame border, as dlib reports it), or None.
        box: the clip's crop `(x0, y0, x1, y1)` (`combine_face_boxes`), or
            None when no checked frame has a face.
    """
    frame_indices: tuple
    boxes: tuple
    box: Optional[tuple]

    @property
    def num_checked(self) -> int:
        return len(self.frame_indices)

    @property
    def num_with_face(self) -> int:
        return sum(b is not None for b in self.boxes)

    @property
    def frames_without_face(self) -> list:
        return [int(i) for i, b in zip(self.frame_indices, self.boxes) if b is None]

    def summary(self) -> dict:
        """JSON-ready `{detector, frames_checked, frames_with_face, frames_without_face}`."""
        return {"detector": FACE_DETECTOR, "frames_checked": self.num_checked,
                "frames_with_face": self.num_with_face,
                "frames_without_face": self.frames_without_face}


FACE_DETECTOR = "dlib HOG frontal face detector"


@functools.lru_cache(maxsize=1)
def _detector():
    """dlib's HOG + linear SVM frontal face detector; its model is compiled into dlib."""
    try:
        import dlib  # pylint: disable=g-import-not-at-top
    except ImportError as e:
        raise PredictError(f"face detection needs dlib ({e}); install the pinned "
                           "`dlib-bin` wheel (setup.cfg) or pass --no_detect_face") from None
    return dlib.get_frontal_face_detector()


def largest_face(frame: np.ndarray, detector=None) -> Optional[tuple[int, int, int, int]]:
    """The largest frontal face in a frame, or None.

    Args:
        frame: `[H, W, 3] uint8` RGB.
        detector: a dlib face detector (default: `dlib.get_frontal_face_detector()`).

    Returns:
        `(x, y, w, h)` in pixels of the largest detection (dlib's default
        score threshold 0), or None when there is none.
    """
    detector = _detector() if detector is None else detector
    frame = np.ascontiguousarray(frame, dtype=np.uint8)
    upsample = 1 if min(frame.shape[:2]) < UPSAMPLE_BELOW else 0
    rects = detector(frame, upsample)
    if len(rects) == 0:
        return None
    r = max(rects, key=lambda r: r.width() * r.height())
    return int(r.left()), int(r.top()), int(r.width()), int(r.height())


def detect_faces(frames: np.ndarray, frame_indices: Optional[Sequence[int]] = None,
                 margin: float = 0.15, cache: Optional[dict] = None) -> FaceDetections:
    """Runs the face detector on some frames of a clip and makes the clip's crop.

    Policy: one square crop for the whole clip (`combine_face_boxes`: median
    centre and side of the frames that have a face), applied to every frame,
    those without a detection included; how many had none is reported
    (`FaceDetections.frames_without_face`), never hidden.

    Args:
        frames: `[N, H, W, 3] uint8`.
        frame_indices: frames to run the detector on (default: up to 16
            evenly spaced ones); `predict_clip` passes the frames the model sees.
        margin: see `combine_face_boxes`.
        cache: optional `{frame index: box or None}`, read and filled, so that
            the detector runs once per frame however many windows share it.

    Returns:
        `FaceDetections`; its `box` is None when no checked frame has a face.
    """
    n, h, w = frames.shape[:3]
    if frame_indices is None:
        frame_indices = np.unique(np.linspace(0, n - 1, min(n, 16)).round().astype(int))
    detector = _detector()
    indices = tuple(int(i) for i in frame_indices)
    cache = {} if cache is None else cache
    for i in indices:
        if i not in cache:
            cache[i] = largest_face(frames[i], detector)
    boxes = tuple(cache[i] for i in indices)
    return FaceDetections(indices, boxes, combine_face_boxes(boxes, h, w, margin))


def detect_face_box(frames: np.ndarray, frame_indices: Optional[Sequence[int]] = None,
                    margin: float = 0.15) -> Optional[tuple[int, int, int, int]]:
    """One face crop `(x0, y0, x1, y1)` for a clip, or None if no face is found.

    See `detect_faces` (this is its `box`).
    """
    return detect_faces(frames, frame_indices, margin).box


# ---------------------------------------------------------------------------
# The model.
# ---------------------------------------------------------------------------

@dataclasses.dataclass
class Predictor:
    """A model ready for inference.

    Attributes:
        model: the Flax module (`models.get_model`).
        variables: `{'params': ..., 'batch_stats'?: ...}`.
        class_names: C names in label order.
        spec: the evaluation `SamplingSpec` of the run.
        temporal_views, spatial_views: evaluation views (1, 1 except MAE-DFER).
        image_size: S, the model's input side in pixels.
        source: what was loaded (path and step).
        apply: jitted `(variables, clips [V, T, S, S, 3] uint8) -> ModelOutput`.
        prior: the run's AU-expression prior `[C, 18] float32` (the matrix W
            its AU loss weighs with, before the x5 scale; `run_prior`), or
            None when the checkpoint does not determine it.
        prior_label: what `prior` is, or why there is none.
    """
    model: Any
    variables: Any
    class_names: list
    spec: sampling.SamplingSpec
    temporal_views: int
    spatial_views: int
    image_size: int
    source: str
    apply: Callable = None
    prior: Optional[np.ndarray] = None
    prior_label: str = ""

    def __post_init__(self):
        if self.apply is None:
            self.apply = functools.partial(_eval_apply(), self.model)


@functools.lru_cache(maxsize=1)
def _eval_apply():
    """`jit(model.apply(variables, clips, train=False))` with the module static.

    Flax modules hash and compare by their attributes, so predictors of equal
    models (the CLI and the API in one process) share one compilation.
    """
    import jax  # pylint: disable=g-import-not-at-top
    return jax.jit(lambda model, v, x: model.apply(v, x, train=False), static_argnums=0)


def _data_config(config):
    """The run's validated `DataConfig` (`config.data`, as the trainer reads it)."""
    from audfer_jax.data import config as data_config_lib  # pylint: disable=g-import-not-at-top
    return data_config_lib.DataConfig.from_config(config.get("data", {}) or {}, strict=False)


def _class_names(meta: Mapping, config) -> list:
    """Class names: the checkpoint's, else the config dataset's, else by count.

    A converted checkpoint (`audfer-jax convert`) stores only `num_classes`:
    7 gets the DFEW/FERV39k names, 11 the MAFW names, others `class_<k>`.
    """
    from audfer_jax import classes  # pylint: disable=g-import-not-at-top
    if meta.get("class_names"):
        return list(meta["class_names"])
    dc = config.get("data", {}) or {}
    dataset = dc.get("dataset", dc.get("name"))
    if dataset:
        return list(classes.class_names(dataset))
    n = int(meta.get("num_classes", len(classes.DFEW_CLASSES)))
    by_count = {len(classes.DFEW_CLASSES): classes.DFEW_CLASSES,
                len(classes.MAFW_CLASSES): classes.MAFW_CLASSES}
    return list(by_count.get(n, [f"class_{k}" for k in range(n)]))


def run_prior(config, num_classes: int) -> tuple[Optional[np.ndarray], str]:
    """The AU-expression prior a run trained with, as `experiment.resolve_loss` picks it.

    `config.au.prior` names a matrix of `au.PRIOR_NAMES`, or `dataset` (the
    dataset's own; DFEW's for the demo set), or `from_data` (estimated from
    the training AU labels; not stored in a checkpoint).

    Args:
        config: the run's config (may be empty for a variables checkpoint).
        num_classes: C, the model's classes.

    Returns:
        `(W [C, 18] float32 or None, label)`: the label names the matrix, or
        says why there is none.
    """
    from audfer_jax import au  # pylint: disable=g-import-not-at-top
    au_cfg = config.get("au") or {}
    if not au_cfg:
        return None, "no AU prior: the checkpoint holds no run config"
    if config.get("loss") == "ce":
        return None, "no AU prior: the run trained with cross-entropy only (loss=ce)"
    dc = config.get("data", {}) or {}
    dataset = dc.get("dataset", dc.get("name"))
    name = au_cfg.get("prior", "dataset")
    if name == "dataset":
        name = {"demo": "dfew"}.get(dataset, dataset)
    if name == "from_data":
        return None, ("no AU prior shown: the run estimated it from its training AU "
                      "labels (au.prior=from_data), which the checkpoint does not store")
    try:
        w = au.prior(name)
    except ValueError:
        return None, f"no AU prior: the run's prior {name!r} is not a published matrix"
    if w.shape[0] != num_classes:
        return None, f"no AU prior: {name!r} has {w.shape[0]} rows for {num_classes} classes"
    return w, f"AU-expression prior '{name}' (au_prior.json; the run's au.prior)"


def _build_model(config, num_classes: int, where: str):
    """`model_state.build_model`; a user backbone (`config.model` an import path) that
    cannot be imported or built again here is a PredictError naming `where`."""
    from audfer_jax import model_state, models  # pylint: disable=g-import-not-at-top
    try:
        return model_state.build_model(config, num_classes)
    except models.BackboneError as e:
        raise PredictError(f"{where}: cannot rebuild the run's model ({e})") from None


def _variables_shape(model, input_shape):
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    rng = jax.random.PRNGKey(0)
    return jax.eval_shape(lambda: model.init({"params": rng, "dropout": rng}, jnp.zeros(
            (1, *input_shape, 3), jnp.uint8), train=False))


def _abstract_train_state(config, model, input_shape):
    """The `steps.TrainState` structure of a run, as `ShapeDtypeStruct`s (no memory).

    The optimizer state's structure does not depend on the schedule lengths,
    so steps_per_epoch = 1 is enough to rebuild it.
    """
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    from audfer_jax import model_state, optim, steps  # pylint: disable=g-import-not-at-top
    shapes = _variables_shape(model, input_shape)
    params = shapes["params"]
    tx, _ = optim.make_optimizer(config.optim, params, steps_per_epoch=1,
                                 num_epochs=int(config.get("num_epochs", 1)),
                                 global_batch_size=int(config.get("batch_size", 1)),
                                 num_layers=model_state.model_depth(model))
    key = jax.eval_shape(lambda: jax.random.PRNGKey(0))
    return steps.TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params,
                            batch_stats=shapes.get("batch_stats", {}),
                            opt_state=jax.eval_shape(tx.init, params), rng=key)


def _is_variables_checkpoint(path: str) -> bool:
    return (paths.isdir(paths.join(path, "variables"))
            and paths.isdir(paths.join(path, "metadata")))


def _is_state_step(path: str) -> bool:
    return paths.isdir(paths.join(path, "state"))


def _newest_step(directory: str) -> Optional[str]:
    if not paths.isdir(directory):
        return None
    steps = sorted(int(n) for n in paths.listdir(directory)
                   if n.isdigit() and _is_state_step(paths.join(directory, n)))
    return paths.join(directory, str(steps[-1])) if steps else None


def _fit_spec(spec: sampling.SamplingSpec, num_frames: int) -> sampling.SamplingSpec:
    """`spec` with T = `num_frames` when they differ.

    Only a variables checkpoint without data settings gets here (a run's
    config always agrees with its model): `segments` keeps D frames per
    segment when T is a multiple of D, else uses T segments of 1 frame.
    """
    if spec.num_frames == num_frames:
        return spec
    d = spec.frames_per_segment if num_frames % spec.frames_per_segment == 0 else 1
    return dataclasses.replace(spec, num_frames=num_frames, num_segments=num_frames // d,
                               frames_per_segment=d)


def load_predictor(checkpoint: str, which: str = "best") -> Predictor:
    """Builds the model and restores its variables from a checkpoint.

    Args:
        checkpoint: a run directory, a step directory or a variables checkpoint
            (see the module docstring).
        which: for a run directory, `best` (default; falls back to the newest
            latest checkpoint when the run has no best one yet) or `last`.

    Returns:
        A `Predictor`.

    Raises:
        PredictError: the path does not exist or holds no usable checkpoint, or
            its metadata does not name the model (names the path and what is
            missing).
    """
    import jax  # pylint: disable=g-import-not-at-top
    import ml_collections  # pylint: disable=g-import-not-at-top
    from audfer_jax import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
    from audfer_jax import model_state  # pylint: disable=g-import-not-at-top
    path = paths.resolve(checkpoint)
    if not paths.exists(path):
        raise PredictError(f"{path}: checkpoint not found (expected a training run "
                           "directory, a step directory or a variables checkpoint)")
    if which not in ("best", "last"):
        raise PredictError(f"which={which!r}: expected 'best' or 'last'")

    if _is_variables_checkpoint(path):
        try:
            variables, meta = ckpt_lib.restore_variables(path)
        except (ValueError, KeyError, FileNotFoundError) as e:
            raise PredictError(f"{path}: unreadable variables checkpoint ({e})") from e
        config = ml_collections.ConfigDict(meta.get("config") or {})
        if not config.get("model"):
            if not meta.get("model"):
                raise PredictError(f"{path}: variables checkpoint metadata names no model "
                                   f"(keys: {sorted(meta)}); expected 'model' and "
                                   "'class_names'")
            config = ml_collections.ConfigDict({
                    "model": meta["model"],
                    "model_overrides": dict(meta.get("model_overrides") or {}),
                    "data": dict(meta.get("data") or {})})
        class_names = _class_names(meta, config)
        model = _build_model(config, len(class_names), path)
        source = path
    else:
        if _is_state_step(path):
            step_dir, run_dir = path, paths.dirname(paths.dirname(path))
        else:
            run_dir = path
            order = ("best", "checkpoints") if which == "best" else ("checkpoints",)
            step_dir = None
            for sub in order:
                step_dir = _newest_step(paths.join(path, sub))
                if step_dir:
                    break
            if step_dir is None:
                raise PredictError(f"{path}: no checkpoint found (looked for "
                                   f"{' and '.join(o + '/<step>' for o in order)}, or a "
                                   "variables checkpoint)")
        config_path = paths.join(run_dir, "config.json")
        if not paths.isfile(config_path):
            raise PredictError(f"{config_path}: the run's config is missing; it is needed "
                               f"to rebuild the model of {step_dir}")
        config = ml_collections.ConfigDict(json.loads(paths.read_text(config_path)))
        # Class names live in the checkpoint's meta; the model needs their count
        # first, so take the dataset's names and check them after restoring.
        class_names = _class_names({}, config)
        model = _build_model(config, len(class_names), run_dir)
        input_shape = model_state.model_input_shape(model, config.model, _data_config(config))
        try:
            state, meta = ckpt_lib.restore_state_from_directory(
                    step_dir, _abstract_train_state(config, model, input_shape))
        except (ValueError, KeyError, TypeError, FileNotFoundError) as e:
            raise PredictError(f"{step_dir}: cannot restore a {config.model} train state "
                               f"with the run's config ({type(e).__name__}: {e})") from e
        probe_names = meta.get("class_names")
        if probe_names and list(probe_names) != class_names:
            raise PredictError(f"{step_dir}: checkpoint classes {probe_names} differ from "
                               f"the config's dataset classes {class_names}")
        variables = {"params": state.params}
        if jax.tree.leaves(state.batch_stats):
            variables["batch_stats"] = state.batch_stats
        source = f"{step_dir} (step {meta.get('step', paths.basename(step_dir))})"

    dc = _data_config(config)
    input_shape = model_state.model_input_shape(model, config.model, dc)
    spec = _fit_spec(sampling.spec_from_config(dc), input_shape[0])
    prior, prior_label = run_prior(config, len(class_names))
    return Predictor(model=model, variables=variables, class_names=list(class_names),
                     spec=spec, temporal_views=dc.eval_temporal_views,
                     spatial_views=dc.eval_spatial_views,
                     image_size=int(input_shape[1]), source=source,
                     prior=prior, prior_label=prior_label)


# ---------------------------------------------------------------------------
# Inference.
# ---------------------------------------------------------------------------

def _resize(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear, antialiased when shrinking (PIL), `[h, w, 3] uint8`."""
    from PIL import Image  # pylint: disable=g-import-not-at-top
    if frame.shape[:2] == (height, width):
        return frame
    return np.asarray(Image.fromarray(frame).resize((width, height), Image.BILINEAR),
                      np.uint8)


def spatial_views(frames: np.ndarray, size: int, views: int = 1) -> np.ndarray:
    """`[F, H, W, 3] uint8` -> `[views, F, S, S, 3] uint8`.

    One view: each frame resized to S x S (aspect not kept, as the pipeline).
    Several: shorter side to S, then `views` S x S crops evenly spaced along
    both axes (start `(extent - S) * v / (views - 1)`), as `data/pipeline.py`.
    """
    if views == 1:
        return np.stack([_resize(f, size, size) for f in frames])[None]
    h, w = frames.shape[1:3]
    scale = size / min(h, w)
    nh, nw = max(size, int(round(h * scale))), max(size, int(round(w * scale)))
    big = np.stack([_resize(f, nh, nw) for f in frames])
    out = []
    for v in range(views):
        y0 = ((nh - size) * v) // (views - 1)
        x0 = ((nw - size) * v) // (views - 1)
        out.append(big[:, y0:y0 + size, x0:x0 + size])
    return np.stack(out)


def prepare_clip(frames: np.ndarray, predictor: Predictor,
                 face_box: Optional[Sequence[int]] = None) -> tuple[np.ndarray, np.ndarray]:
    """Samples, crops and resizes a clip the way the run's eval pipeline does.

    Args:
        frames: `[N, H, W, 3] uint8`, all frames of the clip.
        predictor: gives the sampling spec, views and input side S.
        face_box: optional `(x0, y0, x1, y1)` crop applied to every frame.

    Returns:
        `(clips [Vt * Vs, T, S, S, 3] uint8, indices [Vt, T] int32)`; view
        order: temporal view major, spatial view minor (as the pipeline).
    """
    n = frames.shape[0]
    idx = sampling.eval_indices(n, predictor.spec, predictor.temporal_views)   # [Vt, T]
    return prepare_indices(frames, idx, predictor, face_box), idx


def prepare_indices(frames: np.ndarray, idx: np.ndarray, predictor: Predictor,
                    face_box: Optional[Sequence[int]] = None) -> np.ndarray:
    """Crops and resizes the frames `idx [Vt, T]` of `frames` into model input.

    Returns:
        `[Vt * Vs, T, S, S, 3] uint8`, temporal view major (see `prepare_clip`).
    """
    uniq, pos = np.unique(idx.reshape(-1), return_inverse=True)
    picked = frames[uniq]
    if face_box is not None:
        x0, y0, x1, y1 = (int(v) for v in face_box)
        picked = picked[:, y0:y1, x0:x1]
    views = spatial_views(picked, predictor.image_size, predictor.spatial_views)  # [Vs,U,..]
    clip = views[:, pos.reshape(idx.shape)]               # [Vs, Vt, T, S, S, 3]
    clip = np.swapaxes(clip, 0, 1).reshape((-1,) + clip.shape[2:])
    return np.ascontiguousarray(clip)


def check_frames(frames) -> np.ndarray:
    """`frames` as `[N, H, W, 3] uint8`, N >= 1; PredictError naming the shape or dtype."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise PredictError(f"frames must be [N, H, W, 3] with N >= 1, got shape {frames.shape}")
    if frames.dtype != np.uint8:
        raise PredictError(f"frames must be uint8 (0..255), got {frames.dtype}")
    return frames


def view_mean_probabilities(out, views: int) -> tuple[np.ndarray, np.ndarray]:
    """Model output over `[B * views]` clips -> `(probs [B, C], au_probs [B, A])` float64.

    Class probabilities: mean over a clip's views of the softmax (as the
    trainer's eval step); AU probabilities: sigmoid of the view-mean AU logits.
    """
    import jax  # pylint: disable=g-import-not-at-top
    logits = np.asarray(jax.device_get(out.logits), np.float64)
    au_logits = np.asarray(jax.device_get(out.au_logits), np.float64)
    logits = logits.reshape(-1, views, logits.shape[-1])
    au_logits = au_logits.reshape(-1, views, au_logits.shape[-1])
    z = logits - logits.max(-1, keepdims=True)
    probs = (np.exp(z) / np.exp(z).sum(-1, keepdims=True)).mean(1)
    au_probs = 1.0 / (1.0 + np.exp(-au_logits.mean(1)))
    return probs, au_probs


def _clip_face(frames, idx, margin, cache) -> FaceDetections:
    """`detect_faces` on the frames `idx` the model sees; NoFaceError when none has a face."""
    detection = detect_faces(frames, np.unique(idx), margin, cache)
    if detection.box is None:
        raise NoFaceError(
                f"no face in any of the {detection.num_checked} frames checked "
                f"({FACE_DETECTOR}); no expression predicted. For input that is "
                "already a face crop, pass --no_detect_face", detection)
    return detection


def predict_clip(frames_uint8: np.ndarray, predictor: Predictor | str, *,
                 detect_face: bool = False, face_box: Optional[Sequence[int]] = None,
                 face_margin: float = 0.15, top_k: int = 3,
                 face_cache: Optional[dict] = None, return_clips: bool = False):
    """Class and AU probabilities of one clip.

    Args:
        frames_uint8: `[N, H, W, 3] uint8` RGB, every frame of the clip in
            temporal order (N >= 1; short clips are padded by the sampler).
        predictor: a `Predictor`, or a checkpoint path for `load_predictor`.
        detect_face: find one face box for the clip (`detect_faces`, dlib's
            HOG detector on the frames the model sees) and crop it.
        face_box: an explicit `(x0, y0, x1, y1)` crop instead.
        face_margin: margin of the detected box, fraction of the face side.
        top_k: how many classes `top_k` lists.
        face_cache: per-frame detections to reuse and fill (`detect_faces`).
        return_clips: also return the model's input.

    Returns:
        `{"class_names": [C], "probs": [C] floats summing to 1 (mean over views
        of the softmax), "probabilities": {name: p}, "top_class", "top_prob",
        "top_k": [[name, p], ...], "au_names": [18], "au_probs": [18] sigmoid of
        the view-mean AU logits, "au_probabilities": {AU: p}, "frame_indices":
        [Vt, T], "num_frames": N, "views": Vt * Vs, "face_box": box or None,
        "face_found": True with detection, else None, "face_detection":
        `FaceDetections.summary()` with detection, else None}`; with
        `return_clips`, `(that dict, clips [Vt * Vs, T, S, S, 3] uint8)`.

    Raises:
        PredictError: bad frames (shape, dtype).
        NoFaceError: `detect_face` and no checked frame has a face (no
            expression is computed for a clip without a face).
    """
    from audfer_jax import au  # pylint: disable=g-import-not-at-top
    frames = check_frames(frames_uint8)
    if isinstance(predictor, (str, os.PathLike)):
        predictor = load_predictor(os.fspath(predictor))
    face_found = detection = None
    if face_box is None and detect_face:
        idx = sampling.eval_indices(frames.shape[0], predictor.spec, predictor.temporal_views)
        detection = _clip_face(frames, idx, face_margin, face_cache)
        face_box, face_found = detection.box, True
    clips, idx = prepare_clip(frames, predictor, face_box)
    probs, au_probs = view_mean_probabilities(predictor.apply(predictor.variables, clips),
                                     clips.shape[0])
    probs, au_probs = probs[0], au_probs[0]
    names = list(predictor.class_names)
    order = np.argsort(-probs, kind="stable")
    au_names = list(au.AU_NAMES)[:au_probs.shape[0]]
    result = {
        "class_names": names,
        "probs": probs.tolist(),
        "probabilities": {n: float(p) for n, p in zip(names, probs)},
        "top_class": names[int(order[0])],
        "top_prob": float(probs[order[0]]),
        "top_k": [[names[int(i)], float(probs[i])] for i in order[:max(1, top_k)]],
        "au_names": au_names,
        "au_probs": au_probs.tolist(),
        "au_probabilities": {n: float(p) for n, p in zip(au_names, au_probs)},
        "frame_indices": idx.tolist(),
        "num_frames": int(frames.shape[0]),
        "views": int(clips.shape[0]),
        "face_box": None if face_box is None else [int(v) for v in face_box],
        "face_found": face_found,
        "face_detection": None if detection is None else detection.summary(),
    }
    return (result, clips) if return_clips else result


def no_face_result(detections: FaceDetections, num_frames: int) -> dict:
    """The explicit result for a clip without a face: no class, no probabilities."""
    return {"face_found": False, "top_class": None, "probabilities": None,
            "num_frames": int(num_frames), "face_box": None,
            "face_detection": detections.summary(),
            "message": "no face found; no expression predicted"}


def format_prediction(result: Mapping[str, Any], source: str = "") -> str:
    """Human-readable text of a `predict_clip` result."""
    lines = []
    if source:
        lines.append(f"input: {source} ({result['num_frames']} frames, "
                     f"{result['views']} view(s))")
    if result.get("face_box") is not None:
        lines.append(f"face box (x0, y0, x1, y1): {tuple(result['face_box'])}")
    found = result.get("face_detection")
    if found:
        missing = found["frames_without_face"]
        lines.append(f"face found in {found['frames_with_face']} of "
                     f"{found['frames_checked']} frames checked"
                     + (f"; frames {missing} have none and use the clip's face box"
                        if missing else ""))
    names = result["class_names"]
    width = max(len(n) for n in names)
    lines.append("class probabilities:")
    for n in names:
        lines.append(f"  {n:<{width}}  {result['probabilities'][n]:.4f}")
    lines.append(f"top class: {result['top_class']} ({result['top_prob']:.4f})")
    lines.append("top-%d: %s" % (len(result["top_k"]),
                                 ", ".join(f"{n} {p:.4f}" for n, p in result["top_k"])))
    lines.append("AU head probabilities (auxiliary training head, not used for the "
                 "expression):")
    items = list(result["au_probabilities"].items())
    for i in range(0, len(items), 6):
        lines.append("  " + "  ".join(f"{k} {v:.3f}" for k, v in items[i:i + 6]))
    return "\n".join(lines)


NO_FACE_STATUS = 3


def _seconds_flag(value: str) -> float:
    """argparse type of `--window_seconds`/`--stride_seconds`: a number > 0."""
    try:
        return video.check_seconds("", value)
    except PredictError:
        raise argparse.ArgumentTypeError(
                f"expected a number of seconds > 0, got {value!r}") from None


def _fps_flag(value: str) -> float:
    """argparse type of `--fps`: a finite number > 0."""
    try:
        fps = float(value)
    except ValueError:
        fps = float("nan")
    if not (np.isfinite(fps) and fps > 0):
        raise argparse.ArgumentTypeError(f"expected frames per second > 0, got {value!r}")
    return fps


def _count_flag(value: str) -> int:
    """argparse type of `--window_batch`: an integer >= 1."""
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value!r}")
    return n


def write_plot(path: str, result: Mapping[str, Any], clips: np.ndarray, clip: video.Clip,
               predictor: Predictor, source: str,
               timeline: Optional[Mapping[str, Any]] = None) -> str:
    """Draws `figures.predict.prediction_figure` for a prediction and saves it as PNG.

    Raises:
        OSError: the path cannot be written.
    """
    from audfer_jax import figures  # pylint: disable=g-import-not-at-top
    from audfer_jax.figures import predict as predict_figure  # pylint: disable=g-import-not-at-top
    fig = predict_figure.prediction_figure(
            result, clips, fps=clip.fps, source=f"{source} ({clip.num_frames} frames, "
            f"{clip.duration:.2f} s at {clip.fps:g} fps, {clip.fps_source})",
            checkpoint=predictor.source, prior=predictor.prior,
            prior_label=predictor.prior_label, timeline=timeline)
    return figures.save(fig, path)


def main(argv: list[str]) -> int:
    """`audfer-jax predict --checkpoint DIR VIDEO_OR_FRAME_DIR [...]`.

    Returns:
        0 on success; 1 on an error (one line on stderr); 2 on bad flags;
        `NO_FACE_STATUS` (3) when face detection is on and the clip has no
        face, unless `--json` is given: then the JSON file holds the explicit
        `no_face_result` and the status is 0.
    """
    import time  # pylint: disable=g-import-not-at-top
    from audfer_jax import timeline as timeline_lib  # pylint: disable=g-import-not-at-top
    parser = cli_errors.ArgumentParser(
            prog="audfer-jax predict",
            description="Expression class probabilities (and the AU head's per-AU "
                        "probabilities) for one video or frame folder; optionally a "
                        "picture of the prediction and a timeline over windows.")
    parser.add_argument("--checkpoint", required=True,
                        help="training run directory, step directory or variables checkpoint "
                             "(local or gs://...)")
    parser.add_argument("input", help="video file or folder of frames (1.jpg, 2.jpg, ...)")
    parser.add_argument("--top_k", type=int, default=3, help="classes listed as top-k")
    parser.add_argument("--json", default=None, help="also write the result as JSON here")
    parser.add_argument("--detect_face", action=argparse.BooleanOptionalAction, default=None,
                        help="crop the face (dlib's HOG detector, one box per clip); "
                             "default: on for a video file, off for a frame folder "
                             "(usually face crops already)")
    parser.add_argument("--face_margin", type=float, default=0.15,
                        help="margin around the detected face, fraction of its side")
    parser.add_argument("--which", default="best", choices=("best", "last"),
                        help="checkpoint of a run directory (default best)")
    parser.add_argument("--plot", default=None, metavar="FILE.png",
                        help="write a picture: the frames the model saw, class and AU "
                             "bars with the run's AU prior, and the timeline if any")
    parser.add_argument("--timeline", default=None, metavar="FILE.csv",
                        help="classify every window of the video (see --window_seconds) "
                             "and write one CSV row per window")
    parser.add_argument("--window_seconds", type=_seconds_flag, default=None,
                        help=f"timeline window length W in seconds (default "
                             f"{video.DEFAULT_WINDOW_SECONDS:g}); giving it turns the "
                             "timeline on")
    parser.add_argument("--stride_seconds", type=_seconds_flag, default=None,
                        help=f"timeline stride S in seconds (default "
                             f"{video.DEFAULT_STRIDE_SECONDS:g}); giving it turns the "
                             "timeline on")
    parser.add_argument("--window_batch", type=_count_flag,
                        default=timeline_lib.DEFAULT_WINDOW_BATCH,
                        help="timeline windows per model call (one compiled shape)")
    parser.add_argument("--fps", type=_fps_flag, default=None,
                        help="frame rate of the input (default: the video's; "
                             f"{video.FOLDER_FPS:g} for a frame folder)")
    args = parser.parse_args(argv)
    detect = (not os.path.isdir(args.input)) if args.detect_face is None else args.detect_face
    want_timeline = bool(args.timeline or args.window_seconds or args.stride_seconds)
    no_face = timeline = clips = None
    cache: dict = {}
    try:
        t0 = time.perf_counter()
        clip = video.read_input(args.input, args.fps)
        t_read = time.perf_counter() - t0
        predictor = load_predictor(args.checkpoint, args.which)
        try:
            result, clips = predict_clip(clip.frames, predictor, detect_face=detect,
                                         face_margin=args.face_margin, top_k=args.top_k,
                                         face_cache=cache, return_clips=True)
        except NoFaceError as e:
            no_face = e
            result = no_face_result(e.detections, clip.num_frames)
        if want_timeline:
            timeline = timeline_lib.predict_timeline(
                    clip.frames, predictor, clip.fps,
                    window_seconds=args.window_seconds or video.DEFAULT_WINDOW_SECONDS,
                    stride_seconds=args.stride_seconds or video.DEFAULT_STRIDE_SECONDS,
                    batch_size=args.window_batch, detect_face=detect,
                    face_margin=args.face_margin, face_cache=cache)
            timeline["seconds"]["decode"] = t_read
    except (PredictError, OSError) as e:
        return cli_errors.report("audfer-jax predict", e)
    result["input"] = paths.resolve(args.input)
    result["checkpoint"] = predictor.source
    result["fps"] = clip.fps
    result["fps_source"] = clip.fps_source
    if no_face is not None:
        if args.json:   # else the error line below says it
            print(f"{args.input}: {cli_errors.one_line(no_face)}")
    else:
        print(f"checkpoint: {predictor.source}")
        print(format_prediction(result, args.input))
    try:
        if timeline is not None:
            result["timeline"] = timeline
            print(timeline_lib.format_timeline(timeline, rows=not (args.timeline or args.json)))
            print(f"decoded {clip.num_frames} frames ({clip.duration:.1f} s) once in "
                  f"{t_read:.2f} s")
            if args.timeline:
                paths.write_text(args.timeline, timeline_lib.timeline_csv(timeline))
                print(f"wrote {args.timeline}")
        if args.plot:
            if no_face is not None:
                print(f"no figure written to {args.plot}: no face, no prediction to draw")
            else:
                write_plot(args.plot, result, clips, clip, predictor, args.input, timeline)
                print(f"wrote {args.plot}")
        if args.json:
            paths.write_text(args.json, json.dumps(result, indent=2))
            print(f"wrote {args.json}")
    except OSError as e:
        return cli_errors.report("audfer-jax predict", e)
    if no_face is not None and not args.json:
        return cli_errors.report("audfer-jax predict", no_face, status=NO_FACE_STATUS)
    return 0
