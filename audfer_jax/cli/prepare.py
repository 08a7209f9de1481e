"""`audfer-jax prepare`: a release on disk -> TFDS TFRecords, offline.

    audfer-jax prepare --dataset dfew --raw_dir /data/DFEW --data_dir data/prepared --fold 1

One prepared dataset per fold (train and test splits); resumable (a prepared
fold is skipped). The library is `audfer_jax.data.prepare`.
"""

from __future__ import annotations

import sys

from audfer_jax.cli import errors as cli_errors
from audfer_jax.data import prepare as prepare_lib

_PROG = "audfer-jax prepare"


def main(argv: list[str]) -> int:
    """`audfer-jax prepare`; returns the exit status."""
    p = cli_errors.ArgumentParser(prog=_PROG, description=__doc__.split("\n")[0])
    p.add_argument("--dataset", required=True, choices=prepare_lib.DATASETS)
    p.add_argument("--raw_dir", required=True, help="release root (TFDS manual_dir)")
    p.add_argument("--data_dir", required=True,
                   help="root of the prepared data (local or gs://...)")
    p.add_argument("--fold", default="all", help="1..5 or 'all' (FERV39k: 0 or all)")
    p.add_argument("--frame_set", default=None, help="full | 16f | path (reader default if unset)")
    p.add_argument("--au_source", default=None, help="AU label source (reader option)")
    p.add_argument("--prepare_size", type=int, default=None,
                   help="resize the shorter frame side to this many pixels")
    p.add_argument("--on_error", default="raise", choices=("raise", "skip"))
    p.add_argument("--validate", default="full", choices=("full", "header"))
    args = p.parse_args(argv)
    try:
        prepare_lib.prepare(args.dataset, args.raw_dir, args.data_dir, args.fold,
                            frame_set=args.frame_set, au_source=args.au_source,
                            prepare_size=args.prepare_size, on_error=args.on_error,
                            validate=args.validate)
    except (ValueError, OSError) as e:  # DatasetError is a ValueError
        return cli_errors.report(_PROG, e)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
