from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from factory import make_lfm2  # noqa: E402

# the ExecuTorch structure check caches program fingerprints (exporters/executorch/structure.py): a fresh cache
# per test session, never the user's
os.environ["EDGEKIT_CACHE_DIR"] = tempfile.mkdtemp(prefix="edgekit-test-cache-")


@pytest.fixture(scope="session")
def rand_lfm2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight LFM2 with a layer pattern unlike the built-in one (attention first)."""
    return make_lfm2(tmp_path_factory.mktemp("rand") / "lfm2", layer_types=("full_attention", "conv", "conv"))


@pytest.fixture(scope="session")
def export_cache(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Bundles exported once per session, keyed by (source, adapter, format, quant)."""
    return {"root": tmp_path_factory.mktemp("bundles")}


def exported(cache: dict, source: str, fmt: str, quant: str, adapter: str | None = None, verify: bool = True) -> Path:
    from edgekit.export import export, make_plan

    key = (source, adapter, fmt, quant, verify)
    if key not in cache:
        out = cache["root"] / f"b{len(cache)}-{fmt}-{quant}"
        export(make_plan(source, fmt, quant, adapter), out, verify=verify, progress=lambda _m: None)
        cache[key] = out
    return cache[key]
