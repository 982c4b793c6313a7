"""What the device is: CPU, cores, memory, OS, Python and engine versions.  Runs on the device, stdlib only."""

from __future__ import annotations

import os
import platform
import socket
from typing import Any

# distributions whose versions matter for the numbers (engines and their array library)
ENGINE_DISTRIBUTIONS = ("llama-cpp-python", "onnxruntime", "onnxruntime-genai", "executorch", "torch", "numpy")


def _cpu_model() -> str:
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    # x86 names the CPU in "model name"; Raspberry Pi kernels put the board in "Model" and ARM cores have
    # only "CPU part" codes
    for key in ("model name", "Model", "Hardware", "cpu model", "Processor"):
        if fields.get(key):
            return fields[key]
    if "CPU part" in fields:
        return f"ARM implementer {fields.get('CPU implementer', '?')} part {fields['CPU part']}"
    return platform.processor() or platform.machine()


def _meminfo_mb(key: str) -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError):
        pass
    return None


def _os_name() -> str:
    try:
        info = platform.freedesktop_os_release()
        return info.get("PRETTY_NAME") or info.get("NAME", "")
    except OSError:
        android = os.environ.get("ANDROID_ROOT")
        return "Android (Termux)" if android else platform.platform()


def _versions() -> dict[str, str]:
    from ..versions import versions

    return versions(*ENGINE_DISTRIBUTIONS)


def collect() -> dict[str, Any]:
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = os.cpu_count() or 1
    from .. import __version__

    return {
        "hostname": socket.gethostname(),
        "machine": platform.machine(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": affinity,
        "mem_total_mb": _meminfo_mb("MemTotal"),
        "mem_available_mb": _meminfo_mb("MemAvailable"),
        "os": _os_name(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "edgekit": __version__,
        "engines": _versions(),
    }
