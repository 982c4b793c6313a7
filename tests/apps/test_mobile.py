"""apps/mobile (``edgekit bundle --for``): each layout holds exactly the files its app template loads, and the
engines' own runners load them from the laid-out folder — llama.cpp's ``Llama`` the .gguf, ExecuTorch's
``TextLLMRunner`` the .pte (+ .ptd) and tokenizer.json.  No APK or iOS app is built (no SDK here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import exported


def bundle_for(bundle: Path, target: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgekit", "bundle", str(bundle), "--for", target, "-o", str(out),
                           *extra], capture_output=True, text=True, timeout=300)


def test_android_llamacpp_layout_loads_in_llama_cpp(lfm2_gguf, tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp")
    from edgekit import load
    from edgekit.runtimes import SamplingParams

    out = tmp_path / "android"
    r = bundle_for(lfm2_gguf, "android-llamacpp", out)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["LoadModel.kt", "README.md", "edgekit-app.json", "edgekit.json",
                                                    "model.gguf"]
    settings = json.loads((out / "edgekit-app.json").read_text())
    assert settings["model_file"] == "model.gguf" and settings["stop_texts"] == ["<|im_end|>"]
    assert "AiChat.getInferenceEngine" in (out / "LoadModel.kt").read_text()
    assert "adb push model.gguf" in (out / "README.md").read_text()

    llm = llama_cpp.Llama(model_path=str(out / "model.gguf"), n_ctx=256, n_threads=1, verbose=False)
    try:
        # the chat template the Android engine applies comes from the GGUF itself, and matches the bundle's
        assert llm.metadata["tokenizer.chat_template"] == settings["chat_template"]
        ids = llm.tokenize(b"def fib(n):", add_bos=True)
        got = []
        for t in llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0):
            if t == llm.token_eos() or len(got) == 12:
                break
            got.append(t)
    finally:
        llm.close()
    s = load(lfm2_gguf, n_threads=1)
    try:
        want = s.generate(ids, SamplingParams(max_tokens=12, temperature=0)).tokens
    finally:
        s.close()
    assert got == want[: len(got)] and len(got) == len(want)


def test_separate_adapters_travel_with_the_llamacpp_layout(export_cache, tmp_path):
    """A separate-adapter GGUF bundle: the layout holds adapters/*.gguf, edgekit-app.json lists them, the guide says
    how to attach them, and llama.cpp loads base + adapter from the laid-out folder."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from edgekit.export import export, make_plan

    bundle = export_cache["root"] / "mobile-sep-gguf"
    if not bundle.exists():
        prep = make_plan("builtin:lfm2-tiny", "gguf", "q8_0", ["email=builtin:lfm2-tiny-lora"],
                         {"lora_mode": "separate"})
        export(prep, bundle, verify=False, progress=lambda _m: None)
    out = tmp_path / "android"
    r = bundle_for(bundle, "android-llamacpp", out)
    assert r.returncode == 0, r.stderr
    assert (out / "adapters" / "email.gguf").is_file()
    settings = json.loads((out / "edgekit-app.json").read_text())
    assert settings["adapters"] == [{"name": "email", "file": "adapters/email.gguf", "scale": 1.0}]
    assert "llama_set_adapters_lora" in (out / "README.md").read_text()
    llm = llama_cpp.Llama(model_path=str(out / "model.gguf"), lora_path=str(out / "adapters" / "email.gguf"),
                          n_ctx=128, n_threads=1, verbose=False)
    llm.close()


def test_separate_adapters_are_refused_for_executorch_apps(tmp_path):
    from edgekit.apps.mobile import TARGETS, plan_files
    from edgekit.errors import UnsupportedError

    manifest = {"kind": "language", "format": "executorch", "artifact": {"file": "model.pte"},
                "adapters": {"mode": "separate", "items": {"email": {"file": "adapters/email.safetensors"}}}}
    with pytest.raises(UnsupportedError, match="--lora-mode merged"):
        plan_files(tmp_path, manifest, TARGETS["android-executorch"])


def test_refusals(lfm2_gguf, trm_onnx, tmp_path):
    r = bundle_for(lfm2_gguf, "android-executorch", tmp_path / "a")
    assert r.returncode == 2 and "re-export with --format executorch" in r.stderr
    r = bundle_for(trm_onnx, "android-llamacpp", tmp_path / "b")
    assert r.returncode == 2 and "solver" in r.stderr
    r = bundle_for(lfm2_gguf, "windows-phone", tmp_path / "c")
    assert r.returncode == 2 and "invalid choice" in r.stderr
    out = tmp_path / "d"
    assert bundle_for(lfm2_gguf, "android-llamacpp", out).returncode == 0
    r = bundle_for(lfm2_gguf, "android-llamacpp", out)
    assert r.returncode == 2 and "--force" in r.stderr
    assert bundle_for(lfm2_gguf, "android-llamacpp", out, "--force").returncode == 0
    assert not list(tmp_path.glob(".*partial"))


def test_damaged_bundle_is_refused(lfm2_gguf, tmp_path):
    import shutil

    copy = shutil.copytree(lfm2_gguf, tmp_path / "b")
    with (copy / "model.gguf").open("r+b") as f:
        f.seek(1000)
        f.write(b"\0\1\2\3")
    r = bundle_for(copy, "android-llamacpp", tmp_path / "out")
    assert r.returncode == 2 and "sha256" in r.stderr
    assert not (tmp_path / "out").exists()


def _et_export(root: Path, **options: str) -> Path:
    pytest.importorskip("executorch")
    from edgekit.export import export, make_plan

    out = root / ("et-" + "-".join(options.values()))
    export(make_plan("builtin:lfm2-tiny", "executorch", "fp32", None, {"max_context": "256", **options}), out,
           verify=False, progress=lambda _m: None)
    return out


@pytest.mark.slow
def test_executorch_layouts_load_in_executorchs_runner(tmp_path):
    """ExecuTorch's own C++ TextLLMRunner (what LlmModule and TextRunner wrap) loads the laid-out program,
    data file and tokenizer.json and generates the same greedy tokens as edgekit's session."""
    from executorch.extension.llm.runner import GenerationConfig, TextLLMRunner

    import edgekit
    from edgekit.runtimes import SamplingParams

    et_bundle = _et_export(tmp_path)  # fp32 keeps the tied table once, in model.ptd
    out = tmp_path / "android"
    r = bundle_for(et_bundle, "android-executorch", out)
    assert r.returncode == 0, r.stderr
    settings = json.loads((out / "edgekit-app.json").read_text())
    files = sorted(p.name for p in out.iterdir())
    assert {"model.pte", "tokenizer.json", "tokenizer_config.json", "LoadModel.kt", "README.md"} <= set(files)
    data = out / settings["data_file"] if settings["data_file"] else None
    kt = (out / "LoadModel.kt").read_text()
    assert "LlmModule(" in kt and (settings["data_file"] is None or settings["data_file"] in kt)

    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401 - the program's custom ops
    import executorch.kernels.quantized  # noqa: F401

    pieces: list[str] = []
    runner = TextLLMRunner(str(out / "model.pte"), str(out / "tokenizer.json"), str(data) if data else None)
    runner.generate("def fib(n):", GenerationConfig(max_new_tokens=12, temperature=0.0, echo=False, num_bos=1,
                                                     warming=True), pieces.append)
    text = "".join(pieces)
    s = edgekit.load(et_bundle)
    try:
        want = s.generate("def fib(n):", SamplingParams(max_tokens=12, temperature=0)).text
    finally:
        s.close()
    assert pieces and text == want

    # iOS: TextRunner takes no data file; the layout refuses such a bundle and takes a self-contained program
    assert settings["data_file"] == "model.ptd"
    r = bundle_for(et_bundle, "ios-executorch", tmp_path / "refused")
    assert r.returncode == 2 and "--shared-embedding off" in r.stderr
    whole = _et_export(tmp_path, shared_embedding="off")
    ios = tmp_path / "ios"
    r = bundle_for(whole, "ios-executorch", ios)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in ios.iterdir()) == ["LoadModel.swift", "README.md", "edgekit-app.json",
                                                    "edgekit.json", "model.pte", "tokenizer.json",
                                                    "tokenizer_config.json"]
    assert "TextRunner(modelPath: model, tokenizerPath: tokenizer)" in (ios / "LoadModel.swift").read_text()
    pieces.clear()
    runner = TextLLMRunner(str(ios / "model.pte"), str(ios / "tokenizer.json"), None)
    runner.generate("def fib(n):", GenerationConfig(max_new_tokens=12, temperature=0.0, echo=False, num_bos=1,
                                                     warming=True), pieces.append)
    assert "".join(pieces) == want
