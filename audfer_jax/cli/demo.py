"""`audfer-jax demo`: writes the synthetic demo set and prints its summary.

    audfer-jax demo --out data/demo [--num_clips 2000 --seed 0 --size 112 --workers N]

The set (FACS-driven cartoon faces in the DFEW release layout) is drawn by
`audfer_jax.data.demo.write_demo_dataset`.
"""

from __future__ import annotations

import json
import sys
from typing import Sequence

from audfer_jax.cli import errors as cli_errors
from audfer_jax.data import demo


def main(argv: Sequence[str]) -> int:
    """`audfer-jax demo`: writes the synthetic demo set and prints its summary."""
    parser = cli_errors.ArgumentParser(
        prog="audfer-jax demo",
        description="Write the SYNTHETIC FACS-driven demo set in the DFEW release layout.")
    parser.add_argument("--out", "--out_dir", dest="out", required=True,
                        help="output folder (DFEW/ is made inside)")
    parser.add_argument("--num_clips", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=112, help="frame side in pixels")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes (default: CPU count)")
    args = parser.parse_args(list(argv))
    summary = demo.write_demo_dataset(args.out, args.num_clips, args.seed, args.size,
                                      num_workers=args.workers)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
