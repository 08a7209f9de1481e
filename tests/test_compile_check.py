"""`audfer-jax compile` (audfer_jax/compilation, cli/compile.py) and the platform of a program.

The command runs as users run it (a subprocess of the console script's module);
it compiles for TPU slices that libtpu describes without hardware. XLA:TPU
compiles of the real backbones take tens of CPU seconds even at the tiny
sizes (measured: tiny Former-DFER train step 36 s, eval step 9 s of CPU on
this 2-core machine), so the default run compiles one tiny backbone for a
multi-host slice (train and eval steps), and uses a convolution-free import-path backbone
(`tests/plugin_backbone.py:make_dense_backbone`, about a second per compile)
where many compiles are needed; the three tiny backbones on v5e:2x2 are a
slow test. The platform test only traces the steps (no XLA compile).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from audfer_jax.compilation import max_batch, programs, topologies

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
GIB = 1 << 30

# The tiny MAE-DFER at its own clip size; without the device-side RandAugment
# and mixup, whose XLA:TPU compile would more than double the test's time.
TINY_MAE = ["--config", "configs/mae_dfer.py", "--config.model=mae_dfer_tiny",
            "--config.data.num_frames=8", "--config.data.image_size=32",
            "--config.data.augment=none", "--config.mixup.enabled=False"]
DENSE = ["--config", "configs/demo.py:model=plugin_backbone:make_dense_backbone,size=32"]

needs_libtpu = pytest.mark.skipif(not topologies.libtpu_available(),
                                  reason="libtpu not installed (pip install 'audfer_jax[tpu]')")


def _env(**extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(TESTS), env.get("PYTHONPATH", "")])
    env["JAX_PLATFORMS"] = "cpu"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    env.update(extra)
    return {k: v for k, v in env.items() if v is not None}    # None: unset


def _command(*args) -> list[str]:
    return [sys.executable, "-m", "audfer_jax", "compile", *map(str, args)]


def _run(*args, timeout=900, **env):
    return subprocess.run(_command(*args), cwd=REPO, env=_env(**env), capture_output=True,
                          text=True, timeout=timeout)


def _start(*args, **env):
    return subprocess.Popen(_command(*args), cwd=REPO, env=_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# ---------------------------------------------------------------------------
# The search for the largest batch (pure).
# ---------------------------------------------------------------------------

def _check_search(measure, limit, hint=8):
    calls = []

    def counted(n):
        calls.append(n)
        return measure(n)

    s = max_batch.search_max_batch(counted, limit, hint=hint)
    # Independent: the first size that does not fit, by brute force.
    expected = 0
    while measure(expected + 1) <= limit:
        expected += 1
    assert s.largest == expected
    assert len(calls) == len(set(calls))            # never compiles a size twice
    if expected:
        assert s.measured[expected] <= limit < s.measured[expected + 1]
    return s, calls


def test_search_linear_memory_needs_four_compiles():
    # 1.5 GiB fixed + 0.37 GiB per clip against 16 GiB: the edge is at 39.
    s, calls = _check_search(lambda n: 1.5 * GIB + 0.37 * GIB * n, 16 * GIB)
    assert s.largest == math.floor((16 - 1.5) / 0.37) == 39
    assert calls == [1, 8, 39, 40] and s.predicted == 39


def test_search_memory_with_a_jump_and_curvature():
    # A layout change adds 2 GiB from 25 clips on, and the growth is convex.
    def measure(n):
        return GIB * (1.0 + 0.2 * n + 0.002 * n * n + (2.0 if n >= 25 else 0.0))
    s, calls = _check_search(measure, 9 * GIB, hint=4)
    assert len(calls) <= 7
    assert s.predicted != s.largest                  # the line alone was off


def test_search_memory_growing_in_steps():
    # Tiled layouts: memory rises every 16 clips (per-clip cost 24 KB).
    s, calls = _check_search(lambda n: 2e6 + 24e3 * 16 * math.ceil(n / 16), 21.5e6)
    assert len(calls) <= 12


def test_search_memory_measured_for_the_dense_plugin():
    # Per-chip bytes `audfer-jax compile --max-batch` measured for the dense
    # plug-in backbone on v5e:2x2 (test_max_batch_reports_an_edge): per-chip
    # 1 takes more than 4 or 8 (tile padding), and a layout change adds 3.6 MB
    # between 249 and 259. The earlier search ran out of compiles here.
    known = {1: 2038440, 4: 1084064, 8: 1776448, 9: 1972712, 18: 5105104, 19: 5279352,
             108: 10537696, 109: 10587016, 246: 20506480, 247: 20555800, 249: 20654440,
             259: 24346616}
    sizes = sorted(known)[1:]

    def measure(n):
        if n in known:
            return float(known[n])
        if n > 252:
            return known[259] + (n - 259) * 49320.0
        return float(np.interp(n, sizes, [known[k] for k in sizes]))

    s, calls = _check_search(measure, 0.02 * GIB)
    assert s.largest == 252 - 1 and len(calls) <= 10


def _refused(required):
    return programs.Compiled(seconds=1.0, flops=None, arguments=0, temporaries=0,
                                  outputs=0, aliased=0, code=0,
                                  out_of_memory="RESOURCE_EXHAUSTED: ...", required=required)


def test_search_bytes_counts_a_refused_program_as_not_fitting():
    hbm = 16 * GIB
    ok = programs.Compiled(seconds=1.0, flops=1.0, arguments=3, temporaries=10,
                                outputs=2, aliased=2, code=1)
    assert max_batch.search_bytes(ok, 5, hbm) == 3 + 10 + 2 - 2 + 1 + 5
    # XLA:TPU's v5e limit is 15.75 GiB: a refusal at 15.76 GiB is under the
    # datasheet's 16 GiB and must still count as over it.
    below = max_batch.search_bytes(_refused(int(15.76 * GIB)), 0, hbm)
    assert below > hbm and below - hbm < 1e-6 * hbm
    assert max_batch.search_bytes(_refused(int(21.84 * GIB)), 7, hbm) == int(
            21.84 * GIB) + 7
    assert max_batch.search_bytes(_refused(0), 0, hbm) == math.inf


def test_search_on_the_measured_mae_dfer_bfloat16_curve():
    # MAE-DFER bfloat16, remat off, v5e:2x2 (tools/compile_table.py): per-chip
    # 1 compiled at 2.41 GiB; XLA:TPU refused 24 (21.84 GiB), 17 (15.76 GiB,
    # over its 15.75 GiB limit though under the datasheet's 16) and 18
    # (16.64 GiB). The search once reported 17 as the largest size that fits.
    hbm = 16 * GIB
    refused = {24: 21.84, 17: 15.76, 18: 16.64}

    def measure(n):
        if n in refused:
            return max_batch.search_bytes(_refused(int(refused[n] * GIB)), 0, hbm)
        return (2.41 + (n - 1) * (15.76 - 2.41) / 16) * GIB

    s = max_batch.search_max_batch(measure, hbm, hint=24)
    assert s.largest == 16
    assert s.measured[16] <= hbm < s.measured[17]


def test_search_when_one_clip_does_not_fit():
    s, calls = _check_search(lambda n: 20.0 * GIB * n, 16 * GIB)
    assert s.largest == 0 and calls == [1]


# ---------------------------------------------------------------------------
# Topology names (pure).
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name, gen", [("v5e:4x4", "v5e"), ("v4:2x2x2", "v4"),
                                       ("v5p:4x4x4", "v5p"), ("v6e:8x8", "v6e")])
def test_parse_topology(name, gen):
    assert topologies.parse_topology(name) == gen


@pytest.mark.parametrize("name", ["v5e", "v5e-16", "v5e:4x4x4", "v5p:4x4", "v7:2x2", "tpu"])
def test_unknown_topology_lists_the_forms(name):
    with pytest.raises(ValueError, match="unknown topology .*v5e:AxB, v6e:AxB, v4:AxBxC"):
        topologies.parse_topology(name)


# ---------------------------------------------------------------------------
# The platform of a program (item 2): traced, not compiled.
# ---------------------------------------------------------------------------

TINY_CONFIGS = {
        # (config file, overrides) of each tiny backbone at its own clip size.
        "former_dfer_tiny": ("configs/demo.py:size=32", []),
        "m3dfel_tiny": ("configs/demo.py:model=m3dfel_tiny,size=32", []),
        "mae_dfer_tiny": ("configs/mae_dfer.py", [(a[len("--config."):].split("=", 1))
                                                  for a in TINY_MAE[2:]]),
}
# The XLA:CPU forms each tiny backbone's train step takes on the CPU.
CPU_FORMS_OF = {
        "former_dfer_tiny": {"batch_chunked_conv", "slices_max_pool_backward",
                             "cpu_attention"},
        "m3dfel_tiny": {"frames_conv", "polyphase_backward", "cpu_attention"},
        "mae_dfer_tiny": {"patchify_backward", "cpu_attention"},
}


@pytest.fixture(scope="module")
def v5e_2x2():
    # Compile-only use of libtpu; other JAX processes of this host may hold
    # its lock file (audfer_jax.cli.compile.main sets the same).
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    return topologies.load_slice("v5e:2x2")


@needs_libtpu
@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_tpu_programs_trace_no_cpu_form(name, v5e_2x2):
    import jax  # pylint: disable=g-import-not-at-top
    from audfer_jax import config_lib  # pylint: disable=g-import-not-at-top
    from audfer_jax.models import platform  # pylint: disable=g-import-not-at-top
    spec, overrides = TINY_CONFIGS[name]
    config = config_lib.apply_overrides(config_lib.load_config_file(spec), overrides)
    assert config.model == name
    forms = {}
    for target, devices in (("tpu", v5e_2x2.devices), ("cpu", jax.devices("cpu"))):
        p = programs.build_programs(config, devices, 4 * len(devices))
        # The forms are chosen while the step is traced (`jit(...).trace`,
        # what `lower` and `compile` start with); the train step's backward
        # pass holds every form there is.
        with platform.record_forms() as record:
            p.train_step.trace(p.state, p.train_batch)
        assert {pl for _, pl in record} == {target}
        forms[target] = {f for f, _ in record}
    # TPU: lax's convolutions and pooling, jax.nn.dot_product_attention only.
    assert not forms["tpu"] & set(platform.CPU_FORMS), forms["tpu"]
    assert forms["tpu"] <= {"lax_conv", "lax_max_pool", "fused_attention"}
    assert "fused_attention" in forms["tpu"]
    # The same steps built for the CPU devices still take the CPU forms.
    assert CPU_FORMS_OF[name] <= forms["cpu"], forms["cpu"]


def test_outside_a_target_the_default_backend_decides():
    import jax  # pylint: disable=g-import-not-at-top
    from audfer_jax.models import platform  # pylint: disable=g-import-not-at-top
    assert platform.current() == jax.default_backend()
    with platform.target("tpu"):
        assert platform.current() == "tpu" and not platform.is_cpu()
        with platform.target("cpu"):
            assert platform.is_cpu()
        assert platform.current() == "tpu"
    assert platform.current() == jax.default_backend()


# ---------------------------------------------------------------------------
# The command.
# ---------------------------------------------------------------------------

@needs_libtpu
def test_tiny_mae_dfer_on_a_multi_host_slice(tmp_path):
    """Train and eval steps for v5e:4x4 (16 chips, 4 hosts), figures checked."""
    out = tmp_path / "r.json"
    proc = _run(*TINY_MAE, "--topology", "v5e:4x4", "--batch", 32, "--json", out)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[-1] == "fits: yes"
    # Its output is its own: libtpu's start-up warnings stay hidden.
    assert "TPU_WORKER_HOSTNAMES" not in proc.stdout + proc.stderr
    assert proc.stderr == ""
    r = json.loads(out.read_text())
    assert (r["chips"], r["hosts"], r["device_kind"]) == (16, 4, "TPU v5 lite")
    assert (r["global_batch"], r["per_chip_batch"], r["per_host_batch"]) == (32, 2, 8)
    assert "32 clips, 2 per chip, 8 per host" in proc.stdout
    assert r["hbm_gib"] == 16.0
    for prog in ("train", "eval"):
        m = r[prog]
        total = m["arguments"] + m["temporaries"] + m["outputs"] - m["aliased"] + m["code"]
        assert r[f"{prog}_total_bytes"] == total > 0
    # The state is donated: the new state's buffers alias the old ones.
    assert 0 < r["train"]["aliased"] <= r["train"]["arguments"]
    assert r["eval"]["aliased"] == 0
    # The replicated state is in every chip's arguments: at least the
    # parameters and AdamW's two moments, 4 bytes each.
    params = _param_count("mae_dfer_tiny")
    assert r["train"]["arguments"] >= 3 * 4 * params
    assert r["flops_per_clip"] > 0
    assert "FLOPs per clip" in proc.stdout


def _param_count(name: str) -> int:
    import jax  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    from audfer_jax import models, steps  # pylint: disable=g-import-not-at-top
    model = models.get_model(name)
    shapes = steps.abstract_params(model, models.default_input_shape(name))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))


@needs_libtpu
def test_batch_far_beyond_hbm_does_not_fit(tmp_path):
    out = tmp_path / "r.json"
    # 2**20 clips of 8x32x32x3 uint8 per chip: 24 GiB of clips alone against
    # the v5e's 16 GiB.
    per_chip = 1 << 20
    proc = _run(*DENSE, "--topology", "v5e:2x2", "--batch", 4 * per_chip, "--no-eval",
                "--json", out)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1] == "fits: no"
    r = json.loads(out.read_text())
    assert r["per_chip_batch"] == per_chip and r["hbm_gib"] == 16.0
    # XLA:TPU refuses to compile a program beyond the chip's HBM; the bytes
    # it says the program needs are at least the chip's clips.
    assert "RESOURCE_EXHAUSTED" in r["train"]["out_of_memory"]
    assert r["train_total_bytes"] >= per_chip * 8 * 32 * 32 * 3 > 16 * GIB
    assert "XLA:TPU refused to compile it" in proc.stdout
    assert r["fits"] is False


@needs_libtpu
def test_max_batch_reports_an_edge(tmp_path):
    out = tmp_path / "r.json"
    proc = _run(*DENSE, "--topology", "v5e:2x2", "--max-batch", "--hbm-gib", 0.02,
                "--no-eval", "--json", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    r = json.loads(out.read_text())
    n = r["max_batch_per_chip"]
    measured = {int(k): v for k, v in r["max_batch_compiles"].items()}
    limit = 0.02 * GIB
    assert n >= 2 and measured[n] <= limit < measured[n + 1]
    assert f"largest per-chip batch that fits: {n} " in proc.stdout
    # Measured: the train step and the batches `train` prefetches to the chips.
    assert r["per_chip_batch"] == n
    assert r["train_total_bytes"] + r["prefetch_bytes"] == measured[n]
    assert r["prefetch_bytes"] == 2 * n * (8 * 32 * 32 * 3 + 4 + 18 * 4 + 4 + 4)
    assert proc.stdout.splitlines()[-1] == "fits: yes"


def test_error_lines(tmp_path):
    """Each user error: one line on stderr naming what was wrong; nonzero exit."""
    fake = tmp_path / "no_libtpu" / "libtpu"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    cases = {
            "topology": (_start(*TINY_MAE, "--topology", "v5e-16"),
                         "unknown topology 'v5e-16'; expected one of the forms v5e:AxB, "
                         "v6e:AxB, v4:AxBxC, v5p:AxBxC"),
            "platform": (_start(*TINY_MAE, "--topology", "v5e:2x2", "--platform", "gpu"),
                         "--platform gpu: only tpu can be compiled for"),
            "pmap": (_start(*TINY_MAE, "--topology", "v5e:2x2", "--config.strategy=pmap"),
                     "config.strategy='pmap': compile supports the default jit strategy"),
            # (importing libtpu sets TPU_LIBRARY_PATH, which subprocesses inherit)
            "libtpu": (_start(*TINY_MAE, "--topology", "v5e:2x2", TPU_LIBRARY_PATH=None,
                              PYTHONPATH=os.pathsep.join([str(fake.parent), str(REPO)])),
                       "needs libtpu, which is not installed: pip install 'audfer_jax[tpu]'"),
    }
    if topologies.libtpu_available():
        cases["batch"] = (_start(*TINY_MAE, "--topology", "v5e:2x2", "--batch", 6),
                          "global batch 6 is not a multiple of the 4 chips; choose a "
                          "multiple of 4")
    for name, (proc, expected) in cases.items():
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode != 0, name
        lines = stderr.strip().splitlines()
        assert len(lines) == 1, (name, stderr)
        assert lines[0].startswith("audfer-jax compile: error: "), (name, lines[0])
        assert expected in lines[0], (name, lines[0])
        assert "fits:" not in stdout


@needs_libtpu
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_tiny_backbones_on_v5e_2x2(name, tmp_path):
    spec, overrides = TINY_CONFIGS[name]
    out = tmp_path / "r.json"
    proc = _run("--config", spec, *[f"--config.{k}={v}" for k, v in overrides],
                "--topology", "v5e:2x2", "--batch", 8, "--json", out)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    assert (r["chips"], r["hosts"], r["per_chip_batch"]) == (4, 1, 2)
    assert r["fits"] and r["train_total_bytes"] > 0 and r["eval_total_bytes"] > 0
