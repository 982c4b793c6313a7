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


def test_engine_killed_by_sigill_blames_the_engine_build_not_the_bundle(tmp_path, monkeypatch):
    # a llama.cpp built with AMX on a machine whose kernel refuses AMX tiles dies exactly like this
    monkeypatch.setattr(sys, "executable", fake_python(tmp_path, "kill -ILL $$"))
    with pytest.raises(BundleError, match=r"crashed \(SIGILL\).*scripts/install.*not at fault") as err:
        probe.run_probe(tmp_path, {"engine": "llama.cpp"})
    assert "re-export" not in str(err.value)


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


def test_supervised_child_killed_by_sigbus_is_a_one_line_bundle_error(tmp_path):
    import os
    import signal

    with pytest.raises(BundleError, match=r"executorch crashed \(SIGBUS\).*sha256") as err:
        probe.run_supervised(lambda: os.kill(os.getpid(), signal.SIGBUS) or 0, tmp_path, "executorch")
    assert "\n" not in str(err.value)
    with pytest.raises(BundleError, match=r"crashed \(SIGSEGV\).*without --no-check"):
        probe.run_supervised(lambda: os.kill(os.getpid(), signal.SIGSEGV) or 0, tmp_path, "llama.cpp", checked=False)


def test_supervised_child_exit_code_comes_back(tmp_path):
    assert probe.run_supervised(lambda: 0, tmp_path, "llama.cpp") == 0
    assert probe.run_supervised(lambda: 2, tmp_path, "llama.cpp") == 2


def test_only_engines_that_abort_and_real_streams_are_guarded(capsys):
    # capsys replaces sys.stdout with an in-memory stream: a forked child's output would be lost, so in-process
    assert not probe.guarded({"engine": "llama.cpp"})
    assert not probe.guarded({"engine": "onnxruntime"})


def test_a_process_with_threads_or_torch_is_not_forked(capfd):
    """capfd keeps real file descriptors, but a process with Python threads, or one that imported torch (its
    thread pools), could deadlock in a forked child: it runs in-process."""
    import threading

    import torch  # noqa: F401

    assert not probe.guarded({"engine": "executorch"})
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        assert not probe._fork_safe()
    finally:
        stop.set()
        t.join()


def test_the_cli_process_forks_before_any_engine_is_imported():
    """`edgekit run` as a command: after parsing and reading the manifest, nothing that blocks the fork."""
    import subprocess

    code = ("import sys; from edgekit import cli; cli.quiet_libraries(); cli.build_parser(); "
            "from edgekit.runtimes import probe; sys.exit(0 if probe._fork_safe() else 1)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# a FlatTensor (.ptd) flatbuffer vtable: size 16, table 7, then the fields' offsets 8, 12, 10 (little-endian u16)
PTD_VTABLE = bytes.fromhex("1000070008000c000a00")


def damaged_with_recorded_digest(root: Path, dst: Path, name: str, offset: int, value: int) -> Path:
    """A copy of the bundle with one byte of ``name`` changed and the manifest's size/sha256 re-recorded from the
    damaged file, so that the digest check passes and the engine meets the damage."""
    import json
    import shutil

    from edgekit.hashing import sha256_file

    shutil.copytree(root, dst)
    p = dst / name
    raw = bytearray(p.read_bytes())
    raw[offset] = value
    p.write_bytes(bytes(raw))
    m = json.loads((dst / "edgekit.json").read_text())
    m["files"][name] = {"sha256": sha256_file(p), "size": p.stat().st_size}
    (dst / "edgekit.json").write_text(json.dumps(m, indent=2))
    return dst


@pytest.mark.slow  # one ExecuTorch export (~1-2 min here) and three fresh interpreters that import torch
def test_executorch_program_that_segfaults_is_one_line_in_probe_and_run(export_cache, tmp_path):
    """0xff as the high byte of the third field offset of the first tensor-table vtable in model.ptd's FlatTensor
    flatbuffer (0x000a -> 0xff0a) makes ExecuTorch read 65 KB past the table: SIGSEGV in load_method / the
    runner. Found by forking a load + 2-token stream for each flatbuffer byte set to 0xff (on one export, bytes
    406-411, 418-423 and 476-483 crashed; byte 409 is this field); located by its vtable, not a fixed offset,
    since the layout moves with the export."""
    import subprocess

    from conftest import exported

    root = exported(export_cache, "builtin:lfm2-tiny", "executorch", "8da4w", verify=False)
    at = (root / "model.ptd").read_bytes().find(PTD_VTABLE)
    assert at > 0, "no tensor-table vtable in model.ptd: the FlatTensor layout changed; find a new damage"
    bad = damaged_with_recorded_digest(root, tmp_path / "bad", "model.ptd", at + 9, 0xFF)
    with pytest.raises(BundleError, match=r"executorch crashed \(SIG(SEGV|BUS|ABRT)\).*sha256") as err:
        probe.probe(bad, timeout_s=300)
    assert "\n" not in str(err.value)
    proc = subprocess.run(
        [sys.executable, "-m", "edgekit", "run", str(bad), "--prompt", "def main(", "--max-tokens", "2"],
        capture_output=True, text=True, timeout=300,
    )
    ours = [line for line in proc.stderr.splitlines() if line.startswith("edgekit:")]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(ours) == 1 and "executorch crashed (SIG" in ours[0], proc.stderr[-2000:]
    assert proc.stderr.rstrip().endswith(ours[0])
    probe.probe(root, timeout_s=300)  # the undamaged bundle passes
    proc = subprocess.run(  # and `edgekit run` prints only its timing line: none of ExecuTorch's log lines
        [sys.executable, "-m", "edgekit", "run", str(root), "--prompt", "def main(", "--max-tokens", "2"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0 and proc.stderr.startswith("[executorch] prompt"), proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1, proc.stderr[-2000:]
