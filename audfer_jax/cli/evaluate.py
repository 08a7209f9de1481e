"""TEMPORARY stub during the layout move: to be replaced by the thin command module."""

from audfer_jax.evaluate import main  # noqa: F401
