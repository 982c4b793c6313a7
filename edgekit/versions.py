"""Installed versions of distributions (stdlib only: used in manifests on the host and in device inventories)."""

from __future__ import annotations

from importlib import metadata


def versions(*distributions: str) -> dict[str, str]:
    """``{distribution: version}`` for those installed (names as pip knows them, e.g. ``llama-cpp-python``)."""
    out = {}
    for name in distributions:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out
