"""TFDS builders of the supported datasets (offline, manual_dir).

Importing this package registers the builders `dfew`, `ferv39k`, `mafw` and
`audfer_demo` with TFDS. Prepared data is readable without this code through
`tfds.builder_from_directory`.
"""

from audfer_jax.data.tfds.builders import BUILDERS, builder_class  # noqa: F401
from audfer_jax.data.tfds.common import config_name, make_config  # noqa: F401

__all__ = ["BUILDERS", "builder_class", "config_name", "make_config"]
