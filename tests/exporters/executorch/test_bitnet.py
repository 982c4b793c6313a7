"""BitNet -> ExecuTorch: the built-in trained bitnet-tiny exported as fp32 and 8da4w, run by ExecuTorch's own runtime
and compared with the reference, teacher-forced.

fp32 must reproduce the float-activation reference (``activations="float"``: the same ternary weights, float
activations) almost exactly; 8da4w keeps the ternary weights exact (int4 per channel) and replaces BitNet's
per-token absmax int8 activations by XNNPACK's per-token asymmetric int8, measured against the W1.58A8
reference.  The job is built by hand (plan, checkpoint, reference with ``.weights``), as the recipe row does.
Measured on the full held-out run (2048 tokens, 4 windows of 512): fp32 vs float max |dlogit| 8.6e-6, KL 2e-13;
fp32 vs a8 top-1 0.9941, KL 1.2e-5; 8da4w vs a8 top-1 0.9937, KL 3.9e-5, max |dlogit| 0.17.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("executorch")

from edgekit.builtin import ROOT as BUILTIN  # noqa: E402
from edgekit.errors import UnsupportedError  # noqa: E402
from edgekit.families import Family  # noqa: E402
from edgekit.kinds.language.parity import compare_logits, heldout_text  # noqa: E402
from edgekit.plan import Format  # noqa: E402
from parity import assert_three_parts, quants, recipe  # noqa: E402

SOURCE = BUILTIN / "bitnet-tiny"
CTX = 256
TOKENS = 255  # one window, stepped one token at a time through the program (the runtime's scoring path)
QUANTS = tuple(quants(Family.BITNET, Format.EXECUTORCH))  # at import: test_recipes' coverage scan reads it
pytestmark = pytest.mark.skipif(not (SOURCE / "model.safetensors").is_file(), reason="built-in bitnet-tiny missing")


def _job(reference, quant: str, **options):
    from edgekit.checkpoint import open_checkpoint
    from edgekit.exporters import ExportJob
    from edgekit.exporters.executorch import QUANTS, LanguageOptions
    from edgekit.families import Family
    from edgekit.plan import ExportPlan, Format, QuantSpec, WeightKind

    # 8da4w per channel: the BitNet row's spec (ternary rows are exact int4 rows only with one scale per row)
    spec = QUANTS["fp32"] if quant == "fp32" else QuantSpec("8da4w", WeightKind.INT, 4, None, activation_bits=8)
    ckpt = open_checkpoint(str(SOURCE))
    opts = LanguageOptions.parse({"max_context": CTX, **options}, spec)
    plan = ExportPlan(source=ckpt.path, family=Family.BITNET, format=Format.EXECUTORCH, quant=spec, options=opts)
    return ExportJob(plan=plan, checkpoint=ckpt, reference=reference, weights={}, progress=lambda _m: None)


@pytest.fixture(scope="module")
def weights():
    from edgekit.families.bitnet.weights import load

    return load(SOURCE)


@pytest.fixture(scope="module")
def references(weights):
    from edgekit.families.bitnet.reference import BitNetReference

    refs = {a: BitNetReference(weights, activations=a).eval() for a in ("a8", "float")}
    refs["a8"].weights = weights  # what build_for_export attaches
    return refs


@pytest.fixture(scope="module")
def tokens():
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(SOURCE / "tokenizer.json")).encode(heldout_text(), add_special_tokens=False).ids
    return [1] + ids[: TOKENS - 1]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Every quant of the recipe row, exported through the recipe (make_plan + export: verified against the A8
    reference, which raises when a threshold is missed)."""
    from edgekit.bundle import read_manifest
    from edgekit.export import export, make_plan

    out = {}
    for quant in QUANTS:
        d = tmp_path_factory.mktemp(f"bitnet-et-{quant}") / "b"
        export(make_plan(SOURCE, "executorch", quant, options={"max_context": CTX}), d, progress=lambda _m: None)
        out[quant] = (d, read_manifest(d)["artifact"])
    return out


def test_recipe_parity(exports):
    from edgekit.bundle import read_manifest

    for quant, (root, _art) in exports.items():
        v = read_manifest(root)["verification"]
        t = recipe(Family.BITNET, Format.EXECUTORCH).thresholds[quant]
        assert v["passed"] and t.fidelity_top1(v["metrics"]) >= t.min_top1 and v["metrics"]["mean_kl"] <= t.max_mean_kl, v
        assert_three_parts(v, t)  # tensor check (ternary exact), fidelity vs the file's weights, cost reported


def _run(root: Path, art: dict, tokens: list[int]) -> np.ndarray:
    import torch
    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401
    import executorch.kernels.quantized  # noqa: F401
    from executorch.runtime import Runtime

    data = root / art["data_files"][0] if art["data_files"] else None
    program = Runtime.get().load_program(root / art["file"], data_path=data)
    assert program.load_method("get_max_context_len").execute([])[0] == CTX
    forward = program.load_method("forward")
    rows = [forward.execute([torch.tensor([[t]]), torch.tensor([i])])[0][0].numpy().copy() for i, t in enumerate(tokens)]
    # prefill (one call, dynamic length) ends on the same row as stepping
    last = forward.execute([torch.tensor([tokens]), torch.tensor([0])])[0][0].numpy()
    assert np.abs(last - rows[-1]).max() < 0.05
    return np.stack(rows)


@pytest.fixture(scope="module")
def engine_logits(exports, tokens):
    return {q: _run(root, art, tokens) for q, (root, art) in exports.items()}


@pytest.fixture(scope="module")
def reference_logits(references, tokens):
    from edgekit.families.bitnet.reference import logits

    return {a: logits(m, tokens) for a, m in references.items()}


def test_fp32_is_the_float_activation_reference(engine_logits, reference_logits):
    m = compare_logits(reference_logits["float"], engine_logits["fp32"])
    assert m["max_abs"] <= 1e-4 and m["agree"] == m["n"], m
    assert m["kl_sum"] / m["n"] <= 1e-9


def test_8da4w_tracks_w158a8(engine_logits, reference_logits):
    m = compare_logits(reference_logits["a8"], engine_logits["8da4w"])
    assert m["agree"] / m["n"] >= 0.98 and m["kl_sum"] / m["n"] <= 1e-4 and m["max_abs"] <= 0.5, m


def test_8da4w_ternary_weights_exact_and_delegated(exports):
    _root, art = exports["8da4w"]
    assert art["ternary_weight_max_error"] == 0.0
    assert art["shared_embedding"] and art["data_files"] == ["model.ptd"]
    # every linear runs in XNNPACK: nothing but SDPA, the cache update, the gather and shape ops outside
    assert not any("linear" in op or "mm" in op for op in art["non_delegated_ops"]), art["non_delegated_ops"]


def test_8da4w_smaller_than_fp32(exports):
    size = {q: sum(p.stat().st_size for p in root.iterdir()) for q, (root, _a) in exports.items()}
    assert size["8da4w"] * 3 < size["fp32"], size


def test_grouped_int4_refused(references, tmp_path):
    from edgekit.exporters.executorch import bitnet

    job = _job(references["a8"], "8da4w", group_size=32)
    with pytest.raises(UnsupportedError, match="per output channel"):
        bitnet.export(job, tmp_path)
