"""Every GGUF quant edgekit claims, exported from the built-in trained LFM2 + LoRA and run by llama.cpp.

The export itself runs the teacher-forced parity check and raises if a threshold is missed; these tests
also re-read what landed in the manifest and the file.
"""

import pytest

from conftest import exported
from edgekit.bundle import read_manifest
from edgekit.families import Family
from edgekit.plan import Format
from parity import quants, recipe

GGUF = recipe(Family.LFM2, Format.GGUF)
# the tensor type each quant must actually put in the file (llama.cpp falls back silently otherwise)
EXPECTED_TYPE = {
    "f32": "F32", "f16": "F16", "bf16": "BF16", "q8_0": "Q8_0",
    "q6_k": "Q6_K", "q5_k_m": "Q5_K", "q4_k_m": "Q4_K", "q4_0": "Q4_0",
}


@pytest.mark.parametrize("quant", quants(Family.LFM2, Format.GGUF))
def test_builtin_with_adapter(export_cache, quant):
    bundle = exported(export_cache, "builtin:lfm2-tiny", "gguf", quant, adapter="builtin:lfm2-tiny-lora")
    m = read_manifest(bundle)
    v = m["verification"]
    t = GGUF.thresholds[quant]
    assert v["passed"], v["failures"]
    assert v["metrics"]["tokens"] >= 2000
    assert t.fidelity_top1(v["metrics"]) >= t.min_top1 and v["metrics"]["mean_kl"] <= t.max_mean_kl
    assert v["metrics"]["tokenizer_match"]
    types = m["artifact"]["tensor_types"]
    assert EXPECTED_TYPE[quant] in types, types
    allowed = {EXPECTED_TYPE[quant], "F32", "Q6_K", "Q8_0", "Q5_K", "F16"}
    if m["artifact"].get("mixed_precision"):  # the sensitivity scan's choice, among the quant's candidate types
        from edgekit.exporters.gguf.mixed import CANDIDATES

        allowed |= set(CANDIDATES[quant])
    assert set(types) <= allowed
    assert m["adapter"]["target_modules"] == sorted(["in_proj", "out_proj", "q_proj", "k_proj", "v_proj", "w1", "w2", "w3"])


@pytest.fixture(scope="module")
def reference_model():
    from edgekit.checkpoint import open_checkpoint
    from edgekit.lora import open_adapter
    from edgekit.reference import load_reference

    ckpt = open_checkpoint("builtin:lfm2-tiny")
    return load_reference(ckpt, open_adapter("builtin:lfm2-tiny-lora", ckpt))


def plain_greedy(path, prompt_text: bytes, n: int, **kwargs):
    """Greedy tokens from llama-cpp-python alone: no edgekit code involved."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, verbose=False, **kwargs)
    prompt = llm.tokenize(prompt_text, add_bos=True)
    got = []
    for tok in llm.generate(prompt, temp=0.0, top_k=1, repeat_penalty=1.0):
        got.append(tok)
        if len(got) == n:
            break
    llm.close()
    return prompt, got


PROMPT = b"import os\nimport sys\n\n\ndef main(argv):\n    "


def test_llama_cpp_alone_runs_q4_k_m_like_the_reference(export_cache, reference_model):
    """The float reference model, teacher-forced on llama.cpp's own greedy text, picks the same next token at
    least 85 % of the time (Q4_K_M's quantisation cost on this model: top-1 0.914 teacher-forced)."""
    from edgekit.reference import logits

    bundle = exported(export_cache, "builtin:lfm2-tiny", "gguf", "q4_k_m", adapter="builtin:lfm2-tiny-lora")
    prompt, got = plain_greedy(bundle / "model.gguf", PROMPT, 32)
    ref_next = logits(reference_model, prompt + got)[len(prompt) - 1 : -1].argmax(-1)
    agreement = float((ref_next == got).mean())
    assert agreement >= 0.85, (agreement, got)


def test_llama_cpp_alone_runs_f32_exactly_like_the_reference(export_cache, reference_model):
    from edgekit.reference import greedy

    bundle = exported(export_cache, "builtin:lfm2-tiny", "gguf", "f32", adapter="builtin:lfm2-tiny-lora")
    # F32 KV cache, as edgekit's session uses for F32 bundles (llama.cpp's default F16 cache rounds K and V)
    prompt, got = plain_greedy(bundle / "model.gguf", PROMPT, 32, type_k=0, type_v=0)
    assert got == greedy(reference_model, prompt, 32)


@pytest.mark.parametrize(
    "shape",
    [
        # attention-first (~15 s alone; the ExecuTorch and ONNX random-model tests keep this pattern in the default
        # run) and the largest shape (~18 s): slow, the other two stay in the default run
        pytest.param(dict(layer_types=("full_attention", "conv", "conv")), marks=pytest.mark.slow),
        pytest.param(dict(hidden=512, intermediate=1536, heads=8, kv_heads=2,
                          layer_types=("conv", "conv", "full_attention", "conv")), marks=pytest.mark.slow),
        dict(heads=4, kv_heads=4, layer_types=("conv", "full_attention"), vocab_pad=60),
        dict(layer_types=("conv", "full_attention", "conv"), auto_adjust=False, intermediate=512, dtype="bfloat16"),
    ],
    ids=["attention-first", "hidden512-gqa4", "mha-padded-vocab", "no-autoadjust-bf16"],
)
def test_other_shapes_float_parity(tmp_path, shape):
    """Random-weight LFM2s unlike the built-in: float exports must agree almost exactly."""
    from factory import make_lfm2

    from edgekit.export import export, make_plan

    src = make_lfm2(tmp_path / "src", **shape)
    for quant in ("f32", "f16"):
        out = export(make_plan(src, "gguf", quant), tmp_path / quant, progress=lambda _m: None)
        assert read_manifest(out)["verification"]["passed"]


def test_llama3_style_pretokenizer_end_to_end(tmp_path):
    """A tokenizer that splits like LFM2's published one (llama-3 regex, then byte-level): the derived
    pre-tokenizer ("lfm2") must make llama.cpp tokenize exactly like `tokenizers` (checked by verification)."""
    import json

    from factory import make_lfm2

    from edgekit.export import export, make_plan
    from edgekit.exporters.gguf.vocab import LLAMA3

    src = make_lfm2(tmp_path / "src", layer_types=("conv", "full_attention", "conv"))
    tok = json.loads((src / "tokenizer.json").read_text())
    tok["pre_tokenizer"] = {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        ],
    }
    tok["model"]["ignore_merges"] = True
    (src / "tokenizer.json").write_text(json.dumps(tok))
    out = export(make_plan(src, "gguf", "f32"), tmp_path / "b", progress=lambda _m: None)
    m = read_manifest(out)
    assert m["artifact"]["pretokenizer"] == "lfm2"
    assert m["verification"]["metrics"]["tokenizer_match"] and m["verification"]["passed"]
