"""The typed data config: every field of `config.data`, its type, default and unit.

`DataConfig` is built once, at start-up, from the experiment config's
`config.data` (`DataConfig.from_config`) and validated there; everything
downstream (the tf.data pipeline, prepare, the trainer, predict) reads its
attributes. An experiment config carries the same fields as a ConfigDict
(`default_data_config()`, generated from the dataclass) so that every field can
be overridden on the command line: `--config.data.num_frames=8`.

Field meanings follow ../shared/spec/datasets.md sections 6c-8 and the
docstring of `audfer_jax.data.sampling`.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from typing import Any, Optional

import ml_collections

# Official fold counts (datasets.md): DFEW and MAFW 5 folds, FERV39k one split
# (fold 0), the synthetic demo set in DFEW's layout with its 5 folds (demo.py).
FOLDS = {"dfew": (1, 2, 3, 4, 5), "ferv39k": (0,), "mafw": (1, 2, 3, 4, 5),
         "demo": (1, 2, 3, 4, 5)}
DATASETS = tuple(FOLDS)
SAMPLINGS = ("segments", "uniform", "fixed_rate")
JITTERS = ("reference", "segment")
PADS = ("edge", "loop")
AUGMENTS = ("former_dfer", "m3dfel", "mae_dfer", "none")
AU_VOTES = ("sampled", "all")
# DFEW's named frame sets (readers/dfew.py); any other value is a frame folder path.
NAMED_FRAME_SETS = ("full", "16f")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """What the input pipeline reads, validated (`from_config`).

    Attributes:
        name: dataset, one of `DATASETS` ('dfew' | 'ferv39k' | 'mafw' | 'demo').
        data_dir: root of the prepared TFDS data (`audfer-jax prepare --data_dir`).
        raw_dir: root of the official release (prepare only); '' = not set.
        au_source: AU labels: a folder of OpenFace 2.0 CSVs or an AU-DFER .txt
            file (readers/au_labels.py); None = the reader's default (none, or
            the demo set's own CSVs).
        fold: 1..5 for DFEW and MAFW, 0 for FERV39k's single split.
        frame_set: DFEW 'full' | '16f', or a frame-folder path; None = the
            reader's default.
        prepare_size: side in pixels the frames are stored at (prepare); None
            = as released.
        num_frames: T, frames per clip.
        image_size: S, model input side in pixels (square frames).
        sampling: temporal scheme, one of `SAMPLINGS`.
        num_segments, frames_per_segment: 'segments' scheme (Former-DFER,
            MAE-DFER: 8 x 2; M3DFEL: 16 x 1).
        sampling_rate: 'fixed_rate' stride in frames.
        jitter: 'reference' | 'segment' (where the random offset is drawn).
        pad: 'edge' | 'loop' (short clips).
        reference_quirks: reproduce the reference samplers' off-by-one quirks.
        augment: training augmentation recipe, one of `AUGMENTS`.
        augment_device: run the recipe's random per-clip transforms in the
            jitted train step (`augment_device.make_device_augment`); the host
            then only decodes, samples and resizes to `prepare_size` (else
            `image_size`). False: everything in tf.data (the reference path).
        eval_temporal_views, eval_spatial_views: views per test clip (MAE-DFER
            tests 2 x 2); the prediction is the mean of the views' softmax.
        au_vote: AU target of a training clip: majority over the 'sampled'
            frames or over 'all' valid frames.
        shuffle_buffer: shuffle buffer in clips (a 70-frame DFEW record is
            about 1 MB of JPEG).
        cache: keep this process's encoded records in memory across epochs.
    """
    name: str = "dfew"
    data_dir: str = ""
    raw_dir: str = ""
    au_source: Optional[str] = None
    fold: int = 1
    frame_set: Optional[str] = None
    prepare_size: Optional[int] = None
    num_frames: int = 16
    image_size: int = 112
    sampling: str = "segments"
    num_segments: int = 8
    frames_per_segment: int = 2
    sampling_rate: int = 4
    jitter: str = "reference"
    pad: str = "edge"
    reference_quirks: bool = False
    augment: str = "former_dfer"
    augment_device: bool = True
    eval_temporal_views: int = 1
    eval_spatial_views: int = 1
    au_vote: str = "sampled"
    shuffle_buffer: int = 1024
    cache: bool = False

    def __post_init__(self):
        _check_choice("name", self.name, DATASETS)
        if self.fold not in FOLDS[self.name]:
            raise ValueError(f"config.data.fold={self.fold!r} is not a fold of {self.name}; "
                             f"expected one of {FOLDS[self.name]}")
        _check_choice("sampling", self.sampling, SAMPLINGS)
        _check_choice("jitter", self.jitter, JITTERS)
        _check_choice("pad", self.pad, PADS)
        _check_choice("augment", self.augment, AUGMENTS)
        _check_choice("au_vote", self.au_vote, AU_VOTES)
        for field in ("num_frames", "image_size", "num_segments", "frames_per_segment",
                      "sampling_rate", "eval_temporal_views", "eval_spatial_views"):
            value = getattr(self, field)
            if value < 1:
                raise ValueError(f"config.data.{field}={value!r} must be a positive integer")
        if self.prepare_size is not None and self.prepare_size < 1:
            raise ValueError(f"config.data.prepare_size={self.prepare_size!r} must be a "
                             f"positive integer or None (frames as released)")
        if self.shuffle_buffer < 0:
            raise ValueError(f"config.data.shuffle_buffer={self.shuffle_buffer!r} must be "
                             f">= 0 clips")
        if (self.frame_set in NAMED_FRAME_SETS and self.name not in ("dfew", "demo")):
            raise ValueError(f"config.data.frame_set={self.frame_set!r} names a DFEW frame "
                             f"set; {self.name} takes a frame-folder path or None")
        if self.au_source is not None and not self.au_source:
            raise ValueError("config.data.au_source is empty: give a folder of OpenFace "
                             "CSVs or an AU-DFER .txt file, or None")

    @classmethod
    def from_config(cls, data: Any, strict: bool = True) -> "DataConfig":
        """Builds and validates a `DataConfig` from `config.data`.

        Args:
            data: a `DataConfig` (returned as is), or a ConfigDict / mapping of
                some or all fields (the others keep their defaults). The key
                `dataset` of earlier configs is read as `name`.
            strict: an unknown field is an error; False drops it (a run's
                saved config read back by `predict`, which may hold the
                fields of another input module).

        Raises:
            ValueError: an unknown field (with the closest known one), a value
                of the wrong type, or a value outside its field's choices.
        """
        if isinstance(data, cls):
            return data
        if hasattr(data, "to_dict"):
            data = data.to_dict()
        known = {f.name: f for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        kwargs = {}
        data = dict(data or {})
        # `dataset` is the name that configs of earlier versions (and their
        # saved config.json) gave the dataset; it wins over the default name.
        dataset = data.pop("dataset", None)
        if dataset is not None:
            data["name"] = dataset
        for key, value in data.items():
            if key not in known:
                if not strict:
                    continue
                raise ValueError(f"unknown field config.data.{key}{_did_you_mean(key, known)}; "
                                 f"known fields: {', '.join(known)}")
            kwargs[key] = _coerce(key, value, hints[key])
        return cls(**kwargs)

    def replace(self, **changes) -> "DataConfig":
        """A validated copy with `changes` applied."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """The fields as a plain dict (JSON, hparams)."""
        return dataclasses.asdict(self)


def default_data_config() -> ml_collections.ConfigDict:
    """`DataConfig`'s fields and defaults as a ConfigDict (for experiment configs).

    Optional fields are typed placeholders, so that flags can set them.
    """
    hints = typing.get_type_hints(DataConfig)
    c = ml_collections.ConfigDict()
    for f in dataclasses.fields(DataConfig):
        inner = _optional_inner(hints[f.name])
        if inner is not None:
            c[f.name] = ml_collections.config_dict.placeholder(inner)
            if f.default is not None:
                c[f.name] = f.default
        else:
            c[f.name] = f.default
    return c


def _check_choice(field: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"config.data.{field}={value!r} is not valid"
                         f"{_did_you_mean(str(value), choices)}; expected one of "
                         f"{', '.join(map(str, choices))}")


def _did_you_mean(value: str, choices) -> str:
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _optional_inner(hint):
    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Union and type(None) in args:
        return next(a for a in args if a is not type(None))
    return None


def _coerce(key: str, value, hint):
    inner = _optional_inner(hint)
    if inner is not None:
        if value is None:
            return None
        hint = inner
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    raise ValueError(f"config.data.{key}={value!r} should be {hint.__name__}"
                     f"{' or None' if inner is not None else ''}")
