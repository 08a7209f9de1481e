"""`audfer-jax convert`: PyTorch checkpoint -> Orbax checkpoint of Flax variables.

    audfer-jax convert --model former_dfer --checkpoint model_best.pth --out weights/former_dfer

The conversion is `audfer_jax.models.convert`; the variables are written by
`audfer_jax.checkpoint.save_variables`.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Callable, Optional, Sequence

from audfer_jax.cli import errors as cli_errors
from audfer_jax import hints
from audfer_jax.models import available_models, get_model
from audfer_jax.models import convert
from audfer_jax import paths

_PROG = "audfer-jax convert"


def _parser() -> cli_errors.ArgumentParser:
    """The flags of `audfer-jax convert`."""
    parser = cli_errors.ArgumentParser(
        prog=_PROG,
        description="Convert a PyTorch checkpoint of Former-DFER, M3DFEL (or torchvision "
                    "R3D-18 Kinetics-400) or MAE-DFER (fine-tuned or VoxCeleb2 pre-training) "
                    "into Flax variables.")
    parser.add_argument("--model", required=True, choices=available_models())
    parser.add_argument("--checkpoint", required=True, help="the .pth file")
    parser.add_argument("--out", required=True,
                        help="output directory, local or gs://... (must not exist)")
    parser.add_argument("--num_classes", type=int, default=7)
    parser.add_argument("--num_aus", type=int, default=18)
    parser.add_argument("--source", default="auto",
                        choices=["auto"] + sorted(convert.SOURCES))
    parser.add_argument("--strict", action="store_true",
                        help="a head of another class count is an error, not re-initialised")
    parser.add_argument("--verbose", action="store_true", help="list every loaded leaf")
    return parser


def _get_saver() -> Callable[[str, Any, dict], Any]:
    """`audfer_jax.checkpoint.save_variables` (the only Orbax user; imported when used)."""
    from audfer_jax import checkpoint  # pylint: disable=import-outside-toplevel
    return checkpoint.save_variables


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`audfer-jax convert`: PyTorch checkpoint -> Orbax checkpoint of Flax variables.

    Flags: `--model` (a `get_model` name), `--checkpoint X.pth`, `--out DIR`
    (must not exist), `--num_classes` (7), `--num_aus` (18), `--source`
    (`auto` or a `convert.SOURCES` name), `--strict`, `--verbose`. Builds the
    model's variable template with `jax.eval_shape`, converts (the model's own
    initialisers fill the fresh leaves, if any: `convert.fill_fresh`), prints
    the report and writes the variables with metadata `{model, num_classes,
    num_aus, source_file, source, checkpoint_info, report}` through
    `audfer_jax.checkpoint.save_variables`.

    Returns:
        0 on success, 1 when the conversion fails (the report names every
        problem), 2 on bad flags.
    """
    args = _parser().parse_args(list(argv) if argv is not None else None)
    if paths.exists(args.out):
        print(f"{_PROG}: error: {args.out} already exists; choose a new --out",
              file=sys.stderr)
        return 1
    info: dict[str, Any] = {}
    try:
        state_dict = convert.load_torch_checkpoint(args.checkpoint, info)
    except (ValueError, OSError, ImportError) as e:
        return cli_errors.report(_PROG, e)
    model = get_model(args.model, num_classes=args.num_classes, num_aus=args.num_aus)
    template, real_init = convert.model_template(model, args.model)
    try:
        variables, report = convert.convert_state_dict(args.model, state_dict, template,
                                                       source=args.source, strict=args.strict)
    except convert.ConversionError as e:
        # The full report is the command's output; the error is one line.
        print(e.report.summary(args.verbose))
        errors = e.report.errors
        more = f" (and {len(errors) - 1} more, listed above)" if len(errors) > 1 else ""
        print(f"{_PROG}: error: {len(errors)} conversion error(s): "
              f"{hints.one_line(ValueError(errors[0]))}{more}", file=sys.stderr)
        return 1
    print(report.summary(args.verbose))
    variables = convert.fill_fresh(variables, real_init)
    metadata = {"model": args.model, "num_classes": args.num_classes,
                "num_aus": args.num_aus, "source_file": paths.resolve(args.checkpoint),
                "source": report.source,
                "checkpoint_info": json.loads(json.dumps(info, default=str)),
                "report": report.to_dict()}
    written = _get_saver()(args.out, variables, metadata)
    print(f"wrote {written or args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
