"""The edgekit command as a user runs it: real subprocesses, one-line errors, nothing left behind."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EDGEKIT = [sys.executable, "-m", "edgekit.cli"]


def run(*args: str, ok: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    out = subprocess.run([*EDGEKIT, *args], capture_output=True, text=True, timeout=timeout)
    if ok:
        assert out.returncode == 0, out.stderr
    return out


def one_line_error(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("edgekit: error:")]
    assert len(lines) == 1, out.stderr
    return lines[0]


def test_help_lists_formats_and_quants():
    out = run("export", "--help")
    assert "{gguf" in out.stdout and "q4_k_m" in out.stdout and "builtin:NAME" in out.stdout


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "out"
    res = run("export", "builtin:lfm2-tiny", "--adapter", "builtin:lfm2-tiny-lora", "--format", "gguf",
              "--quant", "Q4_K_M", "-o", str(out))
    assert "verify: window" in res.stderr and "PASS" in res.stderr  # progress and the verify table
    return out


def test_export_info_run_verify(bundle):
    info = run("info", str(bundle)).stdout
    assert "gguf / q4_k_m" in info and "PASS" in info and "Q4_K" in info
    manifest = json.loads(run("info", str(bundle), "--json").stdout)
    assert manifest["verification"]["passed"] and manifest["adapter"]["rank"] == 8
    res = run("run", str(bundle), "--prompt", "def main(", "--max-tokens", "12")
    assert res.stdout.strip() and "tok/s" in res.stderr
    ver = run("verify", str(bundle), "-q")
    assert "PASS" in ver.stdout and "fidelity: top-1, margin >" in ver.stdout


def test_output_exists_needs_force(bundle):
    err = one_line_error(run("export", "builtin:lfm2-tiny", "--format", "gguf", "-o", str(bundle), ok=False))
    assert "already exists" in err and "--force" in err
    assert (bundle / "edgekit.json").exists()


def test_unknown_quant_lists_valid(tmp_path):
    err = one_line_error(run("export", "builtin:lfm2-tiny", "--format", "gguf", "--quant", "q2_k", "-o",
                             str(tmp_path / "o"), ok=False))
    assert "q4_k_m" in err and "q8_0" in err
    assert not (tmp_path / "o").exists()


def test_bad_checkpoint_one_line(tmp_path):
    src = tmp_path / "ckpt"
    src.mkdir()
    (src / "config.json").write_text("{")
    err = one_line_error(run("export", str(src), "--format", "gguf", "-o", str(tmp_path / "o"), ok=False))
    assert "not valid JSON" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_adapter_for_other_base_one_line(tmp_path, rand_lfm2):
    err = one_line_error(run("export", str(rand_lfm2), "--adapter", "builtin:lfm2-tiny-lora", "--format", "gguf",
                             "-o", str(tmp_path / "o"), ok=False))
    assert "another base model" in err


@pytest.mark.slow  # ~11 s alone (CI time); test_export_info_run_verify keeps the CLI's verify in the default run
def test_verify_detects_changed_source(tmp_path, rand_lfm2):
    src = shutil.copytree(rand_lfm2, tmp_path / "src")
    out = tmp_path / "b"
    run("export", str(src), "--format", "gguf", "--quant", "f16", "-o", str(out), "-q")
    cfg = json.loads((src / "generation_config.json").read_text())
    cfg["max_new_tokens"] = 7
    (src / "generation_config.json").write_text(json.dumps(cfg))
    err = one_line_error(run("verify", str(out), ok=False))
    assert "changed since the export" in err


def test_not_a_bundle(tmp_path):
    err = one_line_error(run("info", str(tmp_path), ok=False))
    assert "not a finished edgekit bundle" in err
