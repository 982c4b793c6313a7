"""Issue 11 for BitNet: the tensor check reads the ternary codes and scales back from the file and holds them to
the W1.58A8 reference's exactly; fidelity compares the engine with that reference rebuilt from the file's weights
and the engine's own activation quantisation (``families/bitnet/fidelity.py``).

A corrupted TQ2_0 file (one projection's ``.scale`` changed by 2 %, or two rows of codes swapped) is refused by the
tensor check — although its quantisation cost alone is small; ``edgekit verify`` on such a bundle, re-hashed,
fails on the tensor check.  Every recipe also passes on a random-weight BitNet of another shape (flat
distributions); the default run takes one quant per format, the rest are ``slow``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import exported
from parity import assert_three_parts, quants
from edgekit.bundle import read_manifest, write_manifest
from edgekit.families import Family
from edgekit.plan import Format
from edgekit.recipes import RECIPES

ROOT = Path(__file__).resolve().parents[3]
TOKENIZER_FROM = ROOT / "edgekit" / "builtin" / "lfm2-tiny"
BASE, LORA = "builtin:bitnet-tiny", "builtin:bitnet-tiny-lora"


@pytest.fixture(scope="module")
def other_bitnet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another shape than the built-in (hidden 512 in 8 heads of 64, FFN 1024, 3 layers), random ternary weights."""
    from edgekit.families.bitnet import weights as W
    from edgekit.families.bitnet.synthetic import random_weights, tiny_config

    cfg = tiny_config(hidden_size=512, intermediate_size=1024, num_hidden_layers=3, num_attention_heads=8,
                      num_key_value_heads=2)
    root = tmp_path_factory.mktemp("bitnet-other") / "bitnet"
    W.write_checkpoint(random_weights(cfg, seed=41), root, "packed", copy_files_from=TOKENIZER_FROM)
    return root


DEFAULT_OTHER = {("gguf", "tq2_0"), ("onnx", "int2")}  # ExecuTorch lowering takes minutes: slow
OTHER_CASES = [
    pytest.param(fmt.value, q, marks=() if (fmt.value, q) in DEFAULT_OTHER else pytest.mark.slow)
    for fmt in (Format.GGUF, Format.ONNX, Format.EXECUTORCH)
    for q in quants(Family.BITNET, fmt)
]


@pytest.mark.parametrize("fmt,quant", OTHER_CASES)
def test_random_bitnet_of_another_shape_passes_the_gates(export_cache, other_bitnet, fmt, quant):
    bundle = exported(export_cache, str(other_bitnet), fmt, quant)  # raises ParityError when verification fails
    v = read_manifest(bundle)["verification"]
    m, c = v["metrics"], v["metrics"]["cost"]
    print(f"other-shape BitNet {fmt} {quant}: fidelity top-1 {m['top1']:.4f} KL {m['mean_kl']:.2e}; "
          f"cost top-1 {c['top1']:.4f} KL {c['mean_kl']:.2e}; max |Δlogit| {m['max_abs_logit']:.2e}, float32 "
          f"reference's own {m['reference_noise'] if m.get('reference_noise') is not None else float('nan'):.2e}")
    assert_three_parts(v, RECIPES.get(Family.BITNET, Format.parse(fmt)).thresholds[quant])


def _tensor(reader, name):
    return next(t for t in reader.tensors if t.name == name)


def _scale_changed(path: Path, tensor: str) -> None:
    import gguf

    reader = gguf.GGUFReader(str(path), "r+")
    _tensor(reader, tensor).data[...] *= np.float32(1.02)
    reader.data.flush()


def _rows_swapped(path: Path, tensor: str) -> None:
    """Swap the first two rows of TQ2_0 codes of ``tensor`` (rows that differ), in place."""
    import gguf

    reader = gguf.GGUFReader(str(path), "r+")
    t = _tensor(reader, tensor)
    assert t.tensor_type == gguf.GGMLQuantizationType.TQ2_0
    rows = t.data.reshape(t.data.shape[0], -1)
    assert not np.array_equal(rows[0], rows[1])
    first = rows[0].copy()
    rows[0] = rows[1]
    rows[1] = first
    reader.data.flush()


