"""gs:// paths against a real GCS JSON API server on 127.0.0.1 (fake-gcs-server).

Not a mock: gcsfs (through `audfer_jax.paths` / `etils.epath`) and tensorstore
(Orbax's array writer) speak HTTP to fake-gcs-server; the tests check the
bucket's content with plain urllib calls to the same server (`_gcs_server`).
Nothing but 127.0.0.1 is reached (`GcsServer.client_env`). Skipped when the
server binary cannot start.

TensorFlow's own GCS filesystem cannot be pointed at a local server (see
`_gcs_server`), so TFDS/tf.data reading of gs:// records is covered by a test
that the gs:// URL reaches TFDS as the same string, with the sidecar files
around it really read from the bucket.

The end-to-end run (train, stop, resume from the bucket, evaluate, predict) is
`test_train_resume_gs`, marked slow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import _gcs_server  # noqa: E402

from audfer_jax import paths  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def server():
    s = _gcs_server.start_or_skip()
    yield s
    s.stop()


@pytest.fixture
def gcs(server, monkeypatch):
    """This process's clients pointed at the server (and back afterwards)."""
    import fsspec.config
    for k, v in server.client_env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setitem(fsspec.config.conf, "gcs", {"token": "anon"})
    _gcs_server.use_plain_gcsfs(monkeypatch)
    _gcs_server.reset_client_caches()
    yield server
    monkeypatch.undo()
    _gcs_server.reset_client_caches()


def test_files_and_folders_on_gcs(gcs, tmp_path):
    root = "gs://bkt/unit/files"
    assert paths.is_remote(root) and paths.resolve(root + "/") == root
    assert not paths.exists(root) and not paths.isdir(root)
    paths.makedirs(paths.join(root, "a", "b"))      # no folders on GCS: no error, no object
    paths.write_text(paths.join(root, "a", "x.json"), '{"k": "\u00e9"}')
    paths.write_bytes(paths.join(root, "a", "b", "y.bin"), b"\x00\x01\xff")
    paths.write_text(paths.join(root, "a", "z.txt"), "z")
    # What the server holds, read without gcsfs.
    assert gcs.names("unit/files/") == ["unit/files/a/b/y.bin", "unit/files/a/x.json",
                                        "unit/files/a/z.txt"]
    assert json.loads(gcs.get("unit/files/a/x.json")) == {"k": "\u00e9"}
    assert gcs.get("unit/files/a/b/y.bin") == b"\x00\x01\xff"
    a = paths.join(root, "a")
    assert paths.isdir(a) and paths.isdir(paths.join(a, "b")) and not paths.isfile(a)
    assert paths.isfile(paths.join(a, "x.json")) and not paths.isdir(paths.join(a, "x.json"))
    assert paths.listdir(a) == ["b", "x.json", "z.txt"]
    assert paths.glob(a, "*.json") == [f"{root}/a/x.json"]
    assert paths.read_text(paths.join(a, "x.json")) == '{"k": "\u00e9"}'
    with paths.open(paths.join(a, "b", "y.bin"), "rb") as f:
        assert f.read() == b"\x00\x01\xff"
    paths.replace(paths.join(a, "z.txt"), paths.join(a, "w.txt"))
    assert gcs.get("unit/files/a/z.txt") is None and gcs.get("unit/files/a/w.txt") == b"z"
    paths.remove(paths.join(a, "w.txt"))
    paths.rmtree(paths.join(a, "b"))
    assert gcs.names("unit/files/") == ["unit/files/a/x.json"]
    with pytest.raises(FileNotFoundError):
        paths.listdir(paths.join(root, "missing"))


def test_append_rewrites_the_whole_object(gcs):
    path = "gs://bkt/unit/append/metrics.jsonl"
    with paths.open_append(path, flush_every_s=1e9) as f:
        f.write("1\n")
        f.write("2\n")
        assert gcs.get("unit/append/metrics.jsonl") is None      # not flushed yet
        f.flush()
        assert gcs.get("unit/append/metrics.jsonl") == b"1\n2\n"
        f.write("3\n")
    assert gcs.get("unit/append/metrics.jsonl") == b"1\n2\n3\n"      # close flushes
    # A resumed run appends after what is there, like mode 'a' locally.
    f = paths.open_append(path, flush_every_s=0.0)                 # flush on every write
    f.write("4\n")
    assert gcs.get("unit/append/metrics.jsonl") == b"1\n2\n3\n4\n"
    f.close()


