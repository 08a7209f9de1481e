"""`audfer-jax bench {input,model,train}`: benchmarks that print figures."""

from __future__ import annotations

import importlib
import sys

_KINDS = {
        "input": "audfer_jax.data.bench",
        "model": "audfer_jax.models.bench",
        "train": "audfer_jax.train_bench",
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in _KINDS:
        print(f"usage: audfer-jax bench {{{','.join(_KINDS)}}} [flags]",
                    file=sys.stderr)
        return 2
    return int(importlib.import_module(_KINDS[argv[0]]).main(argv[1:]) or 0)
