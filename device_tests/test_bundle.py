"""The bundle runs on this device and produces the outputs the export host recorded."""

from __future__ import annotations

import platform
import random
import sys
from pathlib import Path
from typing import Any

from .conftest import record


def test_files_match_manifest(bundle: Path, manifest: dict[str, Any]) -> None:
    from edgekit.bundle import check_files

    check_files(bundle, manifest, hashes=True)  # a damaged copy fails here, not as odd numbers later


def test_golden_belongs_to_this_bundle(manifest: dict[str, Any], golden: dict[str, Any]) -> None:
    artifact = manifest["artifact"]["file"]
    assert golden["artifact_sha256"] == manifest["files"][artifact]["sha256"], "golden.json is for another model file"


def test_runtime_loads(session: Any, manifest: dict[str, Any]) -> None:
    assert session.engine == manifest["engine"]
    record("engine", session.engine)
    record("machine", platform.machine())
    if manifest["engine"] != "executorch":  # ExecuTorch's Python runtime links libtorch (DESIGN §5)
        assert "torch" not in sys.modules, "loading a bundle imported torch"


def test_outputs_match_golden(session: Any, golden: dict[str, Any]) -> None:
    from edgekit.golden import compare

    check = compare(session, golden)
    record("metrics", dict(check.metrics))
    record("thresholds", dict(check.thresholds))
    assert check.passed, "; ".join(check.failures)


def test_short_profile_runs(session: Any, manifest: dict[str, Any]) -> None:
    from edgekit.profiling.method import run_case
    from edgekit.profiling.values import PP, TG, Case

    rates = {}
    for case in (Case(PP, 32), Case(TG, 8)):
        result = run_case(session, case, repetitions=2, warmup=True, rng=random.Random(0), threads=None)
        assert len(result.samples) == 2
        assert all(s.engine_s > 0 for s in result.samples)
        rates[case.name] = result.tps_mean
    record("profile", rates)
