"""Test support for the device transports: a real OpenSSH server on loopback with throwaway keys."""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


@dataclass(frozen=True)
class Sshd:
    """A running sshd: the URL to reach it (with the test key) and what is needed to build other URLs."""

    port: int
    user: str
    key: Path
    known_hosts: Path
    proc: subprocess.Popen

    def url(self, key: Path | None = None, python: str | None = None, port: int | None = None) -> str:
        q = f"identity={quote(str(key or self.key))}&known_hosts={quote(str(self.known_hosts))}"
        if python:
            q += f"&python={quote(python)}"
        return f"ssh://{self.user}@127.0.0.1:{port or self.port}?{q}"


def sshd_binary() -> str | None:
    for p in ("/usr/sbin/sshd", shutil.which("sshd") or ""):
        if p and os.access(p, os.X_OK):
            return p
    return None


def ssh_missing() -> str | None:
    """Why the loopback ssh tests cannot run here (None: they can).  Nothing is installed by the tests: a machine
    without the OpenSSH server and client skips them with this reason (`.ci/run` installs openssh-server)."""
    missing = [name for name, found in (("sshd", sshd_binary()), ("ssh", shutil.which("ssh")),
                                        ("ssh-keygen", shutil.which("ssh-keygen"))) if not found]
    if missing:
        return (f"{', '.join(missing)} not installed: these tests start a real sshd on 127.0.0.1 "
                "(apt-get install openssh-server openssh-client, as .ci/run does)")
    return None


def start_sshd(workdir: Path, extra_env_path: str | None = None) -> Sshd:
    """sshd on 127.0.0.1:<free port>, accepting only a fresh key, as the current user."""
    workdir.mkdir(parents=True, exist_ok=True)
    host_key = keygen(workdir / "host_ed25519")
    key = keygen(workdir / "client_ed25519")
    auth = workdir / "authorized_keys"
    auth.write_text((workdir / "client_ed25519.pub").read_text())
    auth.chmod(0o600)
    port = free_port()
    config = workdir / "sshd_config"
    lines = [
        f"Port {port}",
        "ListenAddress 127.0.0.1",
        f"HostKey {host_key}",
        f"AuthorizedKeysFile {auth}",
        f"PidFile {workdir / 'sshd.pid'}",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",
        "StrictModes no",  # the throwaway files live under /tmp
        "UsePAM no",
        "Subsystem sftp internal-sftp",  # scp speaks SFTP by default since OpenSSH 9
    ]
    if extra_env_path:
        lines.append(f"SetEnv PATH={extra_env_path}")
    config.write_text("\n".join(lines) + "\n")
    try:
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege separation directory sshd insists on
    except OSError:
        pass  # not root: sshd then runs without privilege separation
    proc = subprocess.Popen([sshd_binary() or "sshd", "-D", "-e", "-f", str(config)], stderr=open(workdir / "sshd.log", "wb"))
    for _ in range(100):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited: {(workdir / 'sshd.log').read_text()}")
        time.sleep(0.1)
    return Sshd(port=port, user=getpass.getuser(), key=key, known_hosts=workdir / "known_hosts", proc=proc)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
