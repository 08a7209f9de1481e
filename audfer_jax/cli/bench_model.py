"""TEMPORARY stub during the layout move: to be replaced by the thin command module."""

from audfer_jax.models.bench import main  # noqa: F401
