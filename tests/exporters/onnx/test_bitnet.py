"""BitNet -> ONNX: the built-in trained bitnet-tiny exported as fp32, int2 and int4 (ternary weights exact in
MatMulNBits), run by edgekit's ONNX Runtime session and compared with the reference, teacher-forced.

fp32 must reproduce the float-activation reference almost exactly; int2/int4 keep the ternary weights exact and
let the kernel quantise activations to int8 per block, measured against the W1.58A8 reference.  The job is built
by hand, as the recipe row does.  Measured on the full held-out run (2048 tokens, 4 windows of 512): fp32 vs float
max |dlogit| 1.0e-5, KL 2e-13; int2 block 32 vs a8 top-1 0.9956, KL 2.7e-5, max 0.19; int2 block 128 0.9946,
2.3e-5, 0.11; int4 the same as int2 (same weights, same activations).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from edgekit.builtin import ROOT as BUILTIN  # noqa: E402
from edgekit.errors import UnsupportedError  # noqa: E402
from edgekit.families import Family  # noqa: E402
from edgekit.kinds.language.parity import compare_logits, heldout_text  # noqa: E402
from edgekit.plan import Format  # noqa: E402
from parity import assert_three_parts, quants, recipe  # noqa: E402

SOURCE = BUILTIN / "bitnet-tiny"
TOKENS = 512
QUANTS = tuple(quants(Family.BITNET, Format.ONNX))
pytestmark = pytest.mark.skipif(not (SOURCE / "model.safetensors").is_file(), reason="built-in bitnet-tiny missing")


def _job(reference, quant: str, **options):
    from edgekit.checkpoint import open_checkpoint
    from edgekit.exporters import ExportJob
    from edgekit.exporters.onnx import QUANTS as ONNX_QUANTS, OnnxOptions
    from edgekit.families import Family
    from edgekit.plan import ExportPlan, Format, QuantSpec, WeightKind

    spec = ONNX_QUANTS.get(quant) or QuantSpec(quant, WeightKind.INT, 2, 32, activation_bits=8)
    ckpt = open_checkpoint(str(SOURCE))
    plan = ExportPlan(source=ckpt.path, family=Family.BITNET, format=Format.ONNX, quant=spec,
                      options=OnnxOptions(**options))
    return ExportJob(plan=plan, checkpoint=ckpt, reference=reference, weights={}, progress=lambda _m: None)


@pytest.fixture(scope="module")
def references():
    from edgekit.families.bitnet.reference import BitNetReference
    from edgekit.families.bitnet.weights import load

    w = load(SOURCE)
    refs = {a: BitNetReference(w, activations=a).eval() for a in ("a8", "float")}
    refs["a8"].weights = w  # what build_for_export attaches
    return refs


@pytest.fixture(scope="module")
def tokens():
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(SOURCE / "tokenizer.json")).encode(heldout_text(), add_special_tokens=False).ids
    return [1] + ids[: TOKENS - 1]


@pytest.fixture(scope="module")
def reference_logits(references, tokens):
    from edgekit.families.bitnet.reference import logits

    return {a: logits(m, tokens) for a, m in references.items()}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """Every quant of the recipe row, exported through the recipe (make_plan + export: verified against the A8
    reference, which raises when a threshold is missed)."""
    from edgekit.bundle import read_manifest
    from edgekit.export import export, make_plan

    out = {}
    for quant in QUANTS:
        root = tmp_path_factory.mktemp(f"bitnet-onnx-{quant}") / "b"
        export(make_plan(SOURCE, "onnx", quant), root, progress=lambda _m: None)
        out[quant] = (root, read_manifest(root)["artifact"])
    return out


def test_recipe_parity(bundles):
    from edgekit.bundle import read_manifest

    for quant, (root, _art) in bundles.items():
        v = read_manifest(root)["verification"]
        t = recipe(Family.BITNET, Format.ONNX).thresholds[quant]
        assert v["passed"] and t.fidelity_top1(v["metrics"]) >= t.min_top1 and v["metrics"]["mean_kl"] <= t.max_mean_kl, v
        assert_three_parts(v, t)  # tensor check (ternary exact), fidelity vs the file's weights, cost reported


def _session(root, art):
    from edgekit.runtimes.onnxruntime import OnnxSession

    manifest = {"model": {"vocab_size": 4096, "context_length": 1024, "eos_ids": [2]}, "artifact": art}
    return OnnxSession(root, manifest, n_threads=2)


@pytest.fixture(scope="module")
def engine_logits(bundles, tokens):
    out = {}
    for quant, (root, art) in bundles.items():
        s = _session(root, art)
        out[quant] = s.logits(tokens)
        # decoding one token at a time (KV appended in place) gives the scoring path's rows
        state = s.new_state()
        steps = np.concatenate([s.forward([t], state) for t in tokens[:32]])
        assert np.abs(steps - out[quant][:32]).max() < (1e-4 if quant == "fp32" else 0.05)
        s.close()
    return out


def test_fp32_is_the_float_activation_reference(engine_logits, reference_logits):
    m = compare_logits(reference_logits["float"], engine_logits["fp32"])
    assert m["max_abs"] <= 1e-4 and m["agree"] == m["n"] and m["kl_sum"] / m["n"] <= 1e-9, m


@pytest.mark.parametrize("quant", ["int2", "int4"])
def test_ternary_tracks_w158a8(engine_logits, reference_logits, quant):
    m = compare_logits(reference_logits["a8"], engine_logits[quant])
    assert m["agree"] / m["n"] >= 0.98 and m["kl_sum"] / m["n"] <= 1e-4 and m["max_abs"] <= 0.5, m


@pytest.mark.parametrize("quant, bits", [("int2", 2), ("int4", 4)])
def test_weights_in_file_are_the_codes(bundles, references, quant, bits):
    """Every MatMulNBits block decodes to codes x scale exactly (read back from the file)."""
    import onnx
    from onnx import numpy_helper

    root, art = bundles[quant]
    assert art["optimized_ops"]["MatMulNBits"] == 4 * 4 + 1  # qkv, o, gate_up, down per layer + the LM head
    model = onnx.load(str(root / art["file"]))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    w = references["a8"].weights
    p = "model.layers.2.mlp"
    packed, scales = inits[f"{p}.gate_up_proj.weight_Q{bits}"], inits[f"{p}.gate_up_proj.weight_scales"]
    per = 8 // bits
    fields = np.stack([(packed >> (bits * j)) & ((1 << bits) - 1) for j in range(per)], -1).reshape(packed.shape[0], -1)
    codes = fields.astype(np.int16) - (1 << (bits - 1))
    want = np.concatenate([w.ternary[f"{p}.gate_proj.weight"].codes, w.ternary[f"{p}.up_proj.weight"].codes])
    assert np.array_equal(codes, want)
    ff = w.config.intermediate_size
    assert np.all(scales.reshape(2 * ff, -1)[:ff] == np.float32(w.ternary[f"{p}.gate_proj.weight"].scale))


def test_int2_is_smaller(bundles):
    size = {q: (root / "model.onnx.data").stat().st_size for q, (root, _a) in bundles.items()}
    assert size["int2"] < size["int4"] < size["fp32"], size


@pytest.mark.parametrize("quant, options, match", [
    ("int2", {"block_size": 256}, "block-size <= 128"),
    ("int2", {"accuracy_level": 0}, "accuracy-level 4"),
    ("int4", {"block_size": 16}, None),  # 16 divides every width: accepted
])
def test_block_rules(references, tmp_path, quant, options, match):
    from edgekit.exporters.onnx import bitnet

    job = _job(references["a8"], quant, **options)
    if match is None:
        bitnet.block_size(job.config, options["block_size"], 4, 4)
        return
    with pytest.raises(UnsupportedError, match=match):
        bitnet.export(job, tmp_path)
