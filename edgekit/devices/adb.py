"""An Android phone over adb: ``adb[:serial][?user=U&port=8022&identity=KEY&python=python]``.

Python on Android runs inside Termux, whose files the adb shell user may not execute; Termux's own sshd can.
So edgekit forwards a local port to Termux's sshd over adb (``adb forward tcp:0 tcp:8022``, USB only, no
network needed) and then uses the ssh device through it: same payload, same copy-by-hash, same runner.

What must be on the phone (README "Profiling" repeats this):
  USB debugging on; Termux (from F-Droid); in Termux:
  ``pkg install python openssh clang cmake ninja`` then ``pip install numpy llama-cpp-python==0.3.36 pytest``
  (llama-cpp-python compiles llama.cpp on the phone), the host's public key appended to
  ``~/.ssh/authorized_keys``, and ``sshd`` running (it listens on 8022).
"""

from __future__ import annotations

import atexit
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence
from urllib.parse import parse_qs

from ..errors import DeviceError, UnsupportedError
from .ssh import SshDevice, SshTarget

TERMUX_SSHD_PORT = 8022
Runner = Callable[[list[str]], subprocess.CompletedProcess]


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, timeout=20)
    except FileNotFoundError:
        raise DeviceError("adb is not installed on this machine (Debian: apt install adb)") from None
    except subprocess.TimeoutExpired:
        raise DeviceError(f"{' '.join(argv)}: no answer within 20 s (is the phone's USB debugging prompt open?)") from None


@dataclass(frozen=True)
class AdbTarget:
    serial: str | None = None
    user: str | None = None  # Termux's sshd accepts any user name; its uid is what counts
    port: int = TERMUX_SSHD_PORT
    identity: str | None = None
    python: str = "python"

    @classmethod
    def parse(cls, spec: str) -> "AdbTarget":
        if not (spec == "adb" or spec.startswith("adb:") or spec.startswith("adb?")):
            raise UnsupportedError(f"{spec!r} is not an adb device; write adb or adb:SERIAL")
        rest = spec[3:].lstrip(":")
        serial, _, query = rest.partition("?")
        opts = {k: v[-1] for k, v in parse_qs(query).items()}
        unknown = sorted(set(opts) - {"user", "port", "identity", "python"})
        if unknown:
            raise UnsupportedError(f"{spec!r}: unknown option(s) {unknown}; known: user, port, identity, python")
        try:
            port = int(opts.get("port", TERMUX_SSHD_PORT))
        except ValueError:
            raise UnsupportedError(f"{spec!r}: port must be a number") from None
        return cls(serial=serial or None, user=opts.get("user"), port=port, identity=opts.get("identity"),
                   python=opts.get("python", "python"))

    def adb_argv(self, *args: str) -> list[str]:
        return ["adb", *(["-s", self.serial] if self.serial else []), *args]


def parse_devices(output: str) -> list[str]:
    """Serials in state ``device`` from ``adb devices`` (not ``unauthorized`` or ``offline``)."""
    serials = []
    for line in output.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 2 and parts[1] == "device":
            serials.append(parts[0])
    return serials


class AdbDevice:
    def __init__(self, target: AdbTarget, runner: Runner = _run, known_hosts: Path | None = None) -> None:
        self.target = target
        self.name = f"adb:{target.serial}" if target.serial else "adb"
        self._runner = runner
        self._known_hosts = known_hosts or Path.home() / ".cache" / "edgekit" / "adb_known_hosts"
        self._ssh: SshDevice | None = None
        self._local_port: int | None = None

    def _adb(self, *args: str) -> subprocess.CompletedProcess:
        return self._runner(self.target.adb_argv(*args))

    def _select(self) -> None:
        listing = self._runner(["adb", "devices"])
        text = listing.stdout.decode(errors="replace") if isinstance(listing.stdout, bytes) else str(listing.stdout)
        serials = parse_devices(text)
        if not serials:
            raise DeviceError(
                "no Android device attached (adb devices lists none in state 'device'); connect the phone by USB "
                "with USB debugging on and accept the computer's key on the phone"
            )
        if self.target.serial and self.target.serial not in serials:
            raise DeviceError(f"no device {self.target.serial!r}; attached: {', '.join(serials)}")
        if not self.target.serial and len(serials) > 1:
            raise DeviceError(f"several devices attached ({', '.join(serials)}); pick one with adb:SERIAL")

    def forward(self) -> int:
        """Forward a free local port to Termux's sshd; returns the local port."""
        if self._local_port is None:
            done = self._adb("forward", "tcp:0", f"tcp:{self.target.port}")
            out = done.stdout.decode(errors="replace") if isinstance(done.stdout, bytes) else str(done.stdout)
            match = re.search(r"\d+", out)
            if done.returncode != 0 or not match:
                raise DeviceError(f"{self.name}: adb forward failed ({out.strip() or done.returncode})")
            self._local_port = int(match.group())
            atexit.register(self._adb, "forward", "--remove", f"tcp:{self._local_port}")
        return self._local_port

    def ssh(self) -> SshDevice:
        if self._ssh is None:
            self._select()
            port = self.forward()
            self._known_hosts.parent.mkdir(parents=True, exist_ok=True)
            self._ssh = SshDevice(
                SshTarget(host="127.0.0.1", user=self.target.user, port=port, identity=self.target.identity,
                          known_hosts=str(self._known_hosts), python=self.target.python)
            )
            self._ssh.name = self.name
        return self._ssh

    def check(self) -> None:
        try:
            self.ssh().check()
        except DeviceError as exc:
            if "cannot reach" in str(exc) or "ssh failed" in str(exc):
                raise DeviceError(
                    f"{self.name}: Termux's sshd does not answer through adb ({exc}); on the phone open Termux and "
                    "run: pkg install openssh python && sshd (see README, Profiling on Android)"
                ) from None
            raise

    def python_command(self, module: str, args: Sequence[str] = (), cwd: str | None = None) -> list[str]:
        return self.ssh().python_command(module, args, cwd)

    def stage_bundle(self, root: Path) -> str:
        return self.ssh().stage_bundle(root)

    def stage_dir(self, local: Path, name: str) -> str:
        return self.ssh().stage_dir(local, name)

    def install_hint(self, requirements: Sequence[str]) -> str:
        reqs = " ".join(f"'{r}'" for r in requirements)
        return f"in Termux on the phone: pkg install python clang cmake ninja && pip install {reqs}"
