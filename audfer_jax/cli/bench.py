"""`audfer-jax bench {input,model,train}`: benchmarks that print figures."""

from __future__ import annotations

import importlib
import sys

from audfer_jax import hints

_KINDS = {
        "input": "audfer_jax.cli.bench_input",
        "model": "audfer_jax.cli.bench_model",
        "train": "audfer_jax.cli.bench_train",
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in _KINDS:
        given = argv[0] if argv else ""
        hint = hints.did_you_mean(given, _KINDS) if given else ""
        print(f"audfer-jax bench: error: expected a benchmark, one of {', '.join(_KINDS)} "
              f"(got {given!r}{hint}); usage: audfer-jax bench KIND [flags]",
              file=sys.stderr)
        return 2
    return int(importlib.import_module(_KINDS[argv[0]]).main(argv[1:]) or 0)