@pytest.mark.parametrize("corrupt,tensor,why", [
    (_scale_changed, "blk.1.ffn_up.scale", "relative RMS error"),
    (_rows_swapped, "blk.2.attn_q.weight", "quantisation steps"),
])
def test_corrupted_ternary_file_refused_by_tensor_check(export_cache, tmp_path, corrupt, tensor, why):
    from edgekit import reference
    from edgekit.export import recorded_reference
    from edgekit.kinds.language import parity

    src = exported(export_cache, BASE, "gguf", "tq2_0", adapter=LORA, verify=False)
    bundle = tmp_path / "b"
    shutil.copytree(src, bundle)
    corrupt(bundle / "model.gguf", tensor)
    manifest = read_manifest(bundle)
    model = recorded_reference(manifest, lambda _m: None)
    tc, file_ref = parity.file_reference(bundle, manifest, model)
    weight = tensor.removesuffix(".scale") + ".weight" if tensor.endswith(".scale") else tensor
    assert not tc.passed and len(tc.failures) == 1, tc.failures
    assert weight in tc.failures[0] and why in tc.failures[0] and "ternary/TQ2_0" in tc.failures[0], tc.failures
    # what the damaged file computes is close to the model: a check of the cost alone would not see it
    ids = __import__("tokenizers").Tokenizer.from_file(str(bundle / "tokenizer.json")).encode(
        parity.heldout_text(), add_special_tokens=False).ids
    tokens = parity.windows(ids, 1, 256, 256)[0]
    c = parity.compare_logits(reference.logits(model, tokens), reference.logits(file_ref, tokens))
    assert c["kl_sum"] / c["n"] < 1e-2 and c["agree"] / c["n"] >= 0.9, c


def test_verify_fails_on_tensor_check_for_altered_rehashed_bitnet_bundle(export_cache, tmp_path):
    from edgekit.export import verify_bundle

    src = exported(export_cache, BASE, "gguf", "tq2_0", adapter=LORA, verify=False)
    bundle = tmp_path / "b"
    shutil.copytree(src, bundle)
    _rows_swapped(bundle / "model.gguf", "blk.0.ffn_down.weight")
    write_manifest(bundle, read_manifest(bundle))  # re-hash: the file check alone no longer notices
    report = verify_bundle(bundle, progress=lambda _m: None)
    assert not report.passed
    assert any(f.startswith("tensor check: blk.0.ffn_down.weight") for f in report.failures), report.failures


def test_ternary_tensors_must_be_exact():
    """A ternary read-back off by one ulp of its scale is refused; the same error on a float type passes."""
    from edgekit.tensorcheck import ReadTensor, check

    w = np.array([[1, 0, -1, 1]], dtype=np.float32) * np.float32(0.25)
    off = w * np.float32(1 + 2**-23)
    assert check([ReadTensor("t", "w", w, "ternary/TQ2_0", 0, 3)], {"w": w}).passed
    assert not check([ReadTensor("t", "w", off, "ternary/TQ2_0", 0, 3)], {"w": w}).passed
    assert check([ReadTensor("t", "w", off, "F32")], {"w": w}).passed


def test_float_export_bar_follows_the_reference_noise_and_still_refuses_a_wrong_graph(export_cache, other_bitnet, tmp_path):
    """A max |Δlogit| bar is absolute; on this model (logit std ~7) the float32 reference's own error (vs its
    float64 copy) is ~2.8e-3, above the F32 bar measured on the built-in model (2e-3), and the correct F32 export
    measures 3.2e-3.  The bar is ``REFERENCE_NOISE_FACTOR`` times that error, and it still refuses a RoPE base off
    by 0.1 % (measured: max |Δlogit| 0.14 against a widened bar of 8.3e-3; its KL, 1.6e-5, would pass)."""
    from edgekit.export import verify_bundle
    from edgekit.kinds.language import REFERENCE_NOISE_FACTOR

    src = exported(export_cache, str(other_bitnet), "gguf", "f32")  # raises ParityError when verification fails
    good = read_manifest(src)["verification"]["metrics"]
    assert good["reference_noise"] is not None and good["reference_noise"] > 0
    assert good["max_abs_logit"] <= REFERENCE_NOISE_FACTOR * good["reference_noise"]
    bundle = tmp_path / "b"
    shutil.copytree(src, bundle)
    _scale_rope_base(bundle / "model.gguf", 0.999)
    write_manifest(bundle, read_manifest(bundle))
    report = verify_bundle(bundle, progress=lambda _m: None)
    assert not report.passed
    # the metadata check names the changed key, and the engine's logits give the damage away on their own
    assert [f for f in report.metrics["tensor_check"]["failures"]] == [
        f"metadata check: model.gguf holds bitnet.rope.freq_base = {500000.0 * 0.999:.1f}, the checkpoint gives 500000.0"]
    assert any(f.startswith("max |Δlogit|") and "float32 reference's own error" in f for f in report.failures), \
        report.failures


def _scale_rope_base(path: Path, factor: float) -> None:
    import gguf

    reader = gguf.GGUFReader(str(path), "r+")
    field = reader.fields["bitnet.rope.freq_base"]
    field.parts[field.data[0]][0] *= factor
    reader.data.flush()
