"""TPU slices that libtpu describes without hardware, and the HBM of their chips."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import sys
import tempfile
from typing import Iterator

# HBM per chip, GiB. Sources: Google Cloud TPU system architecture pages
# (cloud.google.com/tpu/docs/v4, /v5e, /v5p, /v6e): TPU v4 32 GiB HBM2,
# v5e 16 GiB HBM2, v5p 95 GiB HBM2e, v6e (Trillium) 32 GiB.
HBM_GIB = {"v4": 32.0, "v5e": 16.0, "v5p": 95.0, "v6e": 32.0}
# Chip grids: 2-D for the "lite" chips (v5e, v6e), 3-D for v4 and v5p.
_TOPOLOGY_RE = re.compile(r"^(v4|v5e|v5p|v6e):(\d+x\d+(?:x\d+)?)$")
TOPOLOGY_FORMS = ("v5e:AxB", "v6e:AxB", "v4:AxBxC", "v5p:AxBxC")
TOPOLOGY_EXAMPLES = "e.g. v5e:2x2, v5e:4x4, v5e:16x16, v6e:8x8, v4:2x2x2, v5p:4x4x4"
TPU_INSTALL = "pip install 'audfer_jax[tpu]' (or pip install 'jax[tpu]==0.10.2')"
GIB = float(1 << 30)


@dataclasses.dataclass(frozen=True)
class Slice:
    """A named TPU slice described by libtpu, without hardware.

    Attributes:
        name: the topology name, e.g. `v5e:4x4`.
        generation: `v4`, `v5e`, `v5p` or `v6e`.
        devices: libtpu's compile-only `jax.Device`s, one per chip.
        hosts: processes (TPU VM hosts) the slice's chips belong to.
        device_kind: e.g. `TPU v5 lite`.
    """
    name: str
    generation: str
    devices: tuple
    hosts: int
    device_kind: str

    @property
    def chips(self) -> int:
        return len(self.devices)


def parse_topology(name: str, platform: str = "tpu") -> str:
    """The generation of a topology name (`v5e:4x4` -> `v5e`).

    Raises:
        ValueError: a platform other than tpu, or a name not of a form in
            `TOPOLOGY_FORMS`.
    """
    if platform != "tpu":
        raise ValueError(f"--platform {platform}: only tpu can be compiled for without the "
                         "devices (JAX 0.10.2 has no deviceless GPU topology: jax issues "
                         "#23971, #28376); use --platform tpu")
    m = _TOPOLOGY_RE.match(name.strip())
    if not m:
        raise ValueError(f"unknown topology {name!r}; expected one of the forms "
                         f"{', '.join(TOPOLOGY_FORMS)} ({TOPOLOGY_EXAMPLES})")
    gen, shape = m.groups()
    want = 3 if gen in ("v4", "v5p") else 2
    if len(shape.split("x")) != want:
        raise ValueError(f"unknown topology {name!r}: {gen} chips form a "
                         f"{'3-D (AxBxC)' if want == 3 else '2-D (AxB)'} grid; expected one "
                         f"of the forms {', '.join(TOPOLOGY_FORMS)} ({TOPOLOGY_EXAMPLES})")
    return gen


def libtpu_available() -> bool:
    """Whether libtpu can be loaded (`TPU_LIBRARY_PATH` or the `libtpu` package)."""
    path = os.environ.get("TPU_LIBRARY_PATH")
    if path and os.path.isfile(path):
        return True
    try:
        import libtpu  # pylint: disable=g-import-not-at-top,unused-import  # noqa: F401
    except ImportError:
        return False
    return True


def load_slice(name: str, platform: str = "tpu") -> Slice:
    """libtpu's description of the slice `name` (no TPU needed).

    Raises:
        ValueError: bad platform or name (`parse_topology`), libtpu missing
            (names the install line), or a name libtpu rejects.
    """
    gen = parse_topology(name, platform)
    if not libtpu_available():
        raise ValueError(f"--topology {name} needs libtpu, which is not installed: "
                         f"{TPU_INSTALL}")
    import jax  # pylint: disable=g-import-not-at-top
    from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
    try:
        topo = topologies.get_topology_desc(topology_name=name.strip(), platform="tpu")
    except jax.errors.JaxRuntimeError as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"libtpu rejects topology {name!r}: {reason}; expected one of the "
                         f"forms {', '.join(TOPOLOGY_FORMS)} ({TOPOLOGY_EXAMPLES})") from None
    devices = tuple(topo.devices)
    return Slice(name=name.strip(), generation=gen, devices=devices,
                 hosts=len({d.process_index for d in devices}),
                 device_kind=str(devices[0].device_kind))


@contextlib.contextmanager
def quiet_stderr(enabled: bool) -> Iterator[list[str]]:
    """Sends what libtpu and XLA write to file descriptor 2 to a buffer.

    libtpu prints start-up warnings (`TPU_ACCELERATOR_TYPE`,
    `TPU_WORKER_HOSTNAMES`: there is no TPU VM here) and XLA its log lines
    from C++, below Python's `sys.stderr`, so the descriptor itself is
    redirected. Yields a list that holds the captured text afterwards.
    """
    captured: list[str] = []
    if not enabled:
        yield captured
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            captured.append(tmp.read().decode("utf-8", "replace"))
