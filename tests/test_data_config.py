"""The typed data config: one ValueError per bad field, naming field, value and choices."""

import dataclasses

import ml_collections
import pytest

from audfer_jax import config_lib
from audfer_jax.data import config as data_config_lib
from audfer_jax.data.config import DataConfig


def test_defaults_match_the_experiment_config_fields():
    c = data_config_lib.default_data_config()
    fields = {f.name: f.default for f in dataclasses.fields(DataConfig)}
    assert set(c.keys()) == set(fields)
    for name, default in fields.items():
        assert c[name] == default, name
    # Optional fields stay settable from flags (typed placeholders).
    c.au_source = "/data/OpenFace"
    c.prepare_size = 128
    typed = DataConfig.from_config(c)
    assert (typed.au_source, typed.prepare_size) == ("/data/OpenFace", 128)


def test_from_config_reads_every_field_and_is_frozen():
    c = config_lib.base_config().data
    c.name, c.fold, c.num_frames, c.augment = "mafw", 3, 8, "mae_dfer"
    typed = DataConfig.from_config(c)
    assert (typed.name, typed.fold, typed.num_frames, typed.augment) == ("mafw", 3, 8, "mae_dfer")
    with pytest.raises(dataclasses.FrozenInstanceError):
        typed.fold = 2
    assert typed.replace(fold=4).fold == 4 and typed.fold == 3


@pytest.mark.parametrize("field, value, expected", [
    ("name", "dfeww", r"config\.data\.name='dfeww'.*did you mean 'dfew'.*dfew, ferv39k, mafw"),
    ("fold", 9, r"config\.data\.fold=9 is not a fold of dfew; expected one of \(1, 2, 3, 4, 5\)"),
    ("au_vote", "majority", r"config\.data\.au_vote='majority'.*sampled, all"),
    ("sampling", "segment", r"did you mean 'segments'"),
    ("augment", "randaug", r"config\.data\.augment='randaug'.*former_dfer, m3dfel, mae_dfer"),
    ("image_size", 0, r"config\.data\.image_size=0 must be a positive integer"),
    ("num_frames", -2, r"config\.data\.num_frames=-2 must be a positive integer"),
    ("prepare_size", 0, r"config\.data\.prepare_size=0"),
    ("num_frames", "sixteen", r"config\.data\.num_frames='sixteen' should be int"),
    ("au_source", "", r"config\.data\.au_source is empty"),
])
def test_bad_values_raise_one_value_error(field, value, expected):
    with pytest.raises(ValueError, match=expected):
        DataConfig.from_config({field: value})


def test_frame_set_names_are_dfew_only():
    assert DataConfig.from_config({"name": "dfew", "frame_set": "16f"}).frame_set == "16f"
    with pytest.raises(ValueError, match=r"frame_set='16f' names a DFEW frame set"):
        DataConfig.from_config({"name": "ferv39k", "fold": 0, "frame_set": "16f"})
    assert DataConfig.from_config({"name": "ferv39k", "fold": 0,
                                   "frame_set": "/x/frames"}).frame_set == "/x/frames"


def test_ferv39k_has_the_single_split_fold_zero():
    assert DataConfig.from_config({"name": "ferv39k", "fold": 0}).fold == 0
    with pytest.raises(ValueError, match=r"fold=1 is not a fold of ferv39k; expected one of \(0,\)"):
        DataConfig.from_config({"name": "ferv39k", "fold": 1})


def test_unknown_field_names_the_closest():
    with pytest.raises(ValueError, match=r"unknown field config\.data\.num_frame \(did you mean "
                                         r"'num_frames'\?\)"):
        DataConfig.from_config(ml_collections.ConfigDict({"num_frame": 8}))


def test_flag_strings_are_converted():
    typed = DataConfig.from_config({"num_frames": "8", "cache": "true", "prepare_size": None})
    assert typed.num_frames == 8 and typed.cache is True and typed.prepare_size is None


def test_dataset_key_of_earlier_configs_is_the_name():
    assert DataConfig.from_config({"name": "dfew", "dataset": "demo"}).name == "demo"


def test_non_strict_drops_fields_of_other_input_modules():
    typed = DataConfig.from_config({"num_frames": 4, "num_test": 10}, strict=False)
    assert typed.num_frames == 4
    with pytest.raises(ValueError, match="unknown field config.data.num_test"):
        DataConfig.from_config({"num_frames": 4, "num_test": 10})
