"""The original backbone papers' reported UAR/WAR, as reference rows beside a sweep.

The figures are package data (`reference_data/published_results.json`), one
entry per (model, dataset) with its source (paper table or repository README,
commit included) for every number. A pair that no readable source gives has
no entry: the table shows nothing rather than a guess. They are the
originals trained with cross-entropy alone, under each paper's own protocol
(`selection`), not runs of this library.
"""

from __future__ import annotations

import functools
import json
from typing import Optional

try:  # Python >= 3.9 has importlib.resources.files; the backport is a dependency.
    from importlib.resources import files as _files
except ImportError:  # pragma: no cover
    from importlib_resources import files as _files

# The paper recipes (configs/former_dfer.py, m3dfel.py, mae_dfer.py) and the
# datasets the papers report on; the demo set and user backbones have no row.
RECIPE_MODELS = ("former_dfer", "m3dfel", "mae_dfer")
PAPER_DATASETS = ("dfew", "ferv39k", "mafw")
DISPLAY_NAMES = {"former_dfer": "Former-DFER", "m3dfel": "M3DFEL", "mae_dfer": "MAE-DFER",
                 "dfew": "DFEW", "ferv39k": "FERV39k", "mafw": "MAFW"}


@functools.lru_cache(maxsize=1)
def table() -> tuple[dict, ...]:
    """Every entry of the data file: `{"model", "dataset", "uar", "war", "paper",
    "source", "selection", "folds"?}` (figures in %).

    Raises:
        RuntimeError: an entry lacks a figure or its source (corrupt package data).
    """
    text = _files("audfer_jax.experiments").joinpath("reference_data", "published_results.json").read_text()
    entries = tuple(json.loads(text)["results"])
    for e in entries:
        if not e.get("source") or not isinstance(e.get("uar"), (int, float)) \
                or not isinstance(e.get("war"), (int, float)):
            raise RuntimeError(f"published_results.json: entry {e.get('model')}/"
                               f"{e.get('dataset')} lacks a figure or its source")
    return entries


def lookup(model: str, dataset: str) -> Optional[dict]:
    """The published entry for a paper recipe on a paper dataset, else None.

    Args:
        model: `config.model` (e.g. "m3dfel"; "former_dfer_tiny" or an import
            path has no entry).
        dataset: `config.data.name` ("dfew", "ferv39k", "mafw"; "demo" has none).
    """
    if model not in RECIPE_MODELS or dataset not in PAPER_DATASETS:
        return None
    for e in table():
        if e["model"] == model and e["dataset"] == dataset:
            return dict(e)
    return None


def for_config(config) -> Optional[dict]:
    """`lookup(config.model, config.data.name)` with a display `label` added.

    None also for a config without those fields (e.g. a test's stand-in).
    """
    try:
        model, dataset = str(config.model), str(config.data.name)
    except (AttributeError, KeyError):
        return None
    entry = lookup(model, dataset)
    if entry is not None:
        entry["label"] = (f"published: {DISPLAY_NAMES[entry['model']]} on "
                          f"{DISPLAY_NAMES[entry['dataset']]} (original paper, CE)")
    return entry
