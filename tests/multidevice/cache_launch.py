"""One of two processes of a training launch that shares a compilation cache folder.

    python cache_launch.py PROCESS_ID PORT WORKDIR CACHE_DIR

Both processes (one fake CPU device each, `conftest.multidevice_env(1)`) train
the micro model for one epoch of 3 steps through `train_and_evaluate` with
`config.compile_cache_dir = CACHE_DIR` (every program cached: the one-second
threshold is set to 0 by the caller's environment). JAX's compile log (the
`jax._src.compiler` logger: "PERSISTENT COMPILATION CACHE MISS for 'jit_f'",
"Persistent compilation cache hit for 'jit_f'") is captured, and the last line
printed is JSON: `{"process", "misses": [program names compiled by this
process], "hits": [program names loaded from the cache], "goodput": {...}}`.
"""

import json
import logging
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import _train_fakes as fakes  # noqa: E402


class CompileLog(logging.Handler):
    """Collects the program names of JAX's persistent-cache hit and miss lines."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.hits, self.misses = [], []

    def emit(self, record):
        text = record.getMessage()
        name = re.search(r"for '([^']*)'", text)
        if name is None:
            return
        if text.startswith("Persistent compilation cache hit"):
            self.hits.append(name.group(1))
        elif text.startswith("PERSISTENT COMPILATION CACHE MISS"):
            self.misses.append(name.group(1))


def main():
    process_id, port, workdir, cache = (int(sys.argv[1]), int(sys.argv[2]), sys.argv[3],
                                        sys.argv[4])
    log = CompileLog()
    compiler_log = logging.getLogger("jax._src.compiler")
    compiler_log.addHandler(log)
    compiler_log.setLevel(logging.DEBUG)
    import jax  # pylint: disable=g-import-not-at-top
    from audfer_jax import train  # pylint: disable=g-import-not-at-top
    cfg = fakes.micro_config(**{"data": dict(fakes.default_data_config(), num_train=24),
                                "num_epochs": 1, "log_every_steps": 3})
    cfg.multihost = True
    cfg.coordinator_address = f"127.0.0.1:{port}"
    cfg.num_processes = 2
    cfg.process_id = process_id
    cfg.compile_cache_dir = cache
    result = train.train_and_evaluate(cfg, workdir, data=fakes,
                                      model=fakes.MicroModel(num_classes=7, norm="batch"))
    print(json.dumps({"process": jax.process_index(), "steps": result.get("steps"),
                      "misses": log.misses, "hits": log.hits,
                      "goodput": result.get("goodput")}), flush=True)


if __name__ == "__main__":
    main()
