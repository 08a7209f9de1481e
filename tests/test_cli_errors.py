"""Every sub-command answers a bad argument with one line on stderr and a nonzero exit.

Each case runs `python -m audfer_jax ...` in a subprocess (what a user
runs), with the cheapest failures of each command: all of them stop before
any JAX compilation. The subprocesses run in parallel.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import subprocess
import sys

import pytest

from audfer_jax import hints

from audfer_jax.cli import errors as cli_errors
from audfer_jax import config_lib
from conftest import REPO

CFG = "configs/former_dfer.py"


def _env(debug: bool = False) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    # As the Makefile: TensorFlow's C++ log and oneDNN notice off.
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["TF_ENABLE_ONEDNN_OPTS"] = "0"
    env["JAX_PLATFORMS"] = "cpu"
    env.pop(cli_errors.DEBUG_ENV, None)
    if debug:
        env[cli_errors.DEBUG_ENV] = "1"
    return env


def _run(args, debug=False, timeout=240):
    return subprocess.run([sys.executable, "-m", "audfer_jax", *args], cwd=REPO,
                          env=_env(debug), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_errors")
    empty = root / "empty"
    empty.mkdir()
    no_split = root / "no_split_files"          # a folder, but not a DFEW release
    no_split.mkdir()
    (no_split / "readme.txt").write_text("not DFEW\n")
    run = root / "run_without_checkpoints"
    run.mkdir()
    (root / "exists").mkdir()
    not_pth = root / "weights.pth"
    not_pth.write_bytes(b"not a torch checkpoint")
    return {"empty": str(empty), "no_split": str(no_split), "missing": str(root / "missing"),
            "run": str(run), "exists": str(root / "exists"), "not_pth": str(not_pth),
            "out": str(root / "out"), "new": str(root / "never_created")}


# (arguments, pieces the error line must contain). `{name}` is a `paths` entry.
CASES = [
    (["trian"], ["unknown command 'trian'", "did you mean 'train'"]),
    # prepare
    (["prepare", "--dataset", "dfw", "--raw_dir", "{empty}", "--data_dir", "{out}"],
     ["audfer-jax prepare: error:", "invalid choice", "did you mean 'dfew'"]),
    (["prepare", "--dataset", "dfew"], ["required", "--raw_dir"]),
    (["prepare", "--dataset", "dfew", "--raw_dir", "{missing}", "--data_dir", "{out}"],
     ["{missing}", "not a folder"]),
    (["prepare", "--dataset", "dfew", "--raw_dir", "{empty}", "--data_dir", "{out}"],
     ["{empty}", "is empty"]),
    (["prepare", "--dataset", "dfew", "--raw_dir", "{empty}", "--data_dir", "{out}",
      "--fold", "9"], ["fold(s) [9] not valid for dfew"]),
    (["prepare", "--dataset", "dfew", "--raw_dir", "{no_split}", "--data_dir", "{out}",
      "--fold", "1"], ["no DFEW layout", "{no_split}"]),
    # train: config file arguments, config fields, files
    (["train", "--config", CFG + ":dataset=nope", "--workdir", "{out}"],
     ["unknown dataset 'nope'", "dfew, ferv39k, mafw, demo"]),
    (["train", "--config", CFG + ":dataset=dfw", "--workdir", "{out}"],
     ["did you mean 'dfew'"]),
    (["train", "--config", CFG + ":fold=9", "--workdir", "{out}"],
     ["fold=9", "folds 1..5"]),
    (["train", "--config", CFG + ":loss=nonsense", "--workdir", "{out}"],
     ["unknown loss 'nonsense'", "au_distinct"]),
    (["train", "--config", CFG + ":flod=2", "--workdir", "{out}"],
     ["unknown config argument 'flod'", "did you mean 'fold'"]),
    (["train", "--config", CFG + ":fold=two", "--workdir", "{out}"],
     ["fold='two'", "expected an integer"]),
    (["train", "--config", CFG, "--config.num_epochz=3", "--workdir", "{out}"],
     ["num_epochz", "did you mean 'num_epochs'"]),
    (["train", "--config", CFG, "--config.data.imgsize=3", "--workdir", "{out}"],
     ["data.imgsize", "did you mean 'data.image_size'"]),
    (["train", "--config", CFG, "--config.num_epochs=three", "--workdir", "{out}"],
     ["--config.num_epochs=three", "expected an integer"]),
    (["train", "--config", "configs/nope.py", "--workdir", "{out}"],
     ["no such config file 'configs/nope.py'"]),
    (["train", "--config", CFG], ["--config and --workdir are required"]),
    (["train", "--confg", CFG, "--workdir", "{out}"], ["confg"]),
    (["train", "--config", CFG, "--workdir", "{out}", "--config.data.data_dir={missing}"],
     ["no prepared data", "audfer-jax prepare"]),
    # evaluate
    (["evaluate", "--workdir", "{missing}"], ["no such run directory"]),
    (["evaluate", "--workdir", "{run}"], ["{run}"]),
    (["evaluate", "--workdir", "{run}", "--config.batch_size"], ["needs a value"]),
    # predict
    (["predict", "--checkpoint", "{run}", "{missing}"], ["{missing}", "no such file"]),
    (["predict", "--checkpoint", "{missing}", "{empty}"], ["no images", "{empty}"]),
    (["predict", "--checkpoint", "{run}", "{empty}", "--top_k", "x"],
     ["--top_k", "invalid int value"]),
    # convert
    (["convert", "--model", "formerdfer", "--checkpoint", "{not_pth}", "--out", "{new}"],
     ["invalid choice", "did you mean"]),
    (["convert", "--model", "former_dfer", "--checkpoint", "{missing}", "--out", "{new}"],
     ["{missing}"]),
    (["convert", "--model", "former_dfer", "--checkpoint", "{not_pth}", "--out", "{exists}"],
     ["already exists"]),
    # sweep
    (["sweep", "--config", CFG, "--folds", "3-1", "--workdir", "{out}"], ["--folds '3-1'"]),
    (["sweep", "--config", CFG + ":dataset=nope", "--workdir", "{out}"],
     ["unknown dataset 'nope'"]),
    (["sweep", "--config", CFG, "--workdir", "{out}", "--config.num_epochz=3"],
     ["did you mean 'num_epochs'"]),
    (["sweep", "--config", CFG, "--workdir", "{out}", "--config.data.fold=2"],
     ["--folds"]),
    # bench
    (["bench", "modle"], ["did you mean 'model'"]),
    (["bench", "model", "--model", "nope"], ["audfer-jax bench model: error:",
                                             "'nope' is neither a registered model"]),
    (["bench", "train", "--config", "configs/nope.py"], ["configs/nope.py"]),
    (["bench", "input", "--batch", "x"], ["--batch", "invalid int value"]),
    # demo
    (["demo", "--out", "{out}", "--num_clips", "many"], ["--num_clips"]),
    # every command that reads a config: a wrong key, a wrong model override, a
    # wrong model, a wrong path (issue 32)
    (["train", "--config", CFG, "--workdir", "{out}", "--config.model_overrides={{'dept': 2}}",
      "--config.data.data_dir={missing}"], ["model 'former_dfer' has no field(s) ['dept']"]),
    (["sweep", "--config", CFG, "--workdir", "{out}", "--folds", "1",
      "--config.model_overrides={{'dept': 2}}", "--config.data.data_dir={missing}"],
     ["has no field(s) ['dept']"]),
    (["sweep", "--config", "configs/nope.py", "--workdir", "{out}"], ["configs/nope.py"]),
    (["compile", "--config", CFG, "--topology", "v5e:2x2", "--config.num_epochz=3"],
     ["did you mean 'num_epochs'"]),
    (["compile", "--config", CFG, "--topology", "v5e:2x2",
      "--config.model_overrides={{'dept': 2}}"], ["has no field(s) ['dept']"]),
    (["compile", "--config", "configs/nope.py", "--topology", "v5e:2x2"], ["configs/nope.py"]),
    (["bench", "train", "--config", CFG, "--config.num_epochz=3"],
     ["did you mean 'num_epochs'"]),
    (["bench", "train", "--config", CFG, "--config.model=former_dfr"],
     ["unknown model 'former_dfr'"]),
    (["bench", "train", "--config", CFG, "--config.model_overrides={{'dept': 2}}"],
     ["has no field(s) ['dept']"]),
    (["evaluate", "--workdir", "{run}", "--config.num_epochz=3"], ["{run}"]),
]


def _fill(items, paths):
    return [x.format(**paths) for x in items]


def test_every_bad_argument_is_one_line(paths):
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        procs = list(pool.map(lambda case: _run(_fill(case[0], paths)), CASES))
    failures = []
    for (args, expected), proc in zip(CASES, procs):
        lines = proc.stderr.splitlines()
        ok = (proc.returncode not in (0, None) and len(lines) == 1
              and "Traceback" not in proc.stderr
              and re.match(r"audfer-jax( [a-z]+)*: error: ", lines[0])
              and (args[0] == "trian" or lines[0].startswith(f"audfer-jax {args[0]}"))
              and all(e in lines[0] for e in _fill(expected, paths)))
        if not ok:
            failures.append(f"{' '.join(args)}\n  exit {proc.returncode}, stderr:\n"
                            f"{proc.stderr[-3000:]}")
    assert not failures, "\n".join(failures)


def test_debug_shows_the_traceback(paths):
    args = ["train", "--config", CFG + ":fold=9", "--workdir", paths["out"]]
    for proc in (_run(["--debug", *args]), _run(args, debug=True)):
        assert proc.returncode == 2
        assert "Traceback (most recent call last)" in proc.stderr
        assert proc.stderr.rstrip().splitlines()[-1].startswith("audfer-jax train: error:")


def test_config_arguments_name_field_value_and_choices():
    with pytest.raises(ValueError, match=r"unknown loss 'au_distnct'.*did you mean 'au_distinct'"):
        config_lib.check_variant("dfew", 1, "au_distnct")
    with pytest.raises(ValueError, match=r"fold=0 is out of range: dfew has folds 1..5"):
        config_lib.check_variant("dfew", 0, "au")
    with pytest.raises(ValueError, match=r"ferv39k has one split"):
        config_lib.check_variant("ferv39k", 2, "au")
    with pytest.raises(ValueError, match=r"expected true or false"):
        config_lib.parse_arg("flag=maybe", flag=False)
    assert config_lib.parse_arg("flag=on,n=3", flag=False, n=1).to_dict() == {
            "flag": True, "n": 3}


def test_one_line_and_root_cause():
    assert hints.one_line(KeyError("a\n  b")) == "a b"
    err = FileNotFoundError(2, "No such file or directory", "/x/y")
    assert hints.one_line(err) == "/x/y: no such file or directory"
    try:
        try:
            raise ValueError("the real reason")
        except ValueError:
            raise ValueError("Error whilst parsing config file:\n\nTraceback ...") from None
    except ValueError as wrapper:
        # `from None` hides the context from tracebacks but keeps __context__.
        assert str(cli_errors.root_cause(wrapper)) == "the real reason"
    assert hints.did_you_mean("dfw", ["dfew", "mafw"]) == "; did you mean 'dfew'?"
    assert hints.did_you_mean("zzz", ["dfew"]) == ""
