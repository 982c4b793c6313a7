"""Golden outputs: what a bundle must produce on any device, written on the host, checked on the device.

``write_golden`` (host; needs the export extra) rebuilds the merged PyTorch reference from the source recorded in
the bundle and asks the bundle's model kind (``edgekit.kinds``) for its golden data, stored as ``golden.json``
inside the bundle and listed in the manifest, so it travels and is hashed with the bundle.  ``compare`` (device;
numpy only) runs a session against that file with the kind's own check — the same ``Thresholds.check`` that
verification uses.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from .errors import BundleError

GOLDEN = "golden.json"
SCHEMA = 2


def write_golden(bundle: str | Path, progress: Callable[[str], None] = print) -> Path:
    """Compute the golden outputs of ``bundle`` from its recorded source (+ adapter) and add them to it."""
    from . import kinds
    from .bundle import read_manifest, write_manifest
    from .export import recorded_reference

    root = Path(bundle)
    manifest = read_manifest(root)
    model = recorded_reference(manifest, progress, what="golden outputs")
    data = kinds.behaviour(manifest["kind"]).write_golden(root, manifest, model, progress)
    golden = {
        "schema": SCHEMA,
        "kind": manifest["kind"],
        "artifact_sha256": manifest["files"][manifest["artifact"]["file"]]["sha256"],
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "thresholds": (manifest.get("verification") or {}).get("thresholds") or _recipe_thresholds(manifest),
        **data,
    }
    path = root / GOLDEN
    tmp = root / (GOLDEN + ".tmp")
    tmp.write_text(json.dumps(golden, separators=(",", ":")), encoding="utf-8")
    tmp.replace(path)
    write_manifest(root, manifest)  # list golden.json (size, sha256) so it is shipped and checked with the bundle
    return path


def _recipe_thresholds(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The thresholds of the bundle's recipe (for a bundle exported with --no-verify)."""
    from .recipes import RECIPES

    return RECIPES.bundle_thresholds(manifest).to_dict()


def read_golden(bundle: str | Path) -> dict[str, Any]:
    path = Path(bundle) / GOLDEN
    if not path.is_file():
        raise BundleError(f"{bundle}: no {GOLDEN}; write it on the export host with: edgekit golden {bundle}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: not valid JSON ({exc}); re-run: edgekit golden {bundle}") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise BundleError(f"{path}: golden schema {data.get('schema') if isinstance(data, dict) else None!r}; "
                          f"re-run: edgekit golden {bundle}")
    return data


def compare(session: Any, golden: Mapping[str, Any]) -> Any:
    """Run ``session`` on the golden inputs and check the bundle's thresholds (numpy only) -> ``DeviceCheck``."""
    from . import kinds

    return kinds.behaviour(golden["kind"]).compare_golden(session, golden)
