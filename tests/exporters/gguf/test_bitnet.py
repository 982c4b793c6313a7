"""BitNet -> GGUF through the recipe table: every quant of the row, exported from the built-in trained
bitnet-tiny with its LoRA merged (master weights, re-ternarised), run by llama.cpp and verified against the
W1.58A8 reference; the packed layout; and the refusals (squared ReLU, a4.8, packed base + adapter without the
flag, a ternary quant for LFM2)."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import exported
from edgekit.bundle import read_manifest
from edgekit.errors import AdapterError, UnsupportedError
from edgekit.families import Family
from edgekit.plan import Format
from parity import assert_three_parts, quants, recipe

ROW = recipe(Family.BITNET, Format.GGUF)
BASE, LORA = "builtin:bitnet-tiny", "builtin:bitnet-tiny-lora"
TYPE = {"tq1_0": "TQ1_0", "tq2_0": "TQ2_0", "f16": "F16", "f32": "F32"}


@pytest.mark.parametrize("quant", quants(Family.BITNET, Format.GGUF))
def test_builtin_with_adapter(export_cache, quant):
    m = read_manifest(exported(export_cache, BASE, "gguf", quant, adapter=LORA))
    v, t = m["verification"], ROW.thresholds[quant]
    assert_three_parts(v, t)  # tensor check (ternary exact), fidelity vs the file's weights, cost reported
    assert v["metrics"]["tokens"] >= 2000 and t.fidelity_top1(v["metrics"]) >= t.min_top1
    assert v["metrics"]["mean_kl"] <= t.max_mean_kl
    assert TYPE[quant] in m["artifact"]["tensor_types"]
    merge = m["adapter"]["merge"]
    assert merge["reternarised_from"] == "master" and 0 < merge["codes_changed"] < 0.2 and merge["top1"] > 0.5


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    from edgekit.builtin import resolve
    from edgekit.families.bitnet import weights as W

    out = tmp_path_factory.mktemp("bitnet") / "packed"
    W.write_checkpoint(W.load(resolve(BASE)), out, "packed", copy_files_from=resolve(BASE))
    return out


def test_packed_checkpoint_exports_exactly(export_cache, packed):
    m = read_manifest(exported(export_cache, str(packed), "gguf", "tq1_0"))
    assert m["verification"]["passed"] and m["verification"]["metrics"]["mean_kl"] <= 1e-4


def test_packed_base_with_adapter_needs_the_flag(packed, tmp_path):
    from edgekit.export import export, make_plan

    with pytest.raises(AdapterError, match="--accept-reternarisation"):
        export(make_plan(packed, "gguf", "tq2_0", LORA), tmp_path / "x", verify=False, progress=lambda _m: None)
    assert not (tmp_path / "x").exists()


def test_squared_relu_is_refused_naming_what_works(tmp_path):
    from edgekit.builtin import resolve
    from edgekit.export import export, make_plan

    d = tmp_path / "relu2"
    shutil.copytree(resolve(BASE), d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["hidden_act"] = "relu2"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedError, match="SiLU gate.*--format executorch or --format onnx"):
        export(make_plan(d, "gguf", "tq2_0"), tmp_path / "out", verify=False, progress=lambda _m: None)
    assert not (tmp_path / "out").exists()


def test_a48_and_ternary_on_lfm2_are_refused():
    from edgekit.export import make_plan

    with pytest.raises(UnsupportedError, match="--bitnet-activations a4.8: llama.cpp.s bitnet graph cannot express 4-bit activations"):
        make_plan(BASE, "gguf", "tq2_0", options={"bitnet_activations": "a4.8"})
    with pytest.raises(UnsupportedError, match="unknown quantisation 'tq1_0' for lfm2 -> gguf; valid:"):
        make_plan("builtin:lfm2-tiny", "gguf", "tq1_0")