def test_train_checkpointer_on_gcs_keeps_latest_two(gcs):
    """The issue's case: a CheckpointManager on gs:// deleting its oldest step.

    Hung in gcsfs's `rm` before the server's log pipe was drained.
    """
    import jax
    from audfer_jax import checkpoint as ckpt_lib
    state = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "step": np.int32(0)}
    ck = ckpt_lib.TrainCheckpointer("gs://bkt/unit/ckpt", save_every_steps=1, keep=2,
                                    async_save=False)
    try:
        for step in (1, 2, 3):
            s = {"w": state["w"] * step, "step": np.int32(step)}
            assert ck.maybe_save(step, s, {"epoch": step})
        ck.save_best(2, {"w": state["w"] * 2, "step": np.int32(2)}, {"best": True})
        ck.wait_until_finished()
        assert ck.latest_step() == 3 and ck.best_step() == 2
        stored = {n.split("/")[3] for n in gcs.names("unit/ckpt/checkpoints/")}
        assert stored == {"2", "3"}                      # step 1 deleted from the bucket
        restored, meta = ck.restore(jax.tree.map(np.zeros_like, state))
        np.testing.assert_array_equal(np.asarray(restored["w"]), state["w"] * 3)
        assert meta["epoch"] == 3
        best, meta = ck.restore(jax.tree.map(np.zeros_like, state), best=True)
        np.testing.assert_array_equal(np.asarray(best["w"]), state["w"] * 2)
        assert meta == {"best": True}
    finally:
        ck.close()
    one, _ = ckpt_lib.restore_state_from_directory("gs://bkt/unit/ckpt/checkpoints/2",
                                                   jax.tree.map(np.zeros_like, state))
    np.testing.assert_array_equal(np.asarray(one["w"]), state["w"] * 2)


def test_variables_checkpoint_on_gcs(gcs):
    """`convert`'s output (`save_variables`) written to and read from gs://."""
    from audfer_jax import checkpoint as ckpt_lib
    variables = {"params": {"dense": {"kernel": np.full((2, 3), 0.5, np.float32)}}}
    out = ckpt_lib.save_variables("gs://bkt/unit/vars/", variables, {"model": "m"})
    assert out == "gs://bkt/unit/vars"
    assert any(n.startswith("unit/vars/variables/") for n in gcs.names("unit/vars/"))
    with pytest.raises(FileExistsError):
        ckpt_lib.save_variables(out, variables, {})
    loaded, meta = ckpt_lib.restore_variables(out)
    np.testing.assert_array_equal(np.asarray(loaded["params"]["dense"]["kernel"]),
                                  variables["params"]["dense"]["kernel"])
    assert meta == {"model": "m"}


def test_gs_data_dir_reaches_tfds_unchanged(gcs, monkeypatch):
    """A gs:// data_dir: sidecar files read from the bucket, TFDS given the URL as is."""
    pytest.importorskip("tensorflow_datasets")
    import tensorflow_datasets as tfds
    from audfer_jax.data import pipeline, prepare
    dc = pipeline.default_data_config()
    dc.name, dc.data_dir, dc.fold = "demo", "gs://bkt/unit/data", 2
    path = pipeline.prepared_path(dc)
    assert path.startswith("gs://bkt/unit/data/")               # not <cwd>/gs:/...
    with pytest.raises(FileNotFoundError, match="gs://bkt/unit/data/"):
        pipeline.dataset_info(dc)
    rows = [{"key": f"{i:05d}", "index": i, "label": i % 7, "num_frames": 16,
             "au_target_all": np.zeros(18, np.float32), "has_au_all": 1.0} for i in range(9)]
    prepare.write_index(path, "train", rows)
    prepare.write_index(path, "test", rows[:4])
    # Stand-in for what TFDS writes when it prepares (TF's filesystem, not testable here).
    paths.write_text(paths.join(path, "dataset_info.json"), "{}")
    prepare._remove_stale(paths.dirname(path))                # nothing stale: a no-op
    info = pipeline.dataset_info(dc)
    assert (info.num_train, info.num_test) == (9, 4)
    np.testing.assert_array_equal(info.train_class_counts, [2, 2, 1, 1, 1, 1, 1])
    assert not any(n.endswith(".tmp") for n in gcs.names("unit/data/"))
    seen = []

    class Stop(Exception):
        pass

    def builder_from_directory(p):
        seen.append(p)
        raise Stop

    monkeypatch.setattr(tfds, "builder_from_directory", builder_from_directory)
    if hasattr(pipeline, "_builder") and hasattr(pipeline._builder, "cache_clear"):
        pipeline._builder.cache_clear()
    with pytest.raises(Stop):
        pipeline.create_train_dataset(dc, global_batch_size=3, seed=0, epoch=0,
                                      process_index=0, process_count=1)
    assert seen == [path]


# ---------------------------------------------------------------------------
# End to end through the command line, in subprocesses.
# ---------------------------------------------------------------------------

