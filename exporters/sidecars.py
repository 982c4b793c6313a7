"""A bundle's JSON side files (ONNX ``genai_config.json``, ExecuTorch ``params.json``) checked against what the
exporter writes for the checkpoint (``edgekit.tensorcheck``'s metadata check): an engine or runner reads eos ids,
context length and sampling defaults from them, so an edited value changes generation without touching a weight."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping


def first_difference(got: Any, want: Any, where: str = "") -> str | None:
    """The path of the first value that differs between two JSON values, with both values (None: equal)."""
    if isinstance(got, dict) and isinstance(want, dict):
        for k in sorted(set(got) | set(want), key=str):
            if k not in got:
                return f"{where}.{k} is missing (expected {_short(want[k])})"
            if k not in want:
                return f"{where}.{k}={_short(got[k])} is not written by the exporter"
            diff = first_difference(got[k], want[k], f"{where}.{k}")
            if diff:
                return diff
        return None
    if isinstance(got, list) and isinstance(want, list) and len(got) == len(want):
        for i, (g, w) in enumerate(zip(got, want)):
            diff = first_difference(g, w, f"{where}[{i}]")
            if diff:
                return diff
        return None
    return None if got == want and type(got) is type(want) else f"{where or '.'} is {_short(got)}, expected {_short(want)}"


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def check_manifest(manifest: Mapping[str, Any], expected: Mapping[str, Any], what: str, section: str = "") -> list[str]:
    """The sections of the bundle's manifest named in ``expected`` (``model``, ``io``: what the export writes
    from the checkpoint, ``kinds.<kind>.metadata`` / ``io``) against it: the runtimes take eos ids, context length,
    bos, the chat template and the model config from there (a new-user trial: an eos id added to
    ``model.eos_ids``, or another chat template, passed a re-hashed bundle).  One failure line per differing
    section, naming the first differing key.  ``section``: ``manifest`` is that section of the manifest (e.g.
    ``artifact``: the keys of it that the runtimes read and the exporter derives from the checkpoint alone)."""
    fails = []
    for key, want in expected.items():
        diff = first_difference(manifest.get(key), json.loads(json.dumps(want)), f"{'.' + section if section else ''}.{key}")
        if diff:
            fails.append(f"tensor check: edgekit.json: {diff} (from {what})")
    return fails


def check_json(path: Path, expected: Mapping[str, Any], what: str) -> list[str]:
    """The JSON file at ``path`` against ``expected`` (what the exporter writes for the checkpoint): one failure
    line naming the first differing key (e.g. ``.model.eos_token_id``), or the file missing or unreadable."""
    if not path.is_file():
        return [f"tensor check: the bundle has no {path.name} (expected the one the exporter writes from {what})"]
    try:
        got = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return [f"tensor check: {path.name} is not valid JSON ({exc})"]
    diff = first_difference(got, json.loads(json.dumps(expected)))
    return [] if diff is None else [f"tensor check: {path.name}: {diff} (from {what})"]
