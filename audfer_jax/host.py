"""What this host has, read before JAX starts: TPU chips and GPUs on the PCI bus.

`audfer-jax` is often installed with libtpu (the `[tpu]` extra, which the
`[test]` extra pulls in for `audfer-jax compile`) on hosts that have no TPU.
There JAX still loads libtpu at its first device query, and libtpu prints
start-up errors ("Failed to find host bounds for accelerator type",
"INVALID_ARGUMENT: unexpected worker hostname ...") before the command's own
first line. `quiet_tpu_probe` keeps JAX off the TPU backend on such hosts by
setting `JAX_PLATFORMS=cpu` when nothing else chose the platforms; on a TPU VM
(Google TPU chips on the PCI bus) or a GPU host it changes nothing.

The TPU check reads the PCI vendor and device ids, as JAX's own
`jax._src.hardware_utils.num_available_tpu_chips_and_device_id` does (Google's
vendor id 0x1ae0 with a TPU device id); the GPU check looks for the device
files that JAX's GPU plugins open.
"""

from __future__ import annotations

import glob
import importlib.util
import os
from typing import MutableMapping, Optional, Sequence

_GOOGLE_PCI_VENDOR = "0x1ae0"
# TPU device ids on the PCI bus, v3 to TPU7x (jax/_src/hardware_utils.py, JAX 0.10.2).
_TPU_PCI_DEVICES = ("0x0027", "0x0056", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076")
# NVIDIA (bare metal, containers, WSL2) and AMD device files.
_GPU_DEVICE_FILES = ("/dev/nvidia0", "/dev/nvidiactl", "/dev/dxg", "/dev/kfd")
# Variables with which a user or a launcher (GKE, XPK, queued resources)
# states a TPU set-up explicitly: JAX is then left to do what they ask.
_TPU_ENV = ("JAX_FORCE_TPU_INIT", "TPU_ACCELERATOR_TYPE", "TPU_WORKER_HOSTNAMES",
            "TPU_PROCESS_ADDRESSES")


def tpu_chips(pci_root: str = "/sys/bus/pci/devices") -> int:
    """The number of Google TPU chips on this host's PCI bus (0 off a TPU VM)."""
    count = 0
    for vendor_path in glob.glob(os.path.join(pci_root, "*", "vendor")):
        try:
            with open(vendor_path) as f:
                if f.read().strip() != _GOOGLE_PCI_VENDOR:
                    continue
            with open(os.path.join(os.path.dirname(vendor_path), "device")) as f:
                count += f.read().strip() in _TPU_PCI_DEVICES
        except OSError:
            continue
    return count


def libtpu_installed() -> bool:
    """Whether the `libtpu` package (JAX's TPU runtime) can be imported."""
    return importlib.util.find_spec("libtpu") is not None


def quiet_tpu_probe(environ: Optional[MutableMapping[str, str]] = None, *,
                    pci_root: str = "/sys/bus/pci/devices",
                    gpu_device_files: Sequence[str] = _GPU_DEVICE_FILES,
                    libtpu: Optional[bool] = None) -> Optional[str]:
    """Sets `JAX_PLATFORMS=cpu` on a CPU-only host that has libtpu installed.

    Call before JAX initialises its backends (the `audfer-jax` entry point
    calls it first). Nothing changes when `JAX_PLATFORMS` is already set,
    when a TPU set-up is stated in the environment (`JAX_FORCE_TPU_INIT`,
    `TPU_ACCELERATOR_TYPE`, ...), when libtpu is not installed (JAX then
    prints nothing), when TPU chips are on the PCI bus, or when a GPU device
    file exists.

    Args:
        environ: the environment to read and change (default `os.environ`).
        pci_root: the PCI device folder (tests pass a stand-in).
        gpu_device_files: device files whose presence means a GPU.
        libtpu: whether libtpu is installed (default: look).

    Returns:
        The value set (`"cpu"`), or None when nothing was changed.
    """
    environ = os.environ if environ is None else environ
    if environ.get("JAX_PLATFORMS") or any(k in environ for k in _TPU_ENV):
        return None
    if not (libtpu_installed() if libtpu is None else libtpu):
        return None
    if tpu_chips(pci_root) or any(os.path.exists(f) for f in gpu_device_files):
        return None
    environ["JAX_PLATFORMS"] = "cpu"
    return "cpu"