def _cli(server, tmp_path, *args, timeout=900):
    """Runs `audfer-jax ARGS` (via tests/gcs_cli.py) with the server's env."""
    env = dict(os.environ)
    env.update(server.client_env())
    env["PYTHONPATH"] = os.pathsep.join([REPO, env.get("PYTHONPATH", "")])
    env["AUDFER_TEST_TB_DIR"] = str(tmp_path / "tb")
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path / "jaxcache")
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PLATFORMS"] = "cpu"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tests", "gcs_cli.py"),
                           *map(str, args)], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"audfer-jax {' '.join(map(str, args))} exited {proc.returncode}\n"
                    f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}"
                    "\n--- server log\n" + "\n".join(list(server.log)[-20:]))
    return proc.stdout


@pytest.mark.slow
def test_train_resume_gs(server, tmp_path):
    """Demo config: train with --workdir gs://bkt/run, stop after step 4, resume from
    the bucket, end with the metrics of the same run in a local workdir; then
    `evaluate` and `predict` read that checkpoint from gs://.

    Needs train.py to take its paths from `audfer_jax.paths` (see the report of
    issue 15); fails with "Invalid file path: <cwd>/gs://..." before that.
    """
    pytest.importorskip("tensorflow")
    config = (f"{REPO}/configs/demo.py:num_clips=35,epochs=2,size=32,"
              f"data_dir={tmp_path / 'data'}")
    common = ["--config.batch_size=8", "--config.progress_bar=False"]
    _cli(server, tmp_path, "train", "--config", config, "--workdir", tmp_path / "local",
         *common)
    with open(tmp_path / "local" / "metrics.json") as f:
        local = json.load(f)
    assert local["steps"] == 6           # 28 training clips in fold 1 // 8: 3 steps x 2 epochs

    out = _cli(server, tmp_path, "train", "--config", config, "--workdir", "gs://bkt/run",
               "--config.stop_after_steps=4", *common)
    assert '"stopped_at_step": 4' in out
    names = server.names("run/")
    assert "run/config.json" in names and "run/metrics.json" not in names
    assert any(n.startswith("run/checkpoints/4/") for n in names)
    assert not os.path.exists(tmp_path / "gs:")           # the old bug: a local "gs:" folder

    _cli(server, tmp_path, "train", "--config", config, "--workdir", "gs://bkt/run", *common)
    remote = json.loads(server.get("run/metrics.json"))
    assert remote == local
    steps = {n.split("/")[2] for n in server.names("run/checkpoints/")}
    assert steps == {"4", "6"}                  # keep_checkpoints=2: step 3 deleted
    # metrics.jsonl: epoch 1's evaluation, written by the stopped run, kept by the
    # resumed one (no append on GCS: `paths.open_append` rewrites the object).
    lines = [json.loads(x) for x in server.get("run/metrics.jsonl").decode().splitlines()]
    with open(tmp_path / "local" / "metrics.jsonl") as f:
        local_lines = [json.loads(x) for x in f]
    assert [x["step"] for x in lines if "test/uar" in x] == [3, 6]
    assert ([x for x in lines if x["kind"] == "scalars" and "test/uar" in x]
            == [x for x in local_lines if x["kind"] == "scalars" and "test/uar" in x])
    assert [x["kind"] for x in lines].count("hparams") == 1
    # TensorBoard got the URL itself (diverted to a local folder by gcs_cli.py only).
    with open(tmp_path / "tb" / "logdirs.txt") as f:
        assert set(f.read().split()) == {str(tmp_path / "local"), "gs://bkt/run"}

    _cli(server, tmp_path, "evaluate", "--workdir", "gs://bkt/run", "--checkpoint", "last")
    ev = json.loads(server.get("run/evaluation_last_step6.json"))
    assert ev["checkpoint"] == "gs://bkt/run/checkpoints/6"
    assert ev["confusion_matrix"] == local["last"]["confusion_matrix"]
    assert ev["uar"] == pytest.approx(local["last"]["uar"])
    assert ev["war"] == pytest.approx(local["last"]["war"])

    frames = tmp_path / "data" / "demo_raw" / "DFEW" / "Clip" / "clip_224x224" / "00001"
    assert frames.is_dir()
    for name, ckpt in (("gs", "gs://bkt/run"), ("local", tmp_path / "local")):
        _cli(server, tmp_path, "predict", "--checkpoint", ckpt, "--which", "last", frames,
             "--json", tmp_path / f"predict_{name}.json")
    with open(tmp_path / "predict_gs.json") as f:
        from_gs = json.load(f)
    with open(tmp_path / "predict_local.json") as f:
        from_local = json.load(f)
    assert from_gs["checkpoint"].startswith("gs://bkt/run/checkpoints/6")
    assert from_gs["probabilities"] == from_local["probabilities"]
