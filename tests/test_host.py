"""host.quiet_tpu_probe: libtpu stays silent on CPU hosts, TPU VMs keep their TPU."""

import os
import subprocess
import sys

import pytest

from audfer_jax import cli
from audfer_jax import host

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBTPU_NOISE = ("Failed to find host bounds", "INVALID_ARGUMENT", "Source Location Trace")


def _pci(root, *devices):
    """A stand-in /sys/bus/pci/devices with `(vendor, device)` entries."""
    for i, (vendor, device) in enumerate(devices):
        d = root / f"0000:00:{i:02x}.0"
        d.mkdir(parents=True)
        (d / "vendor").write_text(vendor + "\n")
        (d / "device").write_text(device + "\n")
    return str(root)


def test_cpu_host_with_libtpu_gets_cpu(tmp_path):
    root = _pci(tmp_path / "pci", ("0x8086", "0x1237"), ("0x1ae0", "0x0001"))  # not a TPU
    env = {}
    assert host.quiet_tpu_probe(env, pci_root=root, gpu_device_files=(), libtpu=True) == "cpu"
    assert env == {"JAX_PLATFORMS": "cpu"}


@pytest.mark.parametrize("device", ["0x0063", "0x0062", "0x006f", "0x005e"])
def test_tpu_vm_is_left_alone(tmp_path, device):
    """v5e, v5p, v6e, v4 chips on the PCI bus: JAX picks the TPU as before."""
    root = _pci(tmp_path / "pci", ("0x8086", "0x1237"), ("0x1ae0", device))
    assert host.tpu_chips(root) == 1
    env = {"HOME": "/root"}
    assert host.quiet_tpu_probe(env, pci_root=root, gpu_device_files=(), libtpu=True) is None
    assert env == {"HOME": "/root"}


@pytest.mark.parametrize("env", [{"JAX_PLATFORMS": "tpu"}, {"JAX_PLATFORMS": "cpu,cuda"},
                                 {"TPU_ACCELERATOR_TYPE": "v5litepod-16"},
                                 {"JAX_FORCE_TPU_INIT": "1"}])
def test_a_stated_platform_wins(tmp_path, env):
    root = _pci(tmp_path / "pci")
    before = dict(env)
    assert host.quiet_tpu_probe(env, pci_root=root, gpu_device_files=(), libtpu=True) is None
    assert env == before


def test_gpu_host_and_no_libtpu_are_left_alone(tmp_path):
    root = _pci(tmp_path / "pci")
    gpu = tmp_path / "nvidia0"
    gpu.write_text("")
    env = {}
    assert host.quiet_tpu_probe(env, pci_root=root, gpu_device_files=(str(gpu),),
                                libtpu=True) is None
    assert host.quiet_tpu_probe(env, pci_root=root, gpu_device_files=(), libtpu=False) is None
    assert env == {}


def test_entry_point_calls_the_probe_before_the_command(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(host, "quiet_tpu_probe", lambda: calls.append(1))
    assert cli.main(["--help"]) == 0
    assert calls == [1]
    capsys.readouterr()


@pytest.mark.skipif(not host.libtpu_installed(), reason="libtpu not installed")
@pytest.mark.skipif(host.tpu_chips() > 0, reason="a TPU host")
def test_no_libtpu_noise_on_this_cpu_host():
    """A fresh process, as `audfer-jax` starts: the probe, then JAX's first device query."""
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    code = ("from audfer_jax import host; host.quiet_tpu_probe(); import jax; "
            "print(jax.devices()[0].platform)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, text=True,
                          capture_output=True, timeout=120, check=True)
    assert proc.stdout.split() == ["cpu"]
    assert not [n for n in LIBTPU_NOISE if n in proc.stderr], proc.stderr
    # The same process without the probe shows what it prevents.
    bare = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"], cwd=REPO,
                          env=env, text=True, capture_output=True, timeout=120)
    assert any(n in bare.stderr for n in LIBTPU_NOISE), bare.stderr
