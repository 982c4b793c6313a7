"""BitNet -> GGUF: ternary tensors written exactly (TQ1_0 / TQ2_0 / F32 with a separate scale), llama.cpp's
bitnet graph vs the W1.58A8 reference, and the refusal of what llama.cpp cannot express (squared ReLU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gguf")
llama_cpp = pytest.importorskip("llama_cpp")
torch = pytest.importorskip("torch")

from edgekit.errors import UnsupportedError  # noqa: E402
from edgekit.exporters.gguf import bitnet as G  # noqa: E402
from edgekit.families.bitnet import reference as R  # noqa: E402
from edgekit.families.bitnet import weights as W  # noqa: E402
from edgekit.families.bitnet.synthetic import random_weights, tiny_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]
BUILTIN = ROOT / "edgekit" / "builtin" / "bitnet-tiny"
TOKENIZER_FROM = ROOT / "edgekit" / "builtin" / "lfm2-tiny"
HELDOUT = ROOT / "edgekit" / "data" / "heldout.txt"
# Goal of issue 12: llama.cpp's bitnet graph within mean KL 1e-3 of the W1.58A8 reference (checked on the trained
# built-in; random weights are far more sensitive to activation quantisation, which llama.cpp does not do per token).
MAX_MEAN_KL_A8 = 1e-3
# The engine vs the reference built from the file's own weights (ternary weights, float activations): F32/F16 are
# exact up to float summation order (measured 1.4e-6 / 3.9e-6 on the random model); TQ kernels multiply against
# activations llama.cpp quantises itself (Q8_K), an error of the same size as A8's on random weights (5.3e-3
# measured) — that TQ1_0 and TQ2_0 give identical logits, and read_back, show the weights themselves are exact.
MAX_MEAN_KL_EXACT = {"f32": 1e-5, "f16": 1e-5, "tq1_0": 1e-2, "tq2_0": 1e-2}


def llama_logits(path: Path, tokens: list[int]) -> np.ndarray:
    llm = llama_cpp.Llama(
        model_path=str(path), n_ctx=max(64, len(tokens)), n_batch=512, n_threads=2, n_threads_batch=2,
        logits_all=True, verbose=False,
    )
    try:
        llm.eval(tokens)
        return np.array(llm.scores[: len(tokens)], dtype=np.float64)
    finally:
        llm.close()


def compare(ref: np.ndarray, got: np.ndarray) -> tuple[float, float, float]:
    """(mean KL(ref || got) in nats, top-1 agreement, max |Δlogit|)."""
    ref = ref.astype(np.float64)
    lp = ref - ref.max(-1, keepdims=True)
    lp -= np.log(np.exp(lp).sum(-1, keepdims=True))
    lq = got - got.max(-1, keepdims=True)
    lq -= np.log(np.exp(lq).sum(-1, keepdims=True))
    kl = (np.exp(lp) * (lp - lq)).sum(-1)
    return float(kl.mean()), float((ref.argmax(-1) == got.argmax(-1)).mean()), float(np.abs(ref - got).max())


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained built-in when present (meaningful numbers), else a random SiLU BitNet with the LFM2 tokenizer."""
    if (BUILTIN / "config.json").is_file():
        return BUILTIN
    root = tmp_path_factory.mktemp("bitnet") / "rand-bitnet"
    W.write_checkpoint(random_weights(tiny_config(), seed=30), root, "packed", copy_files_from=TOKENIZER_FROM)
    return root


@pytest.fixture(scope="module")
def tokens(model_dir: Path) -> list[int]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    text = HELDOUT.read_text(encoding="utf-8")[:4000] if HELDOUT.is_file() else "def f(x):\n    return x + 1\n" * 20
    return tok.encode(text).ids[:128]


@pytest.fixture(scope="module")
def reference_logits(model_dir: Path, tokens: list[int]) -> dict[str, np.ndarray]:
    """W1.58A8 reference logits ("a8") and the same weights with float activations ("float"), float64."""
    weights = W.load(model_dir)
    return {act: R.logits(R.build(weights, activations=act), tokens).astype(np.float64) for act in ("a8", "float")}


@pytest.mark.parametrize("ternary, embedding", [("tq1_0", "f16"), ("tq2_0", "f16"), ("f16", "f16"), ("f32", "f32")])
def test_llama_cpp_matches_reference(tmp_path: Path, model_dir: Path, tokens, reference_logits, ternary, embedding):
    weights = W.load(model_dir)
    path = tmp_path / f"model-{ternary}.gguf"
    summary = G.write(weights, model_dir, path, G.GGUFPlan(ternary=ternary, embedding=embedding))
    G.read_back(path, weights)  # ternary codes and scales exact, or it raises
    if ternary in ("tq1_0", "tq2_0"):
        assert summary["tensor_types"][ternary.upper()] == 7 * weights.config.num_hidden_layers
        want_bpw = {"tq1_0": 1.6875, "tq2_0": 2.0625}[ternary]
        assert summary["ternary_bits_per_weight"] == pytest.approx(want_bpw)
    got = llama_logits(path, tokens)
    kl_x, top1_x, max_x = compare(reference_logits["float"], got)
    kl, top1, max_abs = compare(reference_logits["a8"], got)
    print(
        f"\n{model_dir.name} {ternary}/{embedding} ({len(tokens)} tokens): vs W1.58A8 reference mean KL {kl:.2e}, "
        f"top-1 {top1:.4f}, max|dlogit| {max_abs:.3f}; vs float-activation reference mean KL {kl_x:.2e}, "
        f"top-1 {top1_x:.4f}, max|dlogit| {max_x:.4f}"
    )
    assert kl_x <= MAX_MEAN_KL_EXACT[ternary]
    if model_dir == BUILTIN:
        assert kl <= MAX_MEAN_KL_A8


def test_tensor_names_agree_with_gguf() -> None:
    cfg = tiny_config()
    G.check_names_against_gguf(cfg)
    assert G.tensor_name("model.layers.1.self_attn.attn_sub_norm.weight") == "blk.1.attn_sub_norm.weight"
    assert G.tensor_name("model.layers.0.mlp.down_proj.weight") == "blk.0.ffn_down.weight"
    with pytest.raises(UnsupportedError, match="no llama.cpp bitnet tensor name"):
        G.tensor_name("model.layers.0.mlp.experts.weight")


def test_relu2_refused(tmp_path: Path) -> None:
    cfg = tiny_config(hidden_act="relu2")
    with pytest.raises(UnsupportedError, match="executorch") as info:
        G.check_supported(cfg)
    assert "onnx" in str(info.value) and "squared ReLU" in str(info.value)
    w = random_weights(cfg, seed=31)
    W.write_checkpoint(w, tmp_path / "m", "packed", copy_files_from=TOKENIZER_FROM)
    with pytest.raises(UnsupportedError):
        G.write(w, tmp_path / "m", tmp_path / "x.gguf", G.GGUFPlan("tq2_0"))
    assert not (tmp_path / "x.gguf").exists()


def test_untied_and_narrow_rows_refused() -> None:
    with pytest.raises(UnsupportedError, match="lm_head"):
        G.check_supported(tiny_config(tie_word_embeddings=False))
    narrow = tiny_config(hidden_size=128, num_attention_heads=2, num_key_value_heads=1)
    with pytest.raises(UnsupportedError, match="multiple of 256"):
        G.check_supported(narrow, G.GGUFPlan("tq1_0"))
    G.check_supported(narrow, G.GGUFPlan("f16"))
    with pytest.raises(UnsupportedError, match="valid: tq1_0"):
        G.GGUFPlan("q4_0")
