"""The bundle: a directory holding the exported artifact, the tokenizer files and ``edgekit.json``.

Bundles are assembled in a hidden staging directory beside the destination and renamed into place only when
complete (and verified), so an interrupted, failed or disk-full export never leaves a finished-looking bundle.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

from .hashing import sha256_file
from .errors import BundleError, OutputExistsError

MANIFEST = "edgekit.json"
SCHEMA_VERSION = 2  # 2: recipe-table layout (artifact.file, plan.format, model.config)


def file_entries(root: Path) -> dict[str, dict[str, Any]]:
    return {
        p.relative_to(root).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def write_manifest(root: Path, manifest: Mapping[str, Any]) -> None:
    data = dict(manifest)
    data["schema_version"] = SCHEMA_VERSION
    data["files"] = file_entries(root)
    tmp = root / (MANIFEST + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(root / MANIFEST)


def read_manifest(root: str | Path) -> dict[str, Any]:
    root = Path(root)
    path = root / MANIFEST
    if not root.is_dir():
        raise BundleError(f"{root}: not a bundle directory")
    if not path.is_file():
        raise BundleError(f"{root}: no {MANIFEST}; this is not a finished edgekit bundle (re-run the export)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: manifest is not valid JSON ({exc})") from None
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BundleError(f"{path}: schema version {version!r}; this edgekit reads version {SCHEMA_VERSION}")
    return data


def check_files(root: Path, manifest: Mapping[str, Any], hashes: bool = False) -> None:
    """Every file the manifest lists is present with its recorded size (and digest, if ``hashes``)."""
    for name, entry in manifest.get("files", {}).items():
        p = root / name
        if not p.is_file():
            raise BundleError(f"{root}: {name} is missing; the bundle is incomplete")
        if p.stat().st_size != entry["size"]:
            raise BundleError(f"{p}: size {p.stat().st_size} differs from the manifest's {entry['size']}; file damaged")
        if hashes and sha256_file(p) != entry["sha256"]:
            raise BundleError(f"{p}: sha256 differs from the manifest; the file was modified or damaged")


@contextlib.contextmanager
def staging(out: Path, force: bool = False, keep: tuple[Path, ...] = ()) -> Iterator[Path]:
    """Yield an empty staging directory; on normal exit move it to ``out`` atomically, otherwise delete it.

    The destination check happens first so nothing is done when the output would be refused.  ``force``
    replaces only an earlier bundle (a directory with ``edgekit.json``) or an empty directory, never the working
    directory or one of its parents, and never a directory that is or holds one of ``keep`` (the source
    checkpoint and adapter): OutputExistsError otherwise.
    """
    out = Path(out)
    resolved = out.resolve()
    if resolved == Path.cwd().resolve() or resolved in Path.cwd().resolve().parents:
        raise OutputExistsError(f"{out} is the working directory or one of its parents; name a new directory")
    for k in keep:
        k = Path(k).resolve()
        if k == resolved or resolved in k.parents:
            raise OutputExistsError(f"{out} holds {k}, which this export reads; choose another output path")
    if out.exists() and not force:
        raise OutputExistsError(f"{out} already exists; choose another output path or pass --force to replace it")
    if out.exists() and not (out.is_dir() and ((out / MANIFEST).is_file() or not any(out.iterdir()))):
        raise OutputExistsError(
            f"{out} exists and is not an edgekit bundle; --force replaces only an earlier bundle or an empty "
            "directory: choose another output path"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; a bundle is an ordinary directory
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            out.replace(old / "bundle")
            tmp.replace(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.replace(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
