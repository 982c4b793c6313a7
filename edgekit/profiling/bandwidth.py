"""A read-bandwidth probe, run on the device and cached there per (device, threads).

Decode is bound by how fast the weights stream from memory, so the roofline needs the device's read bandwidth
at the thread count being profiled.  The probe reads a buffer several times larger than any last-level cache
with ``threads`` threads at once (numpy reductions release the GIL) and keeps the best of a few passes, as
STREAM-like probes do: the best pass is the one least disturbed by other work on a shared machine.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Mapping

import numpy as np

CACHE_NAME = "bandwidth.json"
DEFAULT_MIB = 256


def cache_dir() -> Path:
    return Path(os.environ.get("EDGEKIT_CACHE") or Path.home() / ".cache" / "edgekit")


def _buffer_mib(requested: int) -> int:
    """Stay well inside the device's free memory (a 1 GB Pi must not swap for the probe)."""
    try:
        avail_kb = next(
            int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemAvailable:")
        )
        return max(16, min(requested, avail_kb // 1024 // 8))
    except (OSError, StopIteration, ValueError):
        return requested


def measure(
    threads: int, mib: int = DEFAULT_MIB, passes: int = 5, min_seconds: float = 0.3, max_seconds: float = 3.0
) -> float:
    """GB/s read by ``threads`` threads together; best of ``passes`` (at least ``min_seconds`` of reading,
    at most ``max_seconds`` once two passes are done: a slow device or an emulator must not stall a profile)."""
    mib = _buffer_mib(mib)
    # uint64 OR-reduction: integer SIMD that is never compute-bound, unlike float sums with pairwise adds
    buf = np.ones(mib * 1024 * 1024 // 8, dtype=np.uint64)
    chunks = np.array_split(buf, threads)
    best = 0.0
    spent = 0.0
    done = 0
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(np.bitwise_or.reduce, chunks))  # first touch: page faults are not bandwidth
        while done < passes or spent < min_seconds:
            t0 = time.perf_counter()
            list(pool.map(np.bitwise_or.reduce, chunks))
            dt = time.perf_counter() - t0
            spent += dt
            done += 1
            best = max(best, buf.nbytes / dt / 1e9)
            if done >= 50 or (done >= 2 and spent > max_seconds):
                break
    return best


def device_key(inventory: Mapping[str, Any]) -> str:
    return "|".join(str(inventory.get(k, "")) for k in ("hostname", "cpu_model", "cpu_count", "mem_total_mb"))


def cached(inventory: Mapping[str, Any], threads: int, refresh: bool = False) -> float:
    """The device's bandwidth at ``threads``, measured once and kept in ~/.cache/edgekit/bandwidth.json."""
    path = cache_dir() / CACHE_NAME
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError):
        table = {}
    key = f"{device_key(inventory)}|t{threads}"
    if not refresh and key in table:
        return float(table[key]["gbs"])
    gbs = measure(threads)
    table[key] = {"gbs": gbs, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(table, indent=1, sort_keys=True))
        tmp.replace(path)
    except OSError:
        pass  # a read-only home still gets a measurement, just not a cached one
    return gbs
