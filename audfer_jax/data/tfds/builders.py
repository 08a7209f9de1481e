"""The TFDS builders: DFEW, FERV39k, MAFW and the synthetic demo set.

All read `dl_manager.manual_dir` offline (see `common.ClipDatasetBuilder`).
Configs are named by `common.config_name`; the predefined ones cover the
official folds with the default frame set, any other combination is built on
demand by `make_config` (TFDS accepts a config object not in the list).
"""

from __future__ import annotations

from audfer_jax.data.tfds import common


def _fold_configs(folds, frame_sets):
    return [common.make_config(f, s) for s in frame_sets for f in folds]


class Dfew(common.ClipDatasetBuilder):
    """DFEW (Jiang et al., ACM MM 2020): 7 classes, 5-fold CV (datasets.md §1)."""
    READER_NAME = "dfew"
    CLASS_SET = "dfew"
    BUILDER_CONFIGS = _fold_configs(range(1, 6), (None, "full", "16f"))
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    DFEW is distributed on request by its authors (https://dfew-dataset.github.io).
    Unpack the release so that `manual_dir` contains (directly or one level down)
      Clip/clip_224x224/<id>/*.jpg, Clip/clip_224x224_16f/<id>/*.jpg and
      EmoLabel_DataSplit/{train,test}(single-labeled)/set_<k>.csv
    and pass it as --raw_dir to `audfer-jax prepare --dataset dfew`.
    """


class Ferv39k(common.ClipDatasetBuilder):
    """FERV39k (Wang et al., CVPR 2022): 7 classes, one official split (§2)."""
    READER_NAME = "ferv39k"
    CLASS_SET = "ferv39k"
    BUILDER_CONFIGS = _fold_configs((0,), (None,))
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    FERV39k is distributed on request by its authors
    (https://wangyanckxx.github.io/Proj_CVPR2022_FERV39k.html). `manual_dir`
    must contain 2_ClipsforFaceCrop/<Scene>/<Emotion>/<id>/*.jpg and
    4_setups/All_scenes/{train,test}_All.csv (nesting one level down is found).
    """


class Mafw(common.ClipDatasetBuilder):
    """MAFW (Liu et al., ACM MM 2022): 11 classes, 5-fold CV (§3)."""
    READER_NAME = "mafw"
    CLASS_SET = "mafw"
    BUILDER_CONFIGS = _fold_configs(range(1, 6), (None,))
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    MAFW is distributed on request by its authors (https://mafw-database.github.io/MAFW).
    `manual_dir` must contain data/frames/<id>/ (or data/faces/<id>/) and the
    split root `Train & Test Set/single/no_caption/set_<k>/{train,test}.txt`.
    """


class AudferDemo(common.ClipDatasetBuilder):
    """The synthetic demo set (`audfer-jax demo`), written in the DFEW layout."""
    READER_NAME = "demo"
    CLASS_SET = "demo"
    BUILDER_CONFIGS = _fold_configs(range(1, 6), (None,))
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Nothing to download: write the set with `audfer-jax demo --out_dir DIR`
    and pass DIR as --raw_dir.
    """


BUILDERS = {"dfew": Dfew, "ferv39k": Ferv39k, "mafw": Mafw, "demo": AudferDemo}


def builder_class(dataset: str):
    """The builder class of a dataset name ('dfew'|'ferv39k'|'mafw'|'demo')."""
    try:
        return BUILDERS[dataset.lower()]
    except KeyError:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of "
                         f"{sorted(BUILDERS)}") from None
