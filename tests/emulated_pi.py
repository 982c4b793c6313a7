"""An emulated Raspberry Pi for the slow device tests: a Debian bookworm arm64 userland (debootstrap) whose
binaries run under qemu-user-static through binfmt_misc, with its own sshd on a loopback port.

Everything expensive is cached under ``~/.cache/edgekit/pi`` (override: EDGEKIT_PI_CACHE): the root filesystem
(debootstrap, minutes), the aarch64 wheels (numpy from PyPI; llama-cpp-python, which PyPI has only as source,
cross-compiled here with Debian's aarch64 toolchain — on a real Pi it compiles natively) and the venv inside.
Reruns only start sshd.  Needs root, debootstrap, qemu-user-static >= 10 (bookworm-backports; 7.2 crashes in
numerical libraries) and g++-aarch64-linux-gnu; ``missing_tools`` says what is absent.

Run directly to provision without testing: ``python tests/emulated_pi.py``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

CACHE = Path(os.environ.get("EDGEKIT_PI_CACHE") or Path.home() / ".cache" / "edgekit" / "pi")
ROOTFS = CACHE / "rootfs"
WHEELS = CACHE / "wheels"
VENV = "/opt/edgekit-venv"  # inside the rootfs
LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"
PURE_WHEELS = ("pytest", "typing-extensions", "diskcache", "jinja2")
BINARY_WHEELS = ("numpy", "markupsafe")
QEMU = "/usr/libexec/qemu-binfmt/aarch64-binfmt-P"
BINFMT = Path("/proc/sys/fs/binfmt_misc")
HOST_PIP = [sys.executable, "-m", "pip"]


def log(msg: str) -> None:
    print(f"[emulated-pi] {msg}", file=sys.stderr, flush=True)


def missing_tools() -> list[str]:
    out = []
    if os.geteuid() != 0:
        out.append("root")
    for tool in ("debootstrap", "aarch64-linux-gnu-g++", "sshd" if Path("/usr/sbin/sshd").exists() else "sshd"):
        if not shutil.which(tool) and not Path("/usr/sbin", tool).exists():
            out.append(tool)
    if not Path(QEMU).exists() and not shutil.which("qemu-aarch64-static"):
        out.append("qemu-user-static")
    return out


def ensure_binfmt() -> None:
    """Register qemu for aarch64 ELF files (the F flag opens the interpreter now, so the chroot needs no copy)."""
    if not (BINFMT / "register").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], check=True)
    entry = BINFMT / "qemu-aarch64"
    if entry.exists():
        return
    conf = Path("/usr/lib/binfmt.d/qemu-aarch64.conf").read_text().strip()
    (BINFMT / "register").write_text(conf)


def ensure_rootfs() -> Path:
    marker = ROOTFS / ".edgekit-complete"
    if marker.exists():
        return ROOTFS
    ensure_binfmt()
    tmp = CACHE / "rootfs.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    log("debootstrap arm64 bookworm (a few minutes, once)")
    subprocess.run(
        ["debootstrap", "--arch=arm64", "--variant=minbase",
         "--include=python3,python3-venv,openssh-server,libgomp1,libstdc++6",
         "bookworm", str(tmp), "http://deb.debian.org/debian"],
        check=True, stdout=subprocess.DEVNULL,
    )
    (tmp / ".edgekit-complete").write_text("ok\n")
    shutil.rmtree(ROOTFS, ignore_errors=True)
    tmp.rename(ROOTFS)
    return ROOTFS


def _retag(wheel: Path, platform_tag: str) -> Path:
    """A wheel built by a cross compiler carries the host's platform tag; give it the target's."""
    name = wheel.name.rsplit("-", 1)[0] + f"-{platform_tag}.whl"
    out = wheel.with_name(name)
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        items = {i.filename: src.read(i.filename) for i in src.infolist()}
        wheel_file = next(k for k in items if k.endswith(".dist-info/WHEEL"))
        text = items[wheel_file].decode()
        lines = [ln for ln in text.splitlines() if not ln.startswith("Tag:")]
        py = wheel.name.split("-")[-3]
        abi = wheel.name.split("-")[-2]
        items[wheel_file] = ("\n".join(lines) + f"\nTag: {py}-{abi}-{platform_tag}\n").encode()
        record = next(k for k in items if k.endswith(".dist-info/RECORD"))
        rows = []
        for row in items[record].decode().splitlines():
            path = row.split(",")[0]
            if path == wheel_file:
                digest = base64.urlsafe_b64encode(hashlib.sha256(items[wheel_file]).digest()).rstrip(b"=").decode()
                row = f"{path},sha256={digest},{len(items[wheel_file])}"
            rows.append(row)
        items[record] = ("\n".join(rows) + "\n").encode()
        for k, v in items.items():
            dst.writestr(k, v)
    wheel.unlink()
    return out


def _is_aarch64(wheel: Path) -> bool:
    with zipfile.ZipFile(wheel) as z:
        lib = next(n for n in z.namelist() if n.endswith("libllama.so"))
        header = z.read(lib)[:20]
    return header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 0xB7  # EM_AARCH64


def ensure_wheels() -> Path:
    WHEELS.mkdir(parents=True, exist_ok=True)
    if not list(WHEELS.glob("numpy-*aarch64*.whl")):
        log("downloading aarch64 wheels")
        subprocess.run(
            [*HOST_PIP, "download", "-q", "--only-binary=:all:", "--platform", "manylinux_2_28_aarch64",
             "--platform", "manylinux2014_aarch64", "--python-version", "3.11", "-d", str(WHEELS),
             *BINARY_WHEELS, *PURE_WHEELS],
            check=True,
        )
    if not list(WHEELS.glob("llama_cpp_python-*aarch64.whl")):
        log("cross-compiling llama-cpp-python for aarch64 (several minutes, once)")
        build = CACHE / "llama-build"
        shutil.rmtree(build, ignore_errors=True)
        env = dict(os.environ)
        env["CMAKE_ARGS"] = " ".join([
            "-DCMAKE_SYSTEM_NAME=Linux", "-DCMAKE_SYSTEM_PROCESSOR=aarch64",
            "-DCMAKE_C_COMPILER=aarch64-linux-gnu-gcc", "-DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++",
            # a Raspberry Pi 4 is ARMv8.0-A (Cortex-A72): no native-CPU detection when cross-compiling
            "-DGGML_NATIVE=OFF", "-DGGML_CPU_ARM_ARCH=armv8-a", "-DLLAMA_BUILD_TESTS=OFF",
        ])
        env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", "2")
        subprocess.run(
            # --no-cache-dir: pip would otherwise reuse the host's cached x86-64 build of the same version
            [*HOST_PIP, "wheel", "-q", "--no-cache-dir", "--no-deps", "--no-binary", "llama-cpp-python",
             LLAMA_CPP_PYTHON, "-w", str(build)],
            check=True, env=env,
        )
        (built,) = build.glob("llama_cpp_python-*.whl")
        if not _is_aarch64(built):
            raise RuntimeError(f"{built}: the cross build produced host binaries; check CMAKE_ARGS")
        retagged = _retag(built, "linux_aarch64")
        shutil.move(str(retagged), WHEELS / retagged.name)
        shutil.rmtree(build, ignore_errors=True)
    return WHEELS


class Chroot:
    """Bind mounts (proc, sys, dev, the wheels) for the rootfs; undone by ``close``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.mounts: list[Path] = []

    def __enter__(self) -> "Chroot":
        for src, dst, args in (
            ("proc", "proc", ["-t", "proc"]),  # onnxruntime and others refuse to start without /proc
            ("sysfs", "sys", ["-t", "sysfs"]),
            ("/dev", "dev", ["--bind"]),
            (str(WHEELS), "wheels", ["--bind"]),
        ):
            target = self.root / dst
            target.mkdir(exist_ok=True)
            if subprocess.run(["mountpoint", "-q", str(target)]).returncode != 0:
                subprocess.run(["mount", *args, src, str(target)], check=True)
                self.mounts.append(target)
        return self

    def run(self, command: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(["chroot", str(self.root), "/bin/sh", "-c", command], check=check, **kw)

    def popen(self, argv: list[str], **kw) -> subprocess.Popen:
        return subprocess.Popen(["chroot", str(self.root), *argv], **kw)

    def __exit__(self, *exc) -> None:
        for target in reversed(self.mounts):
            subprocess.run(["umount", "-l", str(target)])
        self.mounts.clear()


def ensure_venv(chroot: Chroot) -> str:
    py = f"{VENV}/bin/python"
    if (chroot.root / VENV.lstrip("/") / ".edgekit-complete").exists():
        return py
    log("creating the venv inside the emulated Pi and installing the aarch64 wheels (slow under qemu, once)")
    chroot.run(f"rm -rf {VENV} && python3 -m venv {VENV}")
    chroot.run(f"{VENV}/bin/pip install -q --no-index --find-links /wheels numpy llama-cpp-python pytest")
    (chroot.root / VENV.lstrip("/") / ".edgekit-complete").write_text("ok\n")
    return py


def provision() -> tuple[Path, str]:
    ensure_rootfs()
    ensure_wheels()
    with Chroot(ROOTFS) as c:
        py = ensure_venv(c)
    return ROOTFS, py


if __name__ == "__main__":
    root, py = provision()
    print(root, py)
