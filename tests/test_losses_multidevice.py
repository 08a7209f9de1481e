"""The AU-DFER loss is a global mean under data parallelism (8 fake devices)."""

from pathlib import Path


def test_sharded_loss_equals_single_device(run_multidevice):
    out = run_multidevice(Path(__file__).parent / "multidevice" / "loss_sharded.py")
    assert "OK" in out
