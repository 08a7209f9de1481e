"""`audfer-jax export`: a checkpoint as a `jax.export` artifact and a TensorFlow SavedModel.

    audfer-jax export --checkpoint RUN_OR_VARIABLES --out DIR
        [--format jax,savedmodel] [--dtype float32|bfloat16] [--which best|last]
        [--platforms cpu,cuda,tpu]

Flags and printing only; the work is `audfer_jax.export.build`. docs/export.md
describes the files and how to load them without audfer_jax.
"""

from __future__ import annotations

import argparse

from audfer_jax import host
from audfer_jax.cli import errors as cli_errors

PROG = "audfer-jax export"


def _list_flag(choices):
    """argparse type: a comma-separated subset of `choices`."""
    def parse(value: str) -> list[str]:
        items = [v.strip() for v in value.split(",") if v.strip()]
        bad = [v for v in items if v not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(
                    f"{value!r}: expected a comma-separated list of {', '.join(choices)}")
        return items
    return parse


def _parser() -> cli_errors.ArgumentParser:
    """The flags of `audfer-jax export`."""
    from audfer_jax.export import build, forward, jax_format  # pylint: disable=g-import-not-at-top
    parser = cli_errors.ArgumentParser(
            prog=PROG,
            description="Write a checkpoint's evaluation forward (uint8 clips -> class and "
                        "AU probabilities) as a jax.export artifact and a TensorFlow "
                        "SavedModel with model.json (docs/export.md).")
    parser.add_argument("--checkpoint", required=True,
                        help="training run directory, step directory or variables "
                             "checkpoint (as `predict --checkpoint`)")
    parser.add_argument("--out", required=True, help="new export directory")
    parser.add_argument("--format", type=_list_flag(build.FORMATS),
                        default=list(build.FORMATS),
                        help="formats to write (default jax,savedmodel)")
    parser.add_argument("--dtype", default="float32", choices=forward.DTYPES,
                        help="compute and weight dtype (default float32)")
    parser.add_argument("--which", default="best", choices=("best", "last"),
                        help="checkpoint of a run directory (default best)")
    parser.add_argument("--platforms", type=_list_flag(jax_format.PLATFORMS),
                        default=list(jax_format.PLATFORMS),
                        help="lowering platforms (default cpu,cuda,tpu)")
    return parser


def _summary(result) -> str:
    """The lines printed after an export."""
    m = result.manifest
    lines = [f"exported {m['source']['loaded']}", f"  model {m['model']}, classes "
             f"{', '.join(m['classes'])}; input {m['input']['shape']} uint8, "
             f"{m['compute_dtype']}"]
    sizes = result.sizes()
    for fmt, entry in m["formats"].items():
        where = entry.get("file") or entry.get("dir") + "/"
        refused = entry.get("refused_platforms") or {}
        lines.append(f"  {fmt}: {result.out}/{where} ({sizes.get(fmt, 0) / 2**20:.1f} MiB), "
                     f"platforms {', '.join(entry['platforms'])}"
                     + (f"; refused {', '.join(refused)}" if refused else "")
                     + f"; {result.seconds.get(fmt, 0.0):.1f} s")
    lines.append(f"  {result.out}/model.json")
    lines.append(f"next: audfer-jax predict --model {result.out} VIDEO")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """`audfer-jax export --checkpoint RUN --out DIR [...]`; 0, or 1 with one error line."""
    host.quiet_tpu_probe()
    args = _parser().parse_args(argv)
    from audfer_jax.export import build  # pylint: disable=g-import-not-at-top
    result = build.export_checkpoint(args.checkpoint, args.out, formats=args.format,
                                     dtype=args.dtype, which=args.which,
                                     platforms=args.platforms)
    print(_summary(result))
    return 0
