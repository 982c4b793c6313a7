"""The ssh device against a real OpenSSH server on loopback, with throwaway keys (tests/devices_support.py).

The "device" is this machine reached through sshd: the same commands, copies and failure modes as a Pi.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from conftest import exported
from devices_support import keygen, ssh_missing, start_sshd, stop
from edgekit.errors import DeviceError, RuntimeMissingError
from edgekit.profiling.values import ProfileSpec

pytestmark = pytest.mark.skipif(ssh_missing() is not None, reason=ssh_missing() or "")

SMALL = ProfileSpec(prompts=(32,), gens=(8,), threads=(1,), repetitions=2)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory):
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    stop(server.proc)


@pytest.fixture(scope="module")
def bundle(export_cache: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # the trained built-in: device_tests check its outputs against the bundle's quantisation thresholds
    src = exported(export_cache, "builtin:lfm2-tiny", "gguf", "q8_0", verify=False)
    # a private copy: these tests change files in it
    out = tmp_path_factory.mktemp("ssh") / "tiny-q8"
    shutil.copytree(src, out)
    return out


def device(sshd, **kw):
    from edgekit.devices import parse

    return parse(sshd.url(python=kw.pop("python", sys.executable), **kw))


def test_parse_ssh_urls() -> None:
    from edgekit.devices.ssh import SshTarget
    from edgekit.errors import UnsupportedError

    t = SshTarget.parse("ssh://pi@raspberrypi.local:2222?python=/home/pi/venv/bin/python&identity=/k")
    assert (t.user, t.host, t.port, t.python, t.identity) == ("pi", "raspberrypi.local", 2222, "/home/pi/venv/bin/python", "/k")
    argv = t.ssh_argv("true")
    for opt in ("BatchMode=yes", "ConnectTimeout=5", "StrictHostKeyChecking=accept-new"):
        assert opt in argv
    assert argv[argv.index("-p") + 1] == "2222" and "pi@raspberrypi.local" in argv
    assert SshTarget.parse("ssh://host").port == 22 and SshTarget.parse("ssh://host").user is None
    with pytest.raises(UnsupportedError, match="unknown option"):
        SshTarget.parse("ssh://h?password=x")
    with pytest.raises(UnsupportedError, match="port"):
        SshTarget.parse("ssh://h:notaport")


def test_profile_over_ssh(sshd, bundle: Path) -> None:
    from edgekit.profiling.session import profile

    rep = profile([bundle], SMALL, device(sshd))
    assert rep.device.startswith("ssh://") and not rep.partial
    assert rep.inventory["machine"] and rep.inventory["engines"]["llama-cpp-python"]
    (r,) = rep.results
    assert r.error is None and [c.case.name for c in r.cases] == ["pp32", "tg8"]
    assert all(c.tps_mean > 0 for c in r.cases) and r.cases[1].roofline_fraction


def test_bundle_is_copied_only_when_absent_or_changed(sshd, bundle: Path) -> None:
    dev = device(sshd)
    dev.check()
    remote = dev.stage_bundle(bundle)
    dev.stage_bundle(bundle)
    assert dev.copied == 0  # unchanged: nothing sent
    # damage the copy on the device: its hash differs, so exactly that file is sent again
    on_device = Path(remote.replace("~", str(Path.home()), 1)) / "tokenizer_config.json"
    on_device.write_text("{}")
    dev.stage_bundle(bundle)
    assert dev.copied == 1
    assert on_device.read_bytes() == (bundle / "tokenizer_config.json").read_bytes()


def test_refused_key_is_a_clear_error(sshd, tmp_path: Path) -> None:
    stranger = keygen(tmp_path / "stranger")
    with pytest.raises(DeviceError, match="refused the key.*authorized_keys"):
        device(sshd, key=stranger).check()


def test_unreachable_host_is_a_clear_error(sshd) -> None:
    from devices_support import free_port

    with pytest.raises(DeviceError, match="cannot reach"):
        device(sshd, port=free_port()).check()  # nothing listens there


def test_device_without_python_says_what_to_install(sshd) -> None:
    with pytest.raises(DeviceError, match="no /nonexistent/python3.*install Python"):
        device(sshd, python="/nonexistent/python3").check()


def test_device_without_the_runtime_gets_the_install_command(sshd, bundle: Path, tmp_path: Path) -> None:
    from edgekit.profiling.session import profile

    # a bare venv: Python without numpy or llama-cpp-python, as on a fresh Pi
    subprocess_run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")])
    with pytest.raises(RuntimeMissingError, match=r"lacks the llama\.cpp runtime.*pip install .*llama-cpp-python==0\.3\.36"):
        profile([bundle], SMALL, device(sshd, python=str(tmp_path / "bare" / "bin" / "python")))


def test_bundle_failing_on_the_device_brings_its_error_back(sshd, bundle: Path, tmp_path: Path) -> None:
    from edgekit.profiling.session import profile

    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    (broken / "model.gguf").write_bytes(b"\0" * (broken / "model.gguf").stat().st_size)
    rep = profile([broken], SMALL, device(sshd), bandwidth=False)
    (r,) = rep.results
    # the device's own bundle check refuses the damaged file before llama.cpp maps it, and says so here
    assert r.partial and "sha256 differs from the manifest" in r.error and str(broken) in r.bundle


def test_cli_profile_over_ssh(sshd, bundle: Path, capsys: pytest.CaptureFixture) -> None:
    from edgekit.cli import main

    rc = main(["profile", str(bundle), "-p", "16", "-n", "4", "-r", "1", "-t", "1", "-o", "jsonl", "-q",
               "--device", sshd.url(python=sys.executable)])
    assert rc == 0
    out = capsys.readouterr().out
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert len(rows) == 2, out
    assert [r["test"] for r in rows] == ["pp16", "tg4"] and rows[0]["device"].startswith("ssh://")


@pytest.mark.slow  # ~35 s alone (CI time); the other ssh tests (profile, copy, errors) stay in the default run
def test_device_test_over_ssh(sshd, bundle: Path) -> None:
    from edgekit.devicetest import run_device_tests

    outcome = run_device_tests(bundle, device(sshd), progress=lambda _m: None)
    assert outcome.results.get("metrics"), outcome.output
    assert outcome.results["metrics"]["host_top1"] == 1.0  # same engine, same machine: identical argmax
    assert outcome.passed, outcome.output


def subprocess_run(argv: list[str]) -> None:
    import subprocess

    subprocess.run(argv, check=True)
