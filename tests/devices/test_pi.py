"""An emulated Raspberry Pi (arm64 Debian bookworm under qemu-user-static, tests/emulated_pi.py) reached over
ssh like a real one: device_tests/ and a profile run end to end on ARM kernels.

Slow (minutes under emulation; the first run also builds the cached rootfs and wheels).  Timings measured
under emulation are meaningless; correctness of the aarch64 build and of the transport is what is tested.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest

import emulated_pi
from conftest import exported
from devices_support import free_port, keygen, stop

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(emulated_pi.missing_tools()), reason=f"needs {emulated_pi.missing_tools()} (see tests/emulated_pi.py)"),
]


@pytest.fixture(scope="module")
def pi(tmp_path_factory: pytest.TempPathFactory):
    """sshd running inside the emulated Pi on a loopback port; yields the ssh URL of its venv's Python."""
    root, python = emulated_pi.provision()
    work = tmp_path_factory.mktemp("pi")
    etc = root / "etc" / "edgekit-test"
    etc.mkdir(parents=True, exist_ok=True)
    for name in ("host_ed25519", "host_ed25519.pub"):
        (etc / name).unlink(missing_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(etc / "host_ed25519")], check=True)
    key = keygen(work / "client")
    (etc / "authorized_keys").write_text((work / "client.pub").read_text())
    port = free_port()
    (etc / "sshd_config").write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", "HostKey /etc/edgekit-test/host_ed25519",
        "AuthorizedKeysFile /etc/edgekit-test/authorized_keys", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "PermitRootLogin prohibit-password", "StrictModes no", "UsePAM no",
        "Subsystem sftp internal-sftp", "PidFile /run/edgekit-test-sshd.pid",
    ]) + "\n")
    (root / "run" / "sshd").mkdir(parents=True, exist_ok=True)
    with emulated_pi.Chroot(root) as chroot:
        proc = chroot.popen(["/usr/sbin/sshd", "-D", "-e", "-f", "/etc/edgekit-test/sshd_config"],
                            stderr=open(work / "sshd.log", "wb"))
        try:
            for _ in range(600):  # sshd starts slowly under emulation
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", port)) == 0:
                        break
                if proc.poll() is not None:
                    pytest.fail(f"sshd in the emulated Pi exited: {(work / 'sshd.log').read_text()}")
                time.sleep(0.2)
            yield f"ssh://root@127.0.0.1:{port}?identity={key}&known_hosts={work / 'known_hosts'}&python={python}"
        finally:
            stop(proc)


@pytest.fixture(scope="module")
def tiny_q8(export_cache: dict) -> Path:
    return exported(export_cache, "builtin:lfm2-tiny", "gguf", "q8_0", verify=False)


def test_device_tests_pass_on_the_emulated_pi(pi: str, tiny_q8: Path) -> None:
    from edgekit.devices import parse
    from edgekit.devicetest import run_device_tests

    outcome = run_device_tests(tiny_q8, parse(pi), progress=print)
    print(outcome.summary)
    assert outcome.results.get("machine") == "aarch64", outcome.output
    assert outcome.passed, outcome.output


def test_profile_runs_on_the_emulated_pi(pi: str, tiny_q8: Path) -> None:
    from edgekit.devices import parse
    from edgekit.profiling import report
    from edgekit.profiling.session import profile
    from edgekit.profiling.values import ProfileSpec

    spec = ProfileSpec(prompts=(64,), gens=(16,), depths=(0, 32), threads=(1,), repetitions=2)
    rep = profile([tiny_q8], spec, parse(pi), progress=print)
    print(report.table(rep))
    assert rep.inventory["machine"] == "aarch64" and "llama-cpp-python" in rep.inventory["engines"]
    (r,) = rep.results
    assert r.error is None and not r.partial
    assert [c.case.name for c in r.cases] == [c.name for c in spec.cases()]
