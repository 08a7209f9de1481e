"""`python -m audfer_jax ...`: the `audfer-jax` command line without the console script."""

import sys

from audfer_jax import cli

if __name__ == "__main__":
    sys.exit(cli.main())
