"""`python -m audfer_jax.cli ...`, the same as `python -m audfer_jax ...`."""

import sys

from audfer_jax import cli

if __name__ == "__main__":
    sys.exit(cli.main())
