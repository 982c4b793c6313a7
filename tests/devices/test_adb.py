"""The adb device: command construction with a recorded runner (no phone can exist here), and a real run that
is skipped unless a phone is attached."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from edgekit.devices.adb import AdbDevice, AdbTarget, parse_devices
from edgekit.errors import DeviceError, UnsupportedError


class Recorder:
    """Stands in for the adb binary: records argv, answers like adb does."""

    def __init__(self, devices: str = "List of devices attached\nR58M123 device\n", port: str = "41234\n") -> None:
        self.calls: list[list[str]] = []
        self.devices = devices
        self.port = port

    def __call__(self, argv: list[str]) -> subprocess.CompletedProcess:
        self.calls.append(argv)
        out = self.devices if argv[1:] == ["devices"] else self.port if "forward" in argv else ""
        return subprocess.CompletedProcess(argv, 0, out.encode(), b"")


def test_parse_adb_specs() -> None:
    assert AdbTarget.parse("adb") == AdbTarget()
    t = AdbTarget.parse("adb:R58M123?user=u0_a77&port=8023&python=python3.12")
    assert (t.serial, t.user, t.port, t.python) == ("R58M123", "u0_a77", 8023, "python3.12")
    assert t.adb_argv("forward", "tcp:0", "tcp:8022") == ["adb", "-s", "R58M123", "forward", "tcp:0", "tcp:8022"]
    assert AdbTarget().adb_argv("devices") == ["adb", "devices"]
    with pytest.raises(UnsupportedError, match="unknown option"):
        AdbTarget.parse("adb:X?pin=1")


def test_parse_devices_keeps_only_ready_phones() -> None:
    out = "List of devices attached\nA device\nB unauthorized\nemulator-5554 offline\nC device usb:1-1\n"
    assert parse_devices(out) == ["A", "C"]


def test_forward_then_ssh_to_termux(tmp_path: Path) -> None:
    rec = Recorder()
    dev = AdbDevice(AdbTarget.parse("adb:R58M123?identity=/k"), runner=rec, known_hosts=tmp_path / "kh")
    ssh = dev.ssh()
    assert rec.calls[0] == ["adb", "devices"]
    assert rec.calls[1] == ["adb", "-s", "R58M123", "forward", "tcp:0", "tcp:8022"]
    argv = ssh.target.ssh_argv("true")
    assert argv[argv.index("-p") + 1] == "41234" and "127.0.0.1" in argv and "-i" in argv
    assert f"UserKnownHostsFile={tmp_path / 'kh'}" in argv
    cmd = dev.python_command.__func__  # the python command goes through the same ssh target
    assert ssh.target.python == "python" and dev.name == "adb:R58M123" and cmd
    assert "pkg install python" in dev.install_hint(["llama-cpp-python==0.3.36"])


@pytest.mark.parametrize(
    "listing, spec, message",
    [
        ("List of devices attached\n\n", "adb", "no Android device attached"),
        ("List of devices attached\nA device\n", "adb:B", "no device 'B'; attached: A"),
        ("List of devices attached\nA device\nB device\n", "adb", "several devices"),
    ],
)
def test_device_selection_errors(listing: str, spec: str, message: str) -> None:
    with pytest.raises(DeviceError, match=message):
        AdbDevice(AdbTarget.parse(spec), runner=Recorder(listing)).ssh()


def _attached() -> list[str]:
    if not shutil.which("adb"):
        return []
    try:
        out = subprocess.run(["adb", "devices"], capture_output=True, timeout=20).stdout.decode()
    except (OSError, subprocess.TimeoutExpired):
        return []
    return parse_devices(out)


@pytest.mark.skipif(not _attached(), reason="no Android phone attached (adb devices lists none)")
def test_profile_on_an_attached_phone(export_cache: dict) -> None:
    from conftest import exported
    from edgekit.devices import parse
    from edgekit.profiling.session import profile
    from edgekit.profiling.values import ProfileSpec

    bundle = exported(export_cache, "builtin:lfm2-tiny", "gguf", "q4_0", verify=False)
    rep = profile([bundle], ProfileSpec(prompts=(64,), gens=(16,), repetitions=2), parse("adb"))
    assert rep.results and rep.results[0].error is None
