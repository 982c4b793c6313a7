"""The edgekit code shipped to a device: a zip of the packages the device side imports, named by its hash.

Shipping the host's own edgekit (rather than asking the device to pip-install one) means the device always
runs the same profiler and test code as the host, and only the engine itself (llama-cpp-python, onnxruntime,
...) has to be installed there.  The zip is built reproducibly (fixed timestamps, sorted entries) so its hash
changes only when the code does, and an unchanged device is not re-sent anything.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import zipfile
from functools import lru_cache
from pathlib import Path

# packages (with their sources' location on the host) the device side needs; the exporters stay on the host
PACKAGES = ("edgekit", "edgekit.runtimes")
SKIP_DIRS = {"__pycache__", "exporters", "lfm2-tiny", "lfm2-tiny-lora"}
EPOCH = (2020, 1, 1, 0, 0, 0)


def _files() -> list[tuple[str, Path]]:
    out: dict[str, Path] = {}
    for name in PACKAGES:
        root = Path(importlib.import_module(name).__path__[0])
        prefix = name.replace(".", "/")
        for p in sorted(root.rglob("*")):
            rel = p.relative_to(root)
            if p.is_file() and p.suffix in (".py", ".txt") and not SKIP_DIRS.intersection(rel.parts[:-1]):
                out.setdefault(f"{prefix}/{rel.as_posix()}", p)
    return sorted(out.items())


@lru_cache(maxsize=1)
def build() -> tuple[str, bytes]:
    """(file name, zip bytes) of the payload."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for arc, path in _files():
            info = zipfile.ZipInfo(arc, EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, path.read_bytes())
    data = buf.getvalue()
    return f"edgekit-{hashlib.sha256(data).hexdigest()[:16]}.zip", data


def write_to(directory: Path) -> Path:
    name, data = build()
    path = Path(directory) / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return path
