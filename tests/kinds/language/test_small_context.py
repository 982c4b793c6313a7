"""Small models export and verify (issue 17, kind 6): a context under ~80 tokens (a 64-position config, or
ExecuTorch's ``--max-context 64``) sizes verification's windows and greedy run to the model instead of failing on
a prompt the user never gave."""

from __future__ import annotations

import json
import shutil

import pytest

from edgekit.builtin import ROOT as BUILTIN
from edgekit.kinds.language.parity import GREEDY_PROMPT, GREEDY_TOKENS, greedy_sizes


@pytest.mark.parametrize("n_ctx", [4, 16, 33, 64, 79, 80, 81, 512, 4096])
def test_greedy_run_fits_the_context(n_ctx):
    tokens, prompt = greedy_sizes(n_ctx)
    assert tokens >= 1 and prompt >= 1
    assert prompt + tokens <= max(n_ctx - 1, 2)
    if n_ctx > GREEDY_PROMPT + GREEDY_TOKENS:
        assert (tokens, prompt) == (GREEDY_TOKENS, GREEDY_PROMPT)


@pytest.mark.slow  # 143 s on the shared 2-core machine (load 10): a full GGUF export + 33 verification windows
def test_64_position_model_exports_and_verifies(tmp_path):
    pytest.importorskip("llama_cpp")
    from edgekit.bundle import read_manifest
    from edgekit.export import export, make_plan

    src = tmp_path / "small"
    shutil.copytree(BUILTIN / "lfm2-tiny", src)
    cfg = json.loads((src / "config.json").read_text())
    cfg["max_position_embeddings"] = 64
    (src / "config.json").write_text(json.dumps(cfg))
    out = export(make_plan(src, "gguf", "f16"), tmp_path / "out", progress=lambda _: None)
    m = read_manifest(out)["verification"]["metrics"]
    assert m["greedy_tokens"] == 31 and m["greedy_prefix"] == 31
    assert m["tokens"] >= 2048 and m["top1"] > 0.99


@pytest.mark.slow
def test_executorch_max_context_64_exports_and_verifies(tmp_path):
    pytest.importorskip("executorch")
    from edgekit.bundle import read_manifest
    from edgekit.export import export, make_plan

    prep = make_plan("builtin:lfm2-tiny", "executorch", "fp32", options={"max_context": 64})
    out = export(prep, tmp_path / "out", progress=lambda _: None)
    m = read_manifest(out)["verification"]["metrics"]
    assert m["greedy_tokens"] == 31 and m["greedy_prefix"] == 31
