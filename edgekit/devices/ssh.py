"""A Linux device over OpenSSH (a Raspberry Pi): ``ssh://user@host[:port]``.

Query parameters: ``identity`` (private key file), ``known_hosts`` (a known-hosts file instead of ~/.ssh's),
``python`` (the interpreter on the device, default ``python3``; e.g. a venv's).  Connections never prompt
(``BatchMode``) and give up after 5 seconds, so a wrong address or a refused key is an error in seconds, not
a hang.  Files live under ``~/.cache/edgekit/remote`` on the device: the edgekit payload (by hash) and
bundles (by manifest hash), re-sent only when absent or changed.
"""

from __future__ import annotations

import hashlib
import shlex
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence
from urllib.parse import parse_qs, unquote, urlsplit

from ..bundle import MANIFEST
from ..hashing import sha256_file
from ..errors import DeviceError, UnsupportedError
from . import payload, request

REMOTE_ROOT = ".cache/edgekit/remote"  # relative to the login directory
CONNECT_TIMEOUT_S = 5
QUICK_TIMEOUT_S = 30


@dataclass(frozen=True)
class SshTarget:
    host: str
    user: str | None = None
    port: int = 22
    identity: str | None = None
    known_hosts: str | None = None
    python: str = "python3"

    @classmethod
    def parse(cls, url: str) -> "SshTarget":
        parts = urlsplit(url)
        if parts.scheme != "ssh" or not parts.hostname:
            raise UnsupportedError(f"{url!r} is not an ssh device; write ssh://user@host[:port]")
        try:
            port = parts.port or 22
        except ValueError:
            raise UnsupportedError(f"{url!r}: the port is not a number") from None
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = sorted(set(query) - {"identity", "known_hosts", "python"})
        if unknown:
            raise UnsupportedError(f"{url!r}: unknown option(s) {unknown}; known: identity, known_hosts, python")
        return cls(
            host=parts.hostname,
            user=unquote(parts.username) if parts.username else None,
            port=port,
            identity=query.get("identity"),
            known_hosts=query.get("known_hosts"),
            python=query.get("python", "python3"),
        )

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    @property
    def name(self) -> str:
        return f"ssh://{self.destination}:{self.port}"

    @property
    def control_path(self) -> str:
        key = "|".join(str(x) for x in (self.destination, self.port, self.identity, self.known_hosts))
        return str(Path(tempfile.gettempdir()) / f"edgekit-ssh-{hashlib.sha256(key.encode()).hexdigest()[:12]}")

    def options(self) -> list[str]:
        opts = [
            "-o", "BatchMode=yes",  # never prompt for a password or passphrase: fail instead
            "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}",
            "-o", "ServerAliveInterval=15",
            "-o", "ServerAliveCountMax=4",  # a device that vanishes mid-run is noticed within a minute
            "-o", "StrictHostKeyChecking=accept-new",  # a new Pi just works; a changed host key still fails
            "-o", "LogLevel=ERROR",
        ]
        # one authenticated connection carries every command of a run (a profile makes dozens); the socket
        # name covers the key too, so a connection made with one key is never reused for another
        opts += ["-o", "ControlMaster=auto", "-o", f"ControlPath={self.control_path}", "-o", "ControlPersist=30"]
        if self.identity:
            opts += ["-i", self.identity, "-o", "IdentitiesOnly=yes"]
        if self.known_hosts:
            opts += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
        return opts

    def ssh_argv(self, command: str) -> list[str]:
        return ["ssh", *self.options(), "-p", str(self.port), self.destination, "--", command]

    def scp_argv(self, local: Sequence[str], remote: str) -> list[str]:
        return ["scp", "-q", *self.options(), "-P", str(self.port), *local, f"{self.destination}:{remote}"]


def _shell_arg(arg: str) -> str:
    """Quote for the device's shell, keeping a leading ~/ meaningful (device paths are home-relative)."""
    return f'"$HOME"/{shlex.quote(arg[2:])}' if arg.startswith("~/") else shlex.quote(arg)


def explain_ssh_failure(target: SshTarget, stderr: str) -> str:
    text = stderr.strip().splitlines()[-1] if stderr.strip() else "no message"
    low = stderr.lower()
    if "permission denied" in low:
        how = f"-i {target.identity}" if target.identity else "your default key"
        return (
            f"{target.name} refused the key ({text}); add the public key of {how} to ~/.ssh/authorized_keys "
            "on the device (ssh-copy-id), or pass ?identity=PATH"
        )
    if "host key verification failed" in low or "remote host identification has changed" in low:
        return f"{target.name}: the host key differs from the known one ({text}); check the device, then fix known_hosts"
    if any(s in low for s in ("timed out", "connection refused", "no route", "could not resolve", "unreachable")):
        return f"cannot reach {target.name} ({text}); check the address and port, and that sshd runs on the device"
    return f"{target.name}: ssh failed ({text})"


