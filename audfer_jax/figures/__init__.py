"""Figures (matplotlib, Agg backend): one module per picture.

Every module here draws on a `matplotlib.figure.Figure` it creates itself (never
`pyplot`'s global state), so that figures can be built in tests and on hosts
without a display, and returns the figure so that tests can read the artists'
data. `save(fig, path)` writes a PNG, also to gs:// paths.
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")  # no display on training hosts; must precede pyplot imports

from matplotlib import figure as mpl_figure  # noqa: E402


def save(fig: mpl_figure.Figure, path: str | os.PathLike, *, dpi: int = 100) -> str:
    """Writes `fig` as a PNG to `path` (local or gs://) and returns the path.

    Raises:
        OSError: the path cannot be written.
    """
    import io

    from audfer_jax import paths

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    paths.write_bytes(str(path), buf.getvalue())
    return str(path)
