"""The structure check of an ExecuTorch program (``edgekit.tensorcheck``): the whole ``.pte`` and its ``.ptd``
files compared with the program edgekit builds for the same checkpoint, adapter(s) and plan.

What it covers: the operator table and every instruction (kernel, arguments, delegate calls, the chain's order);
every value (scalars and lists an operator reads, tensor dtypes, sizes — an input's size is its dynamic bound —,
dim orders, memory-plan ids and offsets — a KV cache and a conv state live there —, which constant a tensor reads,
which ``.ptd`` entry); the memory plan's buffer sizes; the inputs and outputs; the delegates' backend and compile
specs; and by sha256 the constant buffers, the delegates' blobs (XNNPACK's serialised graphs: norm epsilons,
attention scale), the named data (XNNPACK's packed weights) and the ``.ptd`` files.  Lowering is deterministic
(two exports of the built-in 8da4w give identical fingerprints), so any difference is an edit or another build.
A new-user trial edited an fp32 program outside its delegates and passed every other check: a KV cache's memory
offset moved into another cache, the RoPE slices pointed at new tables, the token input's bound cut to 64, the
caches shrunk to 520 positions (each exact inside the 512-token verification windows, wrong beyond).

Rebuilding a program costs a whole lowering (~40 s for the built-in model, minutes at 350M), so the export
records its program's *fingerprint* (``fingerprint``: that description as JSON) in a cache keyed by what
determines the program (``build_key``: the checkpoint's and adapters' sha256, the plan, the mixed-precision
assignment, the library versions); ``edgekit verify`` reads it there and rebuilds only on a miss (another
machine, a cleared cache, a cache file that is not a fingerprint).  The cache lives outside the bundle, so
editing a bundle cannot edit it.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from edgekit.errors import BundleError

MAX_LINES = 8  # differences reported per program; the rest are counted
FORMAT = 2  # of the fingerprints: a cached one of another format is a miss
_MISSING = object()
CACHE_ENV = "EDGEKIT_CACHE_DIR"
_SKIP_FIELDS = {"stacktrace"}  # Python frames of the exporting process: paths differ between machines


def cache_dir() -> Path:
    """``$EDGEKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/edgekit``, else ``~/.cache/edgekit``; the program
    fingerprints go to its ``executorch-programs`` folder."""
    root = os.environ.get(CACHE_ENV) or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgekit"
    return Path(root) / "executorch-programs"


def build_key(manifest: Mapping[str, Any]) -> str:
    """sha256 of what determines the program the exporter builds: the checkpoint's and every adapter's sha256,
    the plan (quant, options), the mixed-precision assignment and the versions of edgekit, torch, torchao and
    executorch the bundle was made with (another version lowers differently: the cache misses and verify
    rebuilds with the installed ones)."""
    from edgekit import __version__
    from edgekit.versions import versions

    artifact = manifest.get("artifact") or {}
    what = {
        "format": FORMAT,
        "edgekit": __version__,
        "libraries": versions("torch", "torchao", "executorch"),
        "source": (manifest.get("source") or {}).get("sha256"),
        "adapter": (manifest.get("adapter") or {}).get("sha256"),
        "adapters": {n: (i.get("source") or {}).get("sha256")
                     for n, i in ((manifest.get("adapters") or {}).get("items") or {}).items()},
        "family": manifest.get("family"),
        "plan": {k: v for k, v in (manifest.get("plan") or {}).items() if k not in ("source", "adapter", "adapters")},
        "tensor_types": (artifact.get("mixed_precision") or {}).get("tensor_types"),
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def _plain(x: Any) -> Any:
    """A schema dataclass as JSON-able data: bytes by sha256 and length, enums by name."""
    if isinstance(x, (bytes, bytearray, memoryview)):
        b = bytes(x)
        return {"sha256": hashlib.sha256(b).hexdigest(), "bytes": len(b)}
    if isinstance(x, enum.Enum):
        return x.name
    if dataclasses.is_dataclass(x):
        return {"type": type(x).__name__,
                **{f.name: _plain(getattr(x, f.name)) for f in dataclasses.fields(x) if f.name not in _SKIP_FIELDS}}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, float):  # by repr: -0.0 differs from 0.0, nan equals nan
        return repr(x)
    return x


def _payload(entry: Any) -> bytes:
    return bytes(getattr(entry, "buffer", entry))  # bytes, or a BufferEntry in some executorch versions


def fingerprint(path: Path, data_files: Sequence[str] = ()) -> dict[str, Any]:
    """The program at ``path`` as JSON-able data: per method, its values, instructions, operators,
    inputs/outputs, delegates (backend id, compile specs) and memory-plan sizes; the constant buffers, the
    delegates' blobs (XNNPACK's serialised graphs) and the named data (XNNPACK's weights, by key) by sha256; and
    each of ``data_files`` (``.ptd`` files beside it) by sha256.  Raises ``BundleError`` for a file the
    flatbuffer parser cannot read."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    from edgekit.hashing import sha256_file

    try:
        pte = deserialize_pte_binary(path.read_bytes())
    except Exception as exc:  # the flatbuffer parser raises several types on a damaged file
        raise BundleError(f"{path}: not a readable ExecuTorch program ({exc}); re-export the bundle") from None
    program, named = pte.program, pte.named_data
    return {
        "format": FORMAT,
        "methods": {p.name: _plain(p) for p in program.execution_plan},
        "constant_buffer": _plain(program.constant_buffer),
        "backend_delegate_data": _plain(program.backend_delegate_data),
        # deserialize_pte_binary moves the program's named data into PTEFile.named_data (key -> buffer)
        "named_data": {k: {**_plain(_payload(named.buffers[e.buffer_index])), "alignment": e.alignment}
                       for k, e in sorted((named.pte_data if named else {}).items())},
        "data_files": {n: (sha256_file(path.parent / n) if (path.parent / n).is_file() else "<missing>")
                       for n in sorted(data_files)},
    }


def _leaves(x: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    if isinstance(x, dict) and "sha256" not in x:
        for k, v in x.items():
            yield from _leaves(v, path + (k,))
    elif isinstance(x, list) and x and any(isinstance(v, (dict, list)) for v in x):
        for i, v in enumerate(x):
            yield from _leaves(v, path + (i,))
        yield path + ("<count>",), len(x)
    else:
        yield path, x


def _tensor_words(value: Any) -> str:
    val = (value or {}).get("val") or {}
    if val.get("type") != "Tensor":
        return val.get("type", "value")
    return f"{str(val.get('scalar_type', '?')).lower()} tensor {val.get('sizes')}"


def _where(fp: Mapping[str, Any], path: tuple[Any, ...]) -> str:
    """Words for a leaf's path: which method, value (with its dtype and size), instruction (with its operator),
    input or output."""
    if path[0] != "methods" or len(path) < 3:
        return ".".join(map(str, path))
    method, field, rest = path[1], path[2], path[3:]
    plan = fp["methods"].get(method) or {}
    head = f"{method}:"
    if field == "values" and rest and isinstance(rest[0], int):
        values = plan.get("values") or []
        label = ""
        if rest[0] in (plan.get("inputs") or []):
            label = f"input {plan['inputs'].index(rest[0])}, "
        elif rest[0] in (plan.get("outputs") or []):
            label = f"output {plan['outputs'].index(rest[0])}, "
        words = _tensor_words(values[rest[0]]) if rest[0] < len(values) else "value"
        field_path = ".".join(map(str, rest[2:] if rest[1:2] == ("val",) else rest[1:]))
        return f"{head} value {rest[0]} ({label}{words}) {field_path}".rstrip()
    if field == "chains" and len(rest) >= 3 and rest[1] == "instructions" and isinstance(rest[2], int):
        ops = [f"{o.get('name')}.{o.get('overload')}" for o in plan.get("operators") or []]
        instr = plan["chains"][rest[0]]["instructions"]
        what = "instruction"
        if rest[2] < len(instr):
            args = instr[rest[2]].get("instr_args") or {}
            if "op_index" in args and isinstance(args["op_index"], int) and args["op_index"] < len(ops):
                what = f"instruction ({ops[args['op_index']]})"
            elif "delegate_index" in args:
                what = f"instruction (delegate {args['delegate_index']})"
        return f"{head} {what} {rest[2]} {'.'.join(map(str, rest[3:]))}".rstrip()
    return f"{head} {'.'.join(map(str, (field,) + rest))}"


def _short(v: Any) -> str:
    if isinstance(v, dict) and "sha256" in v:
        return f"{v['bytes']} bytes sha256 {v['sha256'][:12]}…"
    s = json.dumps(v, default=str)
    return s if len(s) <= 80 else s[:77] + "..."


def differences(got: Mapping[str, Any], want: Mapping[str, Any], name: str) -> list[str]:
    """Failure lines for every leaf that differs between two fingerprints (at most ``MAX_LINES``, then a count);
    ``name`` is the file's name."""
    a, b = dict(_leaves(got)), dict(_leaves(want))
    diffs, seen = [], set()
    for p in sorted(set(a) | set(b), key=lambda p: (p[0] != "methods", str(p))):
        if a.get(p, _MISSING) == b.get(p, _MISSING):
            continue
        if p in a and p in b:
            diffs.append(f"{_where(got, p)} is {_short(a[p])}, the program edgekit builds for this checkpoint and "
                         f"plan has {_short(b[p])}")
            continue
        # an element only one side has: one line for the element, not one per field
        present, other = (a, b) if p in a else (b, a)
        cut = next(i for i in range(1, len(p) + 1) if not any(q[:i] == p[:i] for q in other))
        if p[:cut] not in seen:
            seen.add(p[:cut])
            where = _where(got if present is a else want, p[:cut])
            diffs.append(f"{where} is only in the file" if present is a
                         else f"{where} is missing (the program edgekit builds for this checkpoint and plan has it)")
    lines = [f"structure check: {name} {d}" for d in diffs[:MAX_LINES]]
    if len(diffs) > MAX_LINES:
        lines.append(f"structure check: {name}: {len(diffs) - MAX_LINES} more differences from the program edgekit "
                     "builds (re-export the bundle)")
    return lines


def record(path: Path, manifest: Mapping[str, Any]) -> None:
    """Store the fingerprint of the program at ``path`` (just built for ``manifest``, with its
    ``artifact.data_files``) in the cache, atomically.  A cache that cannot be written is skipped: ``edgekit
    verify`` then rebuilds."""
    _store(build_key(manifest), fingerprint(path, (manifest.get("artifact") or {}).get("data_files") or ()))


def _store(key: str, fp: Mapping[str, Any]) -> None:
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=folder, suffix=".tmp", delete=False) as f:
            json.dump(fp, f)
        os.replace(f.name, folder / f"{key}.json")
    except OSError:
        pass


def expected(manifest: Mapping[str, Any], rebuild: Callable[[Path], tuple[Path, Sequence[str]]],
             progress: Callable[[str], None]) -> dict[str, Any]:
    """The fingerprint of the program edgekit builds for ``manifest``: from the cache, else ``rebuild(tmp dir)``
    (returns the program it wrote there and its ``.ptd`` files), which is then cached."""
    key = build_key(manifest)
    cached = cache_dir() / f"{key}.json"
    try:
        fp = json.loads(cached.read_text())
        if isinstance(fp, dict) and fp.get("format") == FORMAT and isinstance(fp.get("methods"), dict):
            return fp
    except (OSError, ValueError):
        pass  # unreadable or not a fingerprint: rebuild
    progress("verify: rebuilding the ExecuTorch program for the structure check (no cached build of this "
             f"checkpoint and plan in {cache_dir()})")
    with tempfile.TemporaryDirectory(prefix="edgekit-structure-") as tmp:
        fp = fingerprint(*rebuild(Path(tmp)))
    _store(key, fp)
    return fp


def check(path: Path, manifest: Mapping[str, Any], rebuild: Callable[[Path], tuple[Path, Sequence[str]]],
          progress: Callable[[str], None] = print) -> list[str]:
    """The program at ``path`` (with the manifest's ``artifact.data_files``) against the one edgekit builds for
    ``manifest`` (``expected``); one failure line per difference (``differences``)."""
    from edgekit.versions import versions

    data_files = (manifest.get("artifact") or {}).get("data_files") or ()
    fails = differences(fingerprint(path, data_files), expected(manifest, rebuild, progress), path.name)
    recorded = (manifest.get("artifact") or {}).get("versions") or {}
    installed = versions(*recorded)
    if fails and recorded and installed != recorded:
        fails.append(f"structure check: the bundle was made with {recorded}, this machine has {installed}; another "
                     "version may lower differently: verify where it was made, or re-export here")
    return fails


def _rebuild(manifest: Mapping[str, Any], checkpoint: Any) -> Callable[[Path], tuple[Path, Sequence[str]]]:
    """A function that exports ``checkpoint`` again by the bundle's plan into a folder and returns the program it
    wrote and its ``.ptd`` files: the same adapter(s), quant and options, the recorded mixed-precision assignment
    instead of a new scan (``ExportJob.tensor_types``), no verification.  Raises ``BundleError`` when the plan
    cannot be rebuilt (a checkpoint or adapter gone, an assignment naming no known type)."""
    from dataclasses import replace

    def run(tmp: Path) -> tuple[Path, Sequence[str]]:
        from edgekit import reference
        from edgekit.errors import EdgekitError
        from edgekit.export import make_plan
        from edgekit.exporters import ExportJob

        plan = manifest["plan"]
        recorded = plan.get("options") or {}
        items = (manifest.get("adapters") or {}).get("items") or {}
        adapter = ([f"{n}={i['source']['path']}" for n, i in items.items()] if items
                   else (manifest.get("adapter") or {}).get("path"))
        try:
            prep = make_plan(checkpoint.path, manifest["format"], plan["quant"]["name"], adapter,
                             {"lora_mode": "separate"} if items else {},
                             allow_extra_tensors=bool(plan.get("allow_extra_tensors")))
        except EdgekitError as exc:
            raise BundleError(f"the structure check could not rebuild the program ({exc}); re-export the "
                              "bundle") from None
        prep = replace(prep, plan=replace(prep.plan, options=prep.recipe.options.from_dict(recorded)))
        model = reference.load_reference(prep.checkpoint, prep.adapter, prep.plan.options)
        types = ((manifest.get("artifact") or {}).get("mixed_precision") or {}).get("tensor_types")
        job = ExportJob(plan=prep.plan, checkpoint=prep.checkpoint, reference=model,
                        weights=reference.state_dict(model), progress=lambda _line: None, tensor_types=types)
        with warnings.catch_warnings():  # ExecuTorch's lowering warnings were shown at export already
            warnings.simplefilter("ignore")
            try:
                artifact = prep.recipe.exporter().export(job, tmp)
            except (KeyError, ValueError, TypeError) as exc:  # e.g. an edited mixed-precision assignment
                raise BundleError(f"the structure check could not rebuild the program by the manifest's plan "
                                  f"({type(exc).__name__}: {exc}); re-export the bundle") from None
        return tmp / artifact["file"], artifact.get("data_files") or ()

    return run


def record_build(root: Path) -> None:
    """The export's hook (``edgekit.export``): cache the fingerprint of the program just written to the bundle
    at ``root`` under its manifest's ``build_key``."""
    from edgekit.bundle import read_manifest

    manifest = read_manifest(root)
    record(root / manifest["artifact"]["file"], manifest)


def file_structure(root: Path, manifest: Mapping[str, Any], checkpoint: Any, model: Any) -> list[str]:
    """The structure check of every ExecuTorch pair (``edgekit.tensorcheck``; ``model`` is unused: the rebuild
    loads its own reference as the export did)."""
    return check(root / manifest["artifact"]["file"], manifest, _rebuild(manifest, checkpoint))
