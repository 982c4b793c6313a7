"""The crash probe turns an engine that kills its process into one BundleError line (issue 17 kind 2)."""

import sys
from pathlib import Path

import pytest

from edgekit.errors import BundleError
from edgekit.runtimes import probe


def fake_python(tmp_path: Path, body: str) -> str:
    """A stand-in for the child interpreter that behaves like an aborting (or hanging) engine."""
    exe = tmp_path / "python"
    exe.write_text("#!/bin/sh\n" + body + "\n")
    exe.chmod(0o755)
    return str(exe)


def test_child_killed_by_sigabrt_is_a_one_line_bundle_error(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "executable", fake_python(
        tmp_path, "echo 'llama.cpp/src/llama-graph.cpp:123: GGML_ASSERT(buffer) failed' >&2; kill -ABRT $$"))
    with pytest.raises(BundleError, match=r"crashed \(SIGABRT\).*GGML_ASSERT\(buffer\) failed") as err:
        probe.run_probe(tmp_path, {"engine": "llama.cpp"})
    assert "\n" not in str(err.value)


def test_hanging_child_is_refused_after_the_timeout(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "executable", fake_python(tmp_path, "exec sleep 30"))
    with pytest.raises(BundleError, match="did not finish"):
        probe.run_probe(tmp_path, {"engine": "llama.cpp"}, timeout_s=0.5)


def test_ordinary_error_and_other_engines_are_left_to_the_in_process_run(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "executable", fake_python(tmp_path, "echo 'probe: BundleError: x' >&2; exit 2"))
    probe.run_probe(tmp_path, {"engine": "llama.cpp"})
    monkeypatch.setattr(sys, "executable", fake_python(tmp_path, "kill -ABRT $$"))
    probe.run_probe(tmp_path, {"engine": "onnxruntime"})  # not probed: raises exceptions, never aborts


def test_probe_child_runs_a_real_gguf_bundle(export_cache):
    from conftest import exported

    root = exported(export_cache, "builtin:lfm2-tiny", "gguf", "q8_0", verify=False)
    from edgekit.bundle import read_manifest

    probe.run_probe(root, read_manifest(root))
