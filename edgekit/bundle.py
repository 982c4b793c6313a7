"""The bundle: a directory holding the exported artifact, the tokenizer files and ``edgekit.json``.

Bundles are assembled in a hidden staging directory beside the destination and renamed into place only when
complete (and verified), so an interrupted, failed or disk-full export never leaves a finished-looking bundle.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path, PurePosixPath
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
    """Read and validate ``ROOT/edgekit.json``.

    Returns the manifest as a plain mapping whose every key that edgekit reads has been checked against the
    schema of ``SCHEMA_VERSION`` (``validate_manifest``).  Raises BundleError (one line naming the key) for a
    missing directory or file, invalid JSON, another schema version, a missing key, a wrong type or an
    out-of-range value (an eos id outside the vocabulary, a file name outside the bundle, a size < 0).
    """
    root = Path(root)
    path = root / MANIFEST
    if not root.is_dir():
        raise BundleError(f"{root}: not a bundle directory")
    if not path.is_file():
        raise BundleError(f"{root}: no {MANIFEST}; this is not a finished edgekit bundle (re-run the export)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise BundleError(f"{path}: manifest is not valid JSON ({str(exc).splitlines()[0][:200]}); re-export the "
                          "bundle") from None
    if not isinstance(data, dict):
        raise BundleError(f"{path}: manifest is a JSON {type(data).__name__}, not an object; re-export the bundle")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BundleError(f"{path}: schema version {version!r}; this edgekit reads version {SCHEMA_VERSION}")
    validate_manifest(data, str(path))
    return data


def check_files(root: Path, manifest: Mapping[str, Any], hashes: bool = False) -> None:
    """Every file the manifest lists is present with its recorded size (and sha256, if ``hashes``).

    Raises BundleError naming the first missing or damaged file."""
    root = Path(root)
    for name, entry in _mapping(manifest.get("files", {}), "files", str(root / MANIFEST)).items():
        p = root / name
        if not p.is_file():
            raise BundleError(f"{root}: {name} is missing; the bundle is incomplete")
        if p.stat().st_size != entry["size"]:
            raise BundleError(f"{p}: size {p.stat().st_size} differs from the manifest's {entry['size']}; file damaged"
                              " (re-export or copy the bundle again)")
        if hashes and sha256_file(p) != entry["sha256"]:
            raise BundleError(f"{p}: sha256 differs from the manifest; the file was modified or damaged (re-export "
                              "or copy the bundle again)")


# -- the schema ---------------------------------------------------------------------------------------------

_SHA256 = re.compile(r"[0-9a-f]{64}")
_KINDS = ("language", "solver")
_ENGINE_OF_FORMAT = {"gguf": "llama.cpp", "onnx": "onnxruntime", "executorch": "executorch"}


def _fail(where: str, key: str, why: str) -> BundleError:
    return BundleError(f"{where}: {key} {why}; the manifest is damaged or from another tool (re-export the bundle)")


def _mapping(value: Any, key: str, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise _fail(where, key, f"must be an object, got {type(value).__name__}")
    return value


def _get(d: Mapping[str, Any], key: str, types: tuple[type, ...], where: str, prefix: str = "",
         required: bool = True, nullable: bool = False) -> Any:
    name = prefix + key
    if key not in d:
        if required:
            raise _fail(where, name, "is missing")
        return None
    value = d[key]
    if value is None and nullable:
        return None
    # bool is an int to Python; a JSON true is never a count or an id
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        want = " or ".join(t.__name__ for t in types) + (" or null" if nullable else "")
        raise _fail(where, name, f"must be {want}, got {type(value).__name__} {str(value)[:40]!r}")
    return value


def _int(d: Mapping[str, Any], key: str, where: str, prefix: str, low: int, high: int | None = None,
         required: bool = True, nullable: bool = False) -> int | None:
    value = _get(d, key, (int,), where, prefix, required, nullable)
    if value is not None and (value < low or (high is not None and value >= high)):
        span = f"in [{low}, {high})" if high is not None else f">= {low}"
        raise _fail(where, prefix + key, f"= {value} is out of range (must be {span})")
    return value


def _file_name(name: str, key: str, where: str) -> None:
    parts = PurePosixPath(name).parts
    if not name or PurePosixPath(name).is_absolute() or ".." in parts or "\\" in name or "\0" in name:
        raise _fail(where, key, f"names {name!r}, which is not a file inside the bundle")


def _check_family(name: str, kind: str, where: str) -> None:
    """The family must be registered (a project's own family: ``FAMILIES.register`` before loading) and be of the
    manifest's kind."""
    from .families import FAMILIES, Family

    family = Family(name)
    if family not in FAMILIES:
        raise _fail(where, "family", f"= {name!r} is unknown (known: {FAMILIES.names()}; a family of your own must be "
                                     "registered with edgekit.families.FAMILIES.register before loading)")
    if FAMILIES.get(family).kind.value != kind:
        raise _fail(where, "kind", f"= {kind!r}, but family {name} is a {FAMILIES.get(family).kind.value} model")


def validate_manifest(m: Mapping[str, Any], where: str = MANIFEST) -> None:
    """Check every key edgekit reads (CLI, runtimes, verification, profiler) for presence, type and range.

    Raises BundleError with one line naming the first offending key (e.g. ``model.eos_ids[0] = 99999 is out
    of range``)."""
    for key in ("family", "edgekit_version"):
        _get(m, key, (str,), where, required=key == "family")
    kind = _get(m, "kind", (str,), where)
    if kind not in _KINDS:
        raise _fail(where, "kind", f"= {kind!r} is unknown (known: {', '.join(_KINDS)})")
    _check_family(m["family"], kind, where)
    fmt = _get(m, "format", (str,), where)
    if fmt not in _ENGINE_OF_FORMAT:
        raise _fail(where, "format", f"= {fmt!r} is unknown (known: {', '.join(_ENGINE_OF_FORMAT)})")
    engine = _get(m, "engine", (str,), where)
    if engine != _ENGINE_OF_FORMAT[fmt]:
        raise _fail(where, "engine", f"= {engine!r} does not run format {fmt} (expected {_ENGINE_OF_FORMAT[fmt]})")

    files = _mapping(_get(m, "files", (dict,), where), "files", where)
    for name, entry in files.items():
        _file_name(name, f"files[{name!r}]", where)
        entry = _mapping(entry, f"files[{name!r}]", where)
        _int(entry, "size", where, f"files[{name!r}].", 0)
        digest = _get(entry, "sha256", (str,), where, f"files[{name!r}].")
        if not _SHA256.fullmatch(digest):
            raise _fail(where, f"files[{name!r}].sha256", "is not 64 lowercase hex digits")

    plan = _get(m, "plan", (dict,), where)
    quant = _get(plan, "quant", (dict,), where, "plan.")
    _get(quant, "name", (str,), where, "plan.quant.")
    _get(plan, "options", (dict,), where, "plan.", required=False, nullable=True)
    source = _get(m, "source", (dict,), where)
    _get(source, "path", (str,), where, "source.")
    _get(source, "sha256", (str,), where, "source.")
    adapter = _get(m, "adapter", (dict,), where, required=False, nullable=True)
    if adapter is not None:
        _get(adapter, "path", (str,), where, "adapter.")
        _get(adapter, "sha256", (str,), where, "adapter.")
    for key in ("libraries", "host", "io"):
        _get(m, key, (dict,), where, required=False, nullable=True)
    _get(m, "export_seconds", (int, float), where, required=False, nullable=True)

    art = _get(m, "artifact", (dict,), where)
    artifact_file = _get(art, "file", (str,), where, "artifact.")
    data_files = _get(art, "data_files", (list,), where, "artifact.", required=False) or []
    for i, name in enumerate([artifact_file, *data_files]):
        key = "artifact.file" if i == 0 else f"artifact.data_files[{i - 1}]"
        if not isinstance(name, str):
            raise _fail(where, key, f"must be str, got {type(name).__name__}")
        _file_name(name, key, where)
        if name not in files:
            raise _fail(where, key, f"= {name!r} is not among the bundle's files")
    for key in ("max_batch", "max_context", "seq_len"):
        _int(art, key, where, "artifact.", 1, required=False, nullable=True)
    for key in ("state", "signature", "session_options", "logits_to_keep", "tensor_types"):
        _get(art, key, (dict,), where, "artifact.", required=False, nullable=True)

    model = _get(m, "model", (dict,), where)
    vocab = _int(model, "vocab_size", where, "model.", 1)
    if kind == "language":
        _int(model, "context_length", where, "model.", 1, required=False, nullable=True)
        for key in ("bos_id", "pad_id"):
            _int(model, key, where, "model.", 0, vocab, required=False, nullable=True)
        eos = _get(model, "eos_ids", (list,), where, "model.")
        for i in range(len(eos)):
            _item_id(eos, i, vocab, where)
        _get(model, "add_bos", (bool,), where, "model.", required=False)
        _get(model, "chat_template", (str,), where, "model.", required=False, nullable=True)
        _int(model, "kv_values_per_position", where, "model.", 0, required=False, nullable=True)
    else:
        for key in ("seq_len", "halt_max_steps"):
            _int(model, key, where, "model.", 1)
        for key in ("num_puzzle_identifiers", "prefix_len"):
            _int(model, key, where, "model.", 0)
        _get(model, "halt_on_continue", (bool,), where, "model.")
    _get(model, "config", (dict,), where, "model.", required=False, nullable=True)

    verification = _get(m, "verification", (dict,), where, required=False, nullable=True)
    if verification is not None:
        _get(verification, "passed", (bool,), where, "verification.")
        _get(verification, "metrics", (dict,), where, "verification.")
        _get(verification, "thresholds", (dict,), where, "verification.", required=False, nullable=True)


def _item_id(values: list[Any], i: int, vocab: int, where: str) -> None:
    v = values[i]
    if not isinstance(v, int) or isinstance(v, bool):
        raise _fail(where, f"model.eos_ids[{i}]", f"must be int, got {type(v).__name__} {str(v)[:40]!r}")
    if not 0 <= v < vocab:
        raise _fail(where, f"model.eos_ids[{i}]", f"= {v} is out of range (must be in [0, {vocab}))")


_STAGING = re.compile(r"\.(?P<name>.+)\.(?:partial|old)-(?P<pid>\d+)-[A-Za-z0-9_]+")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_staging(parent: Path) -> list[Path]:
    """Delete staging directories (``.OUT.partial-PID-*``, ``.OUT.old-PID-*``) left in ``parent`` by an export
    whose process no longer runs (killed with SIGKILL, or aborted inside an engine): a ``finally`` cannot run
    then, so the next export in the same place cleans up.  Returns what was removed."""
    removed = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for p in entries:
        m = _STAGING.fullmatch(p.name)
        if m and p.is_dir() and not p.is_symlink() and not _alive(int(m["pid"])):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def _check_destination(out: Path, force: bool, while_running: bool = False) -> None:
    """OutputExistsError unless ``out`` is free, or ``force`` and ``out`` is an earlier bundle or an empty directory,
    and ``out`` is not inside another bundle (replacing that one would delete it)."""
    for parent in out.resolve().parents:
        if (parent / MANIFEST).is_file():
            raise OutputExistsError(f"{out} is inside the bundle {parent}, which --force on it would delete; choose "
                                    "a path outside any bundle")
    if out.exists() and not force:
        if while_running:
            raise OutputExistsError(
                f"{out} appeared while this export ran (another export to the same path?); it was left as it is: "
                "choose another output path or pass --force to replace it"
            )
        raise OutputExistsError(f"{out} already exists; choose another output path or pass --force to replace it")
    if out.exists() and not (out.is_dir() and ((out / MANIFEST).is_file() or not any(out.iterdir()))):
        raise OutputExistsError(
            f"{out} exists and is not an edgekit bundle; --force replaces only an earlier bundle or an empty "
            "directory: choose another output path"
        )


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
    _check_destination(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-{os.getpid()}-", dir=out.parent))
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; a bundle is an ordinary directory
        # again: another export (or the user) may have written ``out`` while this one ran
        _check_destination(out, force, while_running=True)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-{os.getpid()}-", dir=out.parent))
            out.replace(old / "bundle")
            tmp.replace(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.replace(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
