"""The device path never imports torch: with torch made unimportable (a ``torch`` package on PYTHONPATH that
raises ImportError, inherited by every subprocess), ``edgekit.load`` + ``generate`` of a GGUF and an ONNX bundle,
``device_tests/`` and ``edgekit profile`` all work; and importing the registries imports nothing heavy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import exported

REPO = Path(__file__).resolve().parents[1]
BLOCKER = "raise ImportError('torch is blocked: the device path must not import it')\n"


@pytest.fixture(scope="module")
def no_torch_env(tmp_path_factory) -> dict[str, str]:
    blocker = tmp_path_factory.mktemp("blocker")
    (blocker / "torch").mkdir()
    (blocker / "torch" / "__init__.py").write_text(BLOCKER)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(blocker), *filter(None, [env.get("PYTHONPATH")])])
    return env


@pytest.fixture(scope="module")
def bundles(export_cache) -> list[Path]:
    from edgekit.golden import write_golden

    out = [
        exported(export_cache, "builtin:lfm2-tiny", "gguf", "q4_0", adapter="builtin:lfm2-tiny-lora"),
        exported(export_cache, "builtin:lfm2-tiny", "onnx", "int4", adapter="builtin:lfm2-tiny-lora"),
    ]
    for b in out:
        if not (b / "golden.json").is_file():
            write_golden(b, progress=lambda _m: None)
    return out


def run(env: dict[str, str], *argv: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, *argv], env=env, cwd=cwd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_blocker_really_blocks(no_torch_env):
    done = subprocess.run([sys.executable, "-c", "import torch"], env=no_torch_env, capture_output=True, text=True)
    assert done.returncode != 0 and "torch is blocked" in done.stderr


def test_registries_import_nothing_heavy(no_torch_env):
    code = (
        "import sys, edgekit.recipes, edgekit.runtimes, edgekit.kinds.language, edgekit.golden\n"
        "from edgekit import families\n"
        "families.get('lfm2')\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'onnx', 'onnxruntime', 'llama_cpp', 'gguf', 'executorch')"
        " if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    run(no_torch_env, "-c", code)


def test_load_and_generate_without_torch(no_torch_env, bundles):
    code = (
        "import sys, edgekit\n"
        "from edgekit.runtimes import SamplingParams\n"
        "for b in sys.argv[1:]:\n"
        "    s = edgekit.load(b)\n"
        "    g = s.generate('def main(', SamplingParams(max_tokens=8, stop_at_eos=False))\n"
        "    assert len(g.tokens) == 8, g\n"
        "    assert s.logits(s.tokenize('x = 1')).shape[1] == s.vocab_size\n"
        "    s.close()\n"
        "assert 'torch' not in sys.modules or sys.modules['torch'] is None\n"
    )
    run(no_torch_env, "-c", code, *map(str, bundles))


def test_device_tests_without_torch(no_torch_env, bundles):
    for b in bundles:
        out = run(no_torch_env, "-m", "pytest", "-q", str(REPO / "device_tests"), "--bundle", str(b), cwd=REPO / "device_tests")
        assert "passed" in out.stdout and "failed" not in out.stdout


def test_profile_without_torch(no_torch_env, bundles):
    out = run(no_torch_env, "-m", "edgekit", "profile", *map(str, bundles), "-p", "16", "-n", "4", "-r", "1",
              "--no-roofline", "-q")
    assert "pp16" in out.stdout and "tg4" in out.stdout
