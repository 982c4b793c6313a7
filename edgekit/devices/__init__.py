"""Where a profile or device test runs: ``local`` (this machine), ``ssh://user@host[:port]`` (a Raspberry Pi
or any Linux box) or ``adb[:serial]`` (an Android phone with Termux).

Every device runs the same device-side code (``python -m edgekit.profiling.runner``, ``pytest device_tests``)
and speaks JSON lines back; a device differs only in how a command is started and how files get there.
"""

from __future__ import annotations

import json
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Protocol, Sequence

from ..errors import DeviceError, EdgekitError, UnsupportedError


@dataclass(frozen=True)
class Finished:
    """How a device-side command ended: exit code and the tail of what it wrote to stderr."""

    returncode: int | None  # None: killed by us (interrupted)
    stderr_tail: str = ""
    interrupted: bool = False


@dataclass
class EventStream:
    """A running device-side command whose stdout is JSON lines.  Iterate it for events; ``finished`` is set
    once the iteration ends.  Lines that are not JSON (an engine printing to stdout) are ignored."""

    proc: subprocess.Popen
    request: bytes
    finished: Finished | None = None
    _stderr: list[bytes] = field(default_factory=list)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        reader = threading.Thread(target=self._drain_stderr, daemon=True)
        reader.start()
        try:
            assert self.proc.stdin is not None and self.proc.stdout is not None
            try:
                self.proc.stdin.write(self.request)
                self.proc.stdin.close()
            except BrokenPipeError:
                pass  # the command died before reading; its exit code and stderr say why
            for raw in self.proc.stdout:
                line = raw.decode("utf-8", errors="replace").strip()
                if line.startswith("{"):
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError:
                        continue
            code = self.proc.wait()
            reader.join(timeout=5)
            self.finished = Finished(code, self.stderr_tail())
        except KeyboardInterrupt:
            self.kill()
            self.finished = Finished(None, self.stderr_tail(), interrupted=True)
            raise
        except GeneratorExit:
            self.kill()
            self.finished = Finished(None, self.stderr_tail(), interrupted=True)
            raise

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for chunk in self.proc.stderr:
            self._stderr.append(chunk)
            del self._stderr[:-200]

    def stderr_tail(self, lines: int = 20) -> str:
        text = b"".join(self._stderr).decode("utf-8", errors="replace")
        return "\n".join(text.strip().splitlines()[-lines:])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def start(argv: Sequence[str], request: Mapping[str, Any], env: Mapping[str, str] | None = None) -> EventStream:
    try:
        proc = subprocess.Popen(
            list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
    except FileNotFoundError:
        raise DeviceError(f"{argv[0]} is not installed on this machine; it is needed to reach the device") from None
    return EventStream(proc, (json.dumps(dict(request)) + "\n").encode())


class Device(Protocol):
    """What the profiler and ``device-test`` need from a device."""

    name: str

    def check(self) -> None:
        """Fail within seconds, with what to do, when the device cannot be used."""

    def python_command(self, module: str, args: Sequence[str] = (), cwd: str | None = None) -> list[str]:
        """argv (on this machine) that runs ``python -m module args`` on the device with edgekit importable."""

    def stage_bundle(self, root: Path) -> str:
        """Make the bundle present on the device (copying what is absent or changed); return its path there."""

    def stage_dir(self, local: Path, name: str) -> str:
        """Make a directory (e.g. device_tests/) present on the device; return its path there."""

    def install_hint(self, requirements: Sequence[str]) -> str:
        """The command the user should run to install ``requirements`` on the device."""


def request(device: Device, req: Mapping[str, Any], timeout: float = 120.0) -> dict[str, Any]:
    """Run one quick runner request and return its single answer event; device-side errors are raised."""
    stream = start(device.python_command("edgekit.profiling.runner"), req)
    answer: dict[str, Any] | None = None
    timer = threading.Timer(timeout, stream.kill)
    timer.start()
    try:
        for event in stream:
            answer = event
    finally:
        timer.cancel()
    if answer is None or answer.get("event") == "error":
        raise_from_device(device, stream, answer)
    return answer


def raise_from_device(device: Device, stream: EventStream, event: Mapping[str, Any] | None) -> None:
    if event and event.get("event") == "error":
        tb = event.get("traceback")
        raise DeviceError(f"{device.name}: {event.get('kind')}: {event.get('message')}" + (f"\n{tb}" if tb else ""))
    fin = stream.finished
    tail = fin.stderr_tail if fin else ""
    raise DeviceError(
        f"{device.name}: the device-side command ended (exit {fin.returncode if fin else '?'}) without an answer"
        + (f": {tail}" if tail else "")
    )


def requirements_for(extra: str) -> list[str]:
    """The pip requirements of an edgekit extra, read from the installed distribution's metadata."""
    from importlib import metadata

    try:
        reqs = metadata.requires("edgekit") or []
    except metadata.PackageNotFoundError:
        reqs = []
    out = []
    for r in reqs:
        name, _, marker = r.partition(";")
        if marker and f'extra == "{extra}"' in marker.replace("'", '"'):
            out.append(name.strip())
    base = [r.split(";")[0].strip() for r in reqs if ";" not in r]
    return base + out if out else [f"edgekit[{extra}]"]


def parse(spec: str | None) -> Device:
    """``local`` | ``ssh://user@host[:port][?identity=KEY&python=PY&known_hosts=FILE]`` | ``adb[:serial]``."""
    text = (spec or "local").strip()
    if text == "local":
        from .local import LocalDevice

        return LocalDevice()
    if text.startswith("ssh://"):
        from .ssh import SshDevice, SshTarget

        return SshDevice(SshTarget.parse(text))
    if text == "adb" or text.startswith("adb:"):
        from .adb import AdbDevice, AdbTarget

        return AdbDevice(AdbTarget.parse(text))
    raise UnsupportedError(f"unknown device {text!r}; use local, ssh://user@host[:port] or adb[:serial]")


__all__ = [
    "Device",
    "DeviceError",
    "EdgekitError",
    "EventStream",
    "Finished",
    "parse",
    "request",
    "requirements_for",
    "start",
]
