"""The device side of ``edgekit profile``: ``python -m edgekit.profiling.runner`` reads one JSON request on
stdin and writes JSON lines (events) to stdout as work completes.

It runs wherever the bundle runs (this machine, a Pi over ssh, a phone under Termux) with only the engine's
runtime extra installed: stdlib, numpy and the engine; never torch.  One bundle at one thread count per
process, so load time and peak RSS belong to that bundle alone.  Results stream out one test at a time: a
run that is interrupted or crashes still hands back every test that finished.

Requests (``op``): ``inventory``; ``bandwidth`` (threads: the cached read-bandwidth probe); ``profile``
(bundle, spec, threads, label, bandwidth_gbs); ``hashes`` (dir: sha256 of its files, for copy-if-changed);
``check`` (engine: are its modules importable).
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import random
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Mapping

from ..errors import EdgekitError

def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def peak_rss_mb() -> float:
    """This process's peak resident memory.  VmHWM first: Linux's ru_maxrss keeps the high-water mark of the
    address space the process had before exec, i.e. of the parent that forked it (a profiler started from a
    process that holds torch would report torch's memory for every bundle)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def missing_modules(engine: str) -> tuple[list[str], str]:
    """(modules of ``engine`` that cannot be imported here, the pip extra that installs them)."""
    import importlib.util

    from ..runtimes.engines import ENGINES, Engine

    spec = ENGINES[Engine.parse(engine, "profile request")]
    return [m for m in spec.modules if importlib.util.find_spec(m) is None], spec.extra


def op_profile(req: Mapping[str, Any]) -> None:
    from ..bundle import read_manifest
    from ..runtimes import Engine, load
    from . import method, weights
    from .values import TG, ProfileSpec

    root = Path(req["bundle"]).expanduser()
    spec = ProfileSpec.from_dict(req["spec"])
    threads = req.get("threads")
    manifest = read_manifest(root)
    engine = str(manifest.get("engine"))
    missing, extra = missing_modules(engine)
    if missing:
        emit("missing", engine=engine, modules=missing, extra=extra)
        return
    options: dict[str, Any] = {}
    if threads:
        options["n_threads"] = threads
    if engine == Engine.LLAMA_CPP.value:  # the llama.cpp context must hold depth + test tokens
        options["n_ctx"] = max(spec.max_context + 8, 512)
    files = manifest.get("files", {})
    try:
        wbytes: int | None = weights.weight_bytes(root, manifest)
    except (OSError, ValueError):
        wbytes = None
    t0 = time.perf_counter()
    session = load(root, **options)
    load_s = time.perf_counter() - t0
    used_threads = threads or getattr(session, "n_threads", None)
    emit(
        "start",
        bundle=req.get("label") or str(root),
        format=manifest.get("format"),
        quant=manifest.get("plan", {}).get("quant", {}).get("name", "?"),
        engine=engine,
        threads=used_threads,
        file_size=sum(int(e["size"]) for e in files.values()),
        weight_bytes=wbytes,
        load_s=load_s,
        rss_after_load_mb=peak_rss_mb(),
    )
    # measured by the host beforehand in its own process ("bandwidth" op): the probe's buffer would
    # otherwise count in this process's peak RSS
    gbs = req.get("bandwidth_gbs")

    def extras(case: Any) -> dict[str, Any]:
        if case.kind != TG or wbytes is None:
            return {}
        return {"bytes_per_token": weights.decode_bytes(wbytes, manifest, case.depth, case.n), "bandwidth_gbs": gbs}

    try:
        if manifest.get("kind") == "solver":
            rng = random.Random(spec.seed)
            for case in spec.solver_cases():
                result = method.run_solver_case(session, case, spec.repetitions, spec.warmup, rng, used_threads)
                emit("case", result=result.to_dict())
        else:
            method.run_cases(
                session,
                spec.cases(),
                spec.repetitions,
                spec.warmup,
                spec.seed,
                used_threads,
                extras,
                lambda result: emit("case", result=result.to_dict()),
            )
    finally:
        session.close()
    emit("done", peak_rss_mb=peak_rss_mb())


def op_hashes(req: Mapping[str, Any]) -> None:
    root = Path(req["dir"]).expanduser()
    out = {}
    if root.is_dir():
        for p in sorted(root.rglob("*")):
            if p.is_file():
                h = hashlib.sha256()
                with open(p, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
                out[p.relative_to(root).as_posix()] = h.hexdigest()
    emit("hashes", files=out)


def op_bandwidth(req: Mapping[str, Any]) -> None:
    from . import bandwidth, inventory

    threads = int(req.get("threads") or os.cpu_count() or 1)
    gbs = bandwidth.cached(inventory.collect(), threads, refresh=bool(req.get("refresh")))
    emit("bandwidth", threads=threads, gbs=gbs)


def op_check(req: Mapping[str, Any]) -> None:
    missing, extra = missing_modules(str(req["engine"]))
    emit("check", engine=req["engine"], missing=missing, extra=extra)


def main() -> int:
    try:
        req = json.loads(sys.stdin.read() or "{}")
        op = req.get("op")
        if op == "inventory":
            from . import inventory

            emit("inventory", inventory=inventory.collect())
        elif op == "profile":
            op_profile(req)
        elif op == "bandwidth":
            op_bandwidth(req)
        elif op == "hashes":
            op_hashes(req)
        elif op == "check":
            op_check(req)
        else:
            emit("error", kind="RequestError", message=f"unknown op {op!r}")
            return 2
    except KeyboardInterrupt:
        emit("error", kind="KeyboardInterrupt", message="interrupted on the device")
        return 130
    except EdgekitError as exc:
        emit("error", kind=type(exc).__name__, message=str(exc))
        return 2
    except Exception as exc:  # brought back to the host verbatim: the device is where it can be debugged
        emit("error", kind=type(exc).__name__, message=str(exc), traceback=traceback.format_exc(limit=8))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
