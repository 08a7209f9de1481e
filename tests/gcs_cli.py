"""`audfer-jax ARGS` for test_gcs.py, with TensorBoard event files kept local.

TensorBoard's writer takes a gs:// logdir natively, through TensorFlow's own
GCS filesystem, which cannot be pointed at the local test server (see
`_gcs_server`). So that the test reaches nothing but 127.0.0.1, this wrapper
records every logdir that `clu.metric_writers.create_default_writer` gets
(in `$AUDFER_TEST_TB_DIR/logdirs.txt`) and gives the writer a local folder
instead when the logdir is a URL. Everything else runs unchanged.
"""

from __future__ import annotations

import os
import sys


def _divert_tensorboard() -> None:
    from clu import metric_writers
    original = metric_writers.create_default_writer
    local = os.environ["AUDFER_TEST_TB_DIR"]

    def create_default_writer(logdir=None, *args, **kwargs):
        if logdir is not None and not kwargs.get("just_logging"):
            os.makedirs(local, exist_ok=True)
            with open(os.path.join(local, "logdirs.txt"), "a", encoding="utf-8") as f:
                f.write(f"{logdir}\n")
            if "://" in str(logdir):
                logdir = os.path.join(local, str(logdir).replace("://", "_"))
        return original(logdir, *args, **kwargs)

    metric_writers.create_default_writer = create_default_writer


if __name__ == "__main__":
    _divert_tensorboard()
    from audfer_jax import cli
    sys.exit(cli.main(sys.argv[1:]))