class SshDevice:
    def __init__(self, target: SshTarget) -> None:
        self.target = target
        self.name = target.name
        self._payload: str | None = None
        self.copied = 0  # files sent by the last stage_* call (0 when the device already had them)

    # -- running commands ---------------------------------------------------------------------------------
    def _run(self, command: str, timeout: float = QUICK_TIMEOUT_S) -> subprocess.CompletedProcess:
        try:
            done = subprocess.run(self.target.ssh_argv(command), capture_output=True, timeout=timeout)
        except FileNotFoundError:
            raise DeviceError("ssh is not installed on this machine (install openssh-client)") from None
        except subprocess.TimeoutExpired:
            raise DeviceError(f"{self.name}: no answer within {timeout:.0f} s") from None
        if done.returncode == 255:  # ssh's own failure (connection, authentication), not the command's
            raise DeviceError(explain_ssh_failure(self.target, done.stderr.decode(errors="replace")))
        return done

    def _copy(self, local: Sequence[Path], remote: str) -> None:
        try:
            done = subprocess.run(self.target.scp_argv([str(p) for p in local], remote), capture_output=True, timeout=None)
        except FileNotFoundError:
            raise DeviceError("scp is not installed on this machine (install openssh-client)") from None
        if done.returncode != 0:
            err = done.stderr.decode(errors="replace")
            raise DeviceError(explain_ssh_failure(self.target, err) if done.returncode == 255 else f"{self.name}: copy failed: {err.strip()}")

    def check(self) -> None:
        py = shlex.quote(self.target.python)
        probe = "import sys; print('%d.%d' % sys.version_info[:2], sys.version_info >= (3, 10))"
        done = self._run(f"command -v {py} >/dev/null 2>&1 && {py} -c {shlex.quote(probe)}")
        if done.returncode != 0:
            raise DeviceError(
                f"{self.name}: no {self.target.python} on the device; install Python 3.10+ there "
                "(Raspberry Pi OS: sudo apt install python3 python3-venv) or pass ?python=/path/to/python"
            )
        version, _, ok = done.stdout.decode().strip().partition(" ")
        if ok != "True":
            raise DeviceError(f"{self.name}: {self.target.python} is Python {version}; edgekit needs 3.10+")
        self._ensure_payload()

    def _ensure_payload(self) -> str:
        if self._payload is None:
            name, data = payload.build()
            remote = f"{REMOTE_ROOT}/payload/{name}"
            if self._run(f"test -f {remote}").returncode != 0:
                self._run(f"mkdir -p {REMOTE_ROOT}/payload")
                with tempfile.TemporaryDirectory() as tmp:
                    local = Path(tmp) / name
                    local.write_bytes(data)
                    self._copy([local], remote + ".part")
                self._run(f"mv {remote}.part {remote}")
            self._payload = remote
        return self._payload

    def python_command(self, module: str, args: Sequence[str] = (), cwd: str | None = None) -> list[str]:
        zip_path = self._ensure_payload()
        argv = " ".join(_shell_arg(a) for a in args)
        where = f"cd {_shell_arg(cwd)} && " if cwd else ""
        # PYTHONPATH is absolute so that a cwd change does not lose the payload
        command = (
            f'{where}PYTHONPATH="$HOME"/{zip_path} PYTHONDONTWRITEBYTECODE=1 '
            f"exec {shlex.quote(self.target.python)} -m {module} {argv}"
        )
        return self.target.ssh_argv(command)

    # -- files ----------------------------------------------------------------------------------------------
    def _sync(self, files: dict[str, Path], remote_dir: str) -> None:
        """Copy the files whose sha256 on the device differs (or that are absent there)."""
        have = request(self, {"op": "hashes", "dir": "~/" + remote_dir}, timeout=600)["files"]
        todo = {rel: p for rel, p in files.items() if have.get(rel) != sha256_file(p)}
        by_dir: dict[str, list[Path]] = {}
        for rel, p in sorted(todo.items()):
            if Path(rel).name != p.name:
                raise DeviceError(f"{p}: cannot copy under another name ({rel})")
            by_dir.setdefault(str(Path(remote_dir, rel).parent), []).append(p)
        if by_dir:
            self._run("mkdir -p " + " ".join(shlex.quote(d) for d in by_dir))
        for directory, paths in by_dir.items():
            self._copy(paths, directory + "/")
        self.copied = len(todo)

    def stage_bundle(self, root: Path) -> str:
        root = Path(root)
        manifest = root / MANIFEST
        if not manifest.is_file():
            raise DeviceError(f"{root}: not a bundle (no {MANIFEST})")
        key = hashlib.sha256(manifest.read_bytes()).hexdigest()[:16]
        remote = f"{REMOTE_ROOT}/bundles/{root.resolve().name}-{key}"
        files = {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}
        self._sync(files, remote)
        return "~/" + remote  # the device side expands ~ (the path is used from other working directories)

    def stage_dir(self, local: Path, name: str) -> str:
        local = Path(local)
        files = {
            p.relative_to(local).as_posix(): p
            for p in sorted(local.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts
        }
        remote = f"{REMOTE_ROOT}/{name}"
        self._sync(files, remote)
        return "~/" + remote

    def install_hint(self, requirements: Sequence[str]) -> str:
        reqs = " ".join(shlex.quote(r) for r in requirements)
        return f"ssh -p {self.target.port} {self.target.destination} {self.target.python} -m pip install {reqs}"
