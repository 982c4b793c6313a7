"""Separate LoRA adapters (``edgekit.adapters``): one base artifact + named adapter files per format, switched in
place by the session, verified per adapter; ``edgekit adapter add``; the refusals.

Default tests export without the full verification (it costs minutes per model on 2 cores) and instead compare
the engine's teacher-forced logits, per adapter after an in-place switch, with the adapter's unmerged reference on
a short window; the slow tests run the kind's full verification for every adapter.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgekit.errors import AdapterError, BundleError, CheckpointError, UnsupportedError

LORA1 = "builtin:lfm2-tiny-lora"
LORA2 = "builtin:lfm2-tiny-lora2"
TOKENS = list(range(3, 99))  # one short teacher-forced window


def _export(cache: dict, fmt: str, quant: str, adapters: list[str], source: str = "builtin:lfm2-tiny",
            verify: bool = False, options: dict | None = None) -> Path:
    from edgekit.export import export, make_plan

    key = ("sep", source, fmt, quant, tuple(adapters), verify, tuple(sorted((options or {}).items())))
    if key not in cache:
        out = cache["root"] / f"sep{len(cache)}-{fmt}-{quant}"
        prep = make_plan(source, fmt, quant, adapters, {"lora_mode": "separate", **(options or {})})
        export(prep, out, verify=verify, progress=lambda _m: None)
        cache[key] = out
    return cache[key]


def _references(bundle: Path, scaled: tuple = ()) -> dict:
    """name (None = base) -> float32 logits of the reference over TOKENS; also (name, scale) for each of
    ``scaled``."""
    from edgekit import adapters, reference
    from edgekit.bundle import read_manifest
    from edgekit.checkpoint import open_checkpoint
    from edgekit.export import recorded_options
    from edgekit.lora import open_adapter

    m = read_manifest(bundle)
    ckpt = open_checkpoint(m["source"]["path"])
    opts = recorded_options(m, ckpt)
    out = {None: reference.logits(ckpt.family.build_reference(ckpt, opts), TOKENS)}
    for name, e in m["adapters"]["items"].items():
        model = adapters.adapter_reference(ckpt, open_adapter(e["source"]["path"], ckpt), opts)
        out[name] = reference.logits(model, TOKENS)
    for name, scale in scaled:
        e = m["adapters"]["items"][name]
        model = adapters.adapter_reference(ckpt, open_adapter(e["source"]["path"], ckpt), opts, scale)
        out[(name, scale)] = reference.logits(model, TOKENS)
    return out


def _switch_and_compare(bundle: Path, tol: float, order: list) -> dict:
    """Switch through ``order`` (names, None, or (name, scale)) on one session; every state's logits must match its
    reference within ``tol`` (max |Δ|), and be 5x farther (mean |Δ|) from every other state's reference (the
    switch took effect)."""
    import edgekit

    refs = _references(bundle, tuple(k for k in order if isinstance(k, tuple)))
    got = {}
    with_session = edgekit.load(bundle)
    try:
        assert set(with_session.adapters) == {k for k in refs if k is not None and not isinstance(k, tuple)}
        for key in order:
            name, scale = key if isinstance(key, tuple) else (key, 1.0)
            seconds = with_session.use_adapter(name, scale)
            assert with_session.active_adapter == name and seconds >= 0
            got[key] = with_session.logits(TOKENS)
    finally:
        with_session.close()
    for name in order:
        err = float(np.abs(got[name] - refs[name]).max())
        assert err < tol, (name, err)
        mean = float(np.abs(got[name] - refs[name]).mean())
        for other in refs:
            if other != name:
                assert float(np.abs(got[name] - refs[other]).mean()) > 5 * mean, (name, other)
    return got


# -- plan-time refusals (no export) ----------------------------------------------------------------------------
def test_several_adapters_need_separate_mode():
    from edgekit.export import make_plan

    with pytest.raises(UnsupportedError, match="--lora-mode separate"):
        make_plan("builtin:lfm2-tiny", "gguf", "f32", [LORA1, LORA2])
    with pytest.raises(UnsupportedError, match="NAME=PATH"):
        make_plan("builtin:lfm2-tiny", "gguf", "f32", [f"a={LORA1}"])


def test_separate_needs_an_adapter():
    from edgekit.export import make_plan

    with pytest.raises(UnsupportedError, match="at least one --adapter"):
        make_plan("builtin:lfm2-tiny", "gguf", "f32", None, {"lora_mode": "separate"})


@pytest.mark.parametrize("specs, match", [
    ([f"x={LORA1}", f"x={LORA2}"], "two adapters are named 'x'"),
    ([f"bad name={LORA1}"], "not valid"),
    ([f"a={LORA1}", f"b={LORA1}"], "same files"),
    (["builtin:bitnet-tiny-lora"], "another base model|not linear layers|LoRA may target"),
])
def test_bad_adapters_refused(specs, match):
    from edgekit.export import make_plan

    with pytest.raises(AdapterError, match=match):
        make_plan("builtin:lfm2-tiny", "gguf", "f32", specs, {"lora_mode": "separate"})


@pytest.mark.parametrize("source, fmt, quant", [
    ("builtin:lfm2-tiny", "onnx", "fp16"),
])
def test_unsupported_combination_names_what_works(source, fmt, quant):
    from edgekit.export import make_plan

    lora = "builtin:bitnet-tiny-lora" if "bitnet" in source else LORA1
    with pytest.raises(UnsupportedError, match="works for: lfm2 gguf .*bitnet gguf"):
        make_plan(source, fmt, quant, [lora], {"lora_mode": "separate"})


def test_factors_fold_peft_scaling():
    """B @ A with the folded scaling equals what peft merges into each weight (rsLoRA adapter, rank 4)."""
    from edgekit import adapters, reference
    from edgekit.checkpoint import open_checkpoint
    from edgekit.lora import open_adapter

    ckpt = open_checkpoint("builtin:lfm2-tiny")
    lora = open_adapter(LORA2, ckpt)
    assert lora.config["use_rslora"] and lora.config["r"] == 4
    base = reference.state_dict(ckpt.family.build_reference(ckpt))
    merged = reference.state_dict(reference.load_reference(ckpt, lora))
    f = adapters.factors(lora)
    assert {m.rsplit(".", 1)[1] for m in f} == {"q_proj", "v_proj", "out_proj", "w1", "w2", "w3"}
    for module, lf in f.items():
        delta = merged[module + ".weight"] - base[module + ".weight"]
        np.testing.assert_allclose(lf.b @ lf.a, delta, atol=2e-6)


# -- one format each: export separate with two adapters, switch in place, compare ------------------------------
def test_gguf_two_adapters_switch(export_cache):
    bundle = _export(export_cache, "gguf", "f32", [LORA1, f"http={LORA2}"])
    m = json.loads((bundle / "edgekit.json").read_text())
    assert m["adapter"] is None and m["adapters"]["mode"] == "separate"
    assert sorted(m["adapters"]["items"]) == ["http", "lfm2-tiny-lora"]
    import gguf

    r = gguf.GGUFReader(str(bundle / m["adapters"]["items"]["http"]["file"]))
    fields = {f.name: f for f in r.fields.values()}
    assert bytes(fields["general.type"].parts[-1]).decode() == "adapter"
    assert bytes(fields["adapter.type"].parts[-1]).decode() == "lora"
    assert bytes(fields["general.architecture"].parts[-1]).decode() == "lfm2"
    names = {t.name for t in r.tensors}
    assert "blk.0.shortconv.out_proj.weight.lora_a" in names and not any("in_proj" in n for n in names)
    # base -> adapter -> other adapter -> base on one session: F32 llama.cpp vs the references
    _switch_and_compare(bundle, 2e-3, [None, "http", "lfm2-tiny-lora", None])


def test_gguf_scale_and_unknown_name(export_cache):
    import edgekit

    bundle = _export(export_cache, "gguf", "f32", [LORA1, f"http={LORA2}"])
    s = edgekit.load(bundle)
    try:
        base = s.logits(TOKENS[:32])
        s.use_adapter("http", 1.0)
        full = s.logits(TOKENS[:32])
        s.use_adapter("http", 0.5)
        half = s.logits(TOKENS[:32])
        s.use_adapter("http", 0.0)
        zero = s.logits(TOKENS[:32])
        with pytest.raises(AdapterError, match="no adapter 'nope'.*http, lfm2-tiny-lora"):
            s.use_adapter("nope")
        assert s.active_adapter == "http"
    finally:
        s.close()
    assert np.abs(zero - base).max() < 1e-4
    assert 0 < np.abs(half - base).max() < np.abs(full - base).max()


def test_onnx_two_adapters_switch(export_cache):
    bundle = _export(export_cache, "onnx", "fp32", [LORA1, f"http={LORA2}"])
    m = json.loads((bundle / "edgekit.json").read_text())
    import onnxruntime as ort

    params = ort.AdapterFormat.read_adapter(str(bundle / m["adapters"]["items"]["http"]["file"])).get_parameters()
    branches = m["adapters"]["branches"]
    assert branches["model.layers.0.conv.in_proj"] == 8  # only the first adapter has in_proj: zero for "http"
    assert any(k.endswith("qkv_proj.A") for k in params)
    # plain onnxruntime with the adapter file, as an app would run it (no edgekit)
    sess = ort.InferenceSession(str(bundle / "model.onnx"))
    assert {"lora_scale", *params} <= {i.name for i in sess.get_overridable_initializers()}
    _switch_and_compare(bundle, 2e-3, [None, "http", "lfm2-tiny-lora", None])


def test_bitnet_gguf_adapter_is_lossless(export_cache):
    """TQ2_0 ternary base stays exact; the adapter runs unmerged: llama.cpp vs the unmerged W1.58A8 reference."""
    bundle = _export(export_cache, "gguf", "tq2_0", ["builtin:bitnet-tiny-lora"], source="builtin:bitnet-tiny")
    m = json.loads((bundle / "edgekit.json").read_text())
    assert m["artifact"]["tensor_types"].get("TQ2_0") and m["adapter"] is None
    # int8 activations round differently in llama.cpp and torch: single logits move by ~1, distributions do not
    got = _switch_and_compare(bundle, 2.0, [None, "bitnet-tiny-lora"])
    refs = _references(bundle)
    for name in (None, "bitnet-tiny-lora"):  # activations are int8 in both: near-exact in distribution
        p, q = (_softmax(refs[name]), _softmax(got[name]))
        kl = float(np.mean(np.sum(p * (np.log(p + 1e-30) - np.log(q + 1e-30)), -1)))
        top1 = float(np.mean(refs[name].argmax(-1) == got[name].argmax(-1)))
        assert kl < 1e-3 and top1 >= 0.97, (name, kl, top1)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# -- edgekit adapter add --------------------------------------------------------------------------------------------
def test_adapter_add_and_refusals(export_cache, tmp_path):
    from edgekit import adapters
    from edgekit.bundle import read_manifest

    src = _export(export_cache, "gguf", "f32", [LORA1])
    bundle = tmp_path / "b"
    shutil.copytree(src, bundle)
    before = read_manifest(bundle)
    with pytest.raises(AdapterError, match="in the bundle already"):
        adapters.add(bundle, LORA1, "again", verify=False, progress=lambda _m: None)
    with pytest.raises(AdapterError, match="named 'lfm2-tiny-lora'"):
        adapters.add(bundle, LORA2, "lfm2-tiny-lora", verify=False, progress=lambda _m: None)
    with pytest.raises(AdapterError, match="another base model|not linear layers|LoRA may target"):
        adapters.add(bundle, "builtin:bitnet-tiny-lora", "bit", verify=False, progress=lambda _m: None)
    assert read_manifest(bundle) == before and not (bundle / "adapters" / "bit.gguf").exists()
    entry = adapters.add(bundle, LORA2, "http", verify=False, progress=lambda _m: None)
    assert (bundle / entry["file"]).is_file() and entry["source"]["rank"] == 4
    assert not list(tmp_path.glob(".b.*"))  # no staging left behind
    _switch_and_compare(bundle, 2e-3, ["http", None])


def test_adapter_add_refuses_merged_bundle_and_changed_source(export_cache, tmp_path):
    from edgekit import adapters
    from edgekit.builtin import resolve
    from edgekit.export import export, make_plan

    merged = tmp_path / "merged"
    shutil.copytree(_export(export_cache, "gguf", "f32", [LORA1]), merged)
    m = json.loads((merged / "edgekit.json").read_text())
    m.pop("adapters")
    (merged / "edgekit.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="--lora-mode separate"):
        adapters.add(merged, LORA2, "http", verify=False, progress=lambda _m: None)
    ckpt = tmp_path / "ckpt"
    shutil.copytree(resolve("builtin:lfm2-tiny"), ckpt)
    bundle = tmp_path / "b"
    export(make_plan(ckpt, "gguf", "f32", [LORA1], {"lora_mode": "separate"}), bundle, verify=False,
           progress=lambda _m: None)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["edgekit_note"] = "changed"
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="changed since the export"):
        adapters.add(bundle, LORA2, "http", verify=False, progress=lambda _m: None)


def test_onnx_add_must_fit_branches(export_cache, tmp_path):
    from edgekit import adapters

    bundle = tmp_path / "b"
    shutil.copytree(_export(export_cache, "onnx", "fp32", [f"http={LORA2}"]), bundle)
    with pytest.raises(AdapterError, match="no LoRA branch for|re-export with all adapters"):
        adapters.add(bundle, LORA1, "main", verify=False, progress=lambda _m: None)


def test_cli_run_with_adapter(export_cache, capsys):
    from edgekit.cli import main

    bundle = _export(export_cache, "gguf", "f32", [LORA1, f"http={LORA2}"])
    assert main(["run", str(bundle), "--prompt", "import os", "--max-tokens", "8", "--adapter", "http"]) == 0
    # the prompt rate is measured, not llama.cpp's near-zero prompt counter after a switch (60,000 tok/s was shown)
    prompt_line = capsys.readouterr().err.splitlines()[-1]
    prompt_tps = float(prompt_line.split("tok, ")[1].split(" tok/s")[0])
    ttft_ms = float(prompt_line.split("ttft ")[1].split(" ms")[0])
    prompt_tokens = int(prompt_line.split("prompt ")[1].split(" tok")[0])
    assert prompt_tps <= 2 * prompt_tokens / (ttft_ms / 1e3), prompt_line
    assert main(["run", str(bundle), "--prompt", "x", "--adapter", "nope"]) == 2
    assert "no adapter 'nope'" in capsys.readouterr().err
    assert main(["adapter", "list", str(bundle)]) == 0
    assert "http: adapters/http.gguf" in capsys.readouterr().out


# -- full verification (the kind's check per adapter), every format ----------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("fmt, quant", [("gguf", "q8_0"), ("onnx", "int8"), ("executorch", "8da4w")])
def test_two_adapters_verified(export_cache, fmt, quant):
    bundle = _export(export_cache, fmt, quant, [LORA1, f"http={LORA2}"], verify=True)
    m = json.loads((bundle / "edgekit.json").read_text())
    reports = [m["verification"]] + [e["verification"] for e in m["adapters"]["items"].values()]
    assert len(reports) == 3
    for v in reports:  # the kind's own gates (tensor check, fidelity, cost) decided; the export would have failed
        assert v["passed"], v["failures"]
        assert v["metrics"]["fidelity_reference"] == "file weights"  # the adapters' too: base file + adapter
        assert v["metrics"]["tokens"] >= 2000 and v["metrics"]["greedy_tokens"] > 0


def test_separate_adapter_is_held_to_the_file_weights(export_cache, tmp_path):
    """A separate adapter switched in is verified against the file's base weights with the adapter applied
    unmerged, at the quant's tight bars (a new-user trial: held to the float model's raw top-1 bar, a correct int8
    bundle of a flat model was refused); so an adapter file whose B factors are scaled by 0.95 is refused."""
    import shutil

    import onnxruntime as ort

    from edgekit.bundle import read_manifest, write_manifest
    from edgekit.export import verify_bundle

    bundle = _export(export_cache, "onnx", "int8", [LORA1], verify=True)
    v = read_manifest(bundle)["adapters"]["items"]["lfm2-tiny-lora"]["verification"]
    assert v["passed"] and v["metrics"]["fidelity_reference"] == "file weights"
    assert v["metrics"]["tensor_check"]["passed"] and v["metrics"]["top1_decided"] >= 0.99
    tampered = tmp_path / "b"
    shutil.copytree(bundle, tampered)
    path = tampered / read_manifest(tampered)["adapters"]["items"]["lfm2-tiny-lora"]["file"]
    adapter = ort.AdapterFormat.read_adapter(str(path))
    params = {k: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(
        v.numpy() * np.float32(0.95) if k.endswith(".B") else v.numpy())) for k, v in adapter.get_parameters().items()}
    out = ort.AdapterFormat()
    out.set_adapter_version(adapter.get_adapter_version())
    out.set_model_version(adapter.get_model_version())
    out.set_parameters(params)
    out.export_adapter(str(path))
    write_manifest(tampered, read_manifest(tampered))  # re-hashed: only the content checks can notice
    report = verify_bundle(tampered, progress=lambda _m: None)
    assert not report.passed and any(f.startswith("adapter lfm2-tiny-lora: fidelity mean KL")
                                     for f in report.failures), report.failures


def test_executorch_switches_in_place_at_any_scale(export_cache, tmp_path):
    """The factors and the scale are program inputs: one program, switched without a reload (the same loaded
    program object), at scale 0.5 too, each state against its unmerged reference; ``adapter add`` writes one file
    (no re-lowering); a bundle of the older .ptd-per-adapter layout is refused in one line."""
    import edgekit
    from edgekit import adapters

    bundle = _export(export_cache, "executorch", "fp32", [LORA1], options={"max_context": 256})
    m = json.loads((bundle / "edgekit.json").read_text())
    assert m["artifact"]["lora_inputs"] and "lora_keys" not in m["artifact"]
    assert m["adapters"]["items"]["lfm2-tiny-lora"]["file"] == "adapters/lfm2-tiny-lora.safetensors"
    added = tmp_path / "b"
    shutil.copytree(bundle, added)
    entry = adapters.add(added, LORA2, "http", verify=False, progress=lambda _m: None)
    assert (added / entry["file"]).is_file()
    s = edgekit.load(added)
    try:
        program = s._program
        s.use_adapter("http", 0.5)
        s.use_adapter("lfm2-tiny-lora")
        assert s._program is program  # no reload
    finally:
        s.close()
    _switch_and_compare(added, 2e-3, [None, "http", ("http", 0.5), "lfm2-tiny-lora", ("lfm2-tiny-lora", 0.5), None])
    old = tmp_path / "old"
    shutil.copytree(bundle, old)
    m["artifact"]["lora_keys"] = {}
    (old / "edgekit.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="older edgekit layout.*re-export"):
        edgekit.load(old)


@pytest.mark.slow
def test_bitnet_gguf_adapter_verified(export_cache):
    bundle = _export(export_cache, "gguf", "tq1_0", ["builtin:bitnet-tiny-lora"], source="builtin:bitnet-tiny",
                     verify=True)
    m = json.loads((bundle / "edgekit.json").read_text())
    v = m["adapters"]["items"]["bitnet-tiny-lora"]["verification"]
    assert v["passed"] and v["metrics"]["mean_kl"] < 1e-4, v


def _bitnet_float_switch(bundle: Path) -> None:
    """A float BitNet bundle (ternary codes x scale, float activations) with ``bitnet-tiny-lora`` kept separate,
    switched in place, against the unmerged reference with float activations, at scale 1 and 0.5: near-exact
    (the base is not re-ternarised; the branch reads the unquantised input)."""
    from types import SimpleNamespace

    import edgekit
    from edgekit import reference
    from edgekit.checkpoint import open_checkpoint
    from edgekit.families.bitnet.lora import unmerged_reference
    from edgekit.families.bitnet.reference import build
    from edgekit.lora import open_adapter

    m = json.loads((bundle / "edgekit.json").read_text())
    assert m["adapters"]["mode"] == "separate" and m["adapter"] is None
    ckpt = open_checkpoint("builtin:bitnet-tiny")
    adapter, flt = open_adapter("builtin:bitnet-tiny-lora", ckpt), SimpleNamespace(bitnet_activations="float")
    refs = {None: reference.logits(build(ckpt, "float"), TOKENS)}
    for scale in (1.0, 0.5):
        refs[scale] = reference.logits(unmerged_reference(ckpt, adapter, flt, scale=scale), TOKENS)
    s = edgekit.load(bundle)
    got = {}
    try:
        for key in (1.0, None, 0.5):
            s.use_adapter(None if key is None else "bitnet-tiny-lora", key or 1.0)
            got[key] = s.logits(TOKENS)
    finally:
        s.close()
    for key, want in refs.items():
        err = float(np.abs(got[key] - want).max())
        assert err < 1e-3, (key, err)
        for other in refs:
            if other != key:
                assert float(np.abs(got[key] - refs[other]).mean()) > 100 * err, (key, other)


@pytest.mark.slow  # ~40 s alone; the BitNet ExecuTorch recipe parity (tests/exporters/executorch/test_bitnet.py)
# stays in the default run
def test_bitnet_executorch_adapter_is_lossless(export_cache):
    bundle = _export(export_cache, "executorch", "fp32", ["builtin:bitnet-tiny-lora"], source="builtin:bitnet-tiny",
                     options={"max_context": 256})
    assert json.loads((bundle / "edgekit.json").read_text())["artifact"]["lora_inputs"]
    _bitnet_float_switch(bundle)


def test_bitnet_onnx_adapter_is_lossless(export_cache):
    bundle = _export(export_cache, "onnx", "fp32", ["builtin:bitnet-tiny-lora"], source="builtin:bitnet-tiny")
    assert json.loads((bundle / "edgekit.json").read_text())["adapters"]["branches"]
    _bitnet_float_switch(bundle)


@pytest.mark.slow
@pytest.mark.parametrize("fmt, quant", [("executorch", "8da4w"), ("onnx", "int2"), ("onnx", "fp32")])
def test_bitnet_adapter_verified(export_cache, fmt, quant):
    """Ternary codes exact: the kind's verification of the base and of the separate adapter (held to the unmerged
    W1.58A8 + adapter reference by the recipe's float bars: no read-back with an adapter switched in)."""
    bundle = _export(export_cache, fmt, quant, ["builtin:bitnet-tiny-lora"], source="builtin:bitnet-tiny", verify=True)
    m = json.loads((bundle / "edgekit.json").read_text())
    for v in (m["verification"], m["adapters"]["items"]["bitnet-tiny-lora"]["verification"]):
        assert v["passed"], v["failures"]


def test_bitnet_float_bars_hold_an_adapter_to_the_unmerged_reference():
    """With an adapter switched in there is no read-back: BitNet's float bars (the quant's cost, ~3x) replace the
    fidelity, logit and greedy bars, which hold an engine to the file's own weights."""
    from edgekit.families import Family
    from edgekit.plan import Format
    from edgekit.recipes import RECIPES

    t = RECIPES.get(Family.BITNET, Format.ONNX).thresholds["fp32"]
    m = {"top1": 0.997, "mean_kl": 2.0e-5, "max_abs_logit": 0.4, "greedy_prefix": 5, "greedy_tokens": 32,
         "tokenizer_match": True,
         "fidelity_reference": "float (a separate adapter is switched in; the file holds the base)"}
    assert t.check(m) == []
    assert len(t.check({**m, "mean_kl": 5e-5})) == 1
    fails = t.check({**m, "fidelity_reference": "file weights"})
    assert [f.split(" ")[0] for f in fails] == ["fidelity", "fidelity", "max", "greedy"]
