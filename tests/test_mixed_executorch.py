"""Mixed precision for ExecuTorch 8da4w (exporters/executorch/mixed.py, edgekit/mixed.py): the candidate types and
their stored bytes, the scan's torchao simulation, the override map a plan becomes, the read-back of a mixed
file, plan-time refusals, and parity of a mixed LFM2 export."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("executorch")

from edgekit import mixed as mixed_mod  # noqa: E402
from edgekit.errors import UnsupportedError  # noqa: E402
from edgekit.export import make_plan  # noqa: E402
from edgekit.exporters.executorch import mixed  # noqa: E402

SOURCE, ADAPTER = "builtin:lfm2-tiny", "builtin:lfm2-tiny-lora"


def test_candidate_types_and_their_stored_bytes():
    # packed int4 (half a byte a weight) + one bf16 scale per group; int8 + one float32 scale per output channel
    assert mixed.nbytes((256, 512), "int4_g32") == 256 * 512 // 2 + 256 * 16 * 2
    assert mixed.nbytes((256, 512), "int4_g256") == 256 * 512 // 2 + 256 * 2 * 2
    assert mixed.nbytes((256, 512), "int8_channel") == 256 * 512 + 256 * 4
    assert mixed.nbytes((256, 512), "int4_channel") == 256 * 512 // 2 + 256 * 4
    assert mixed.nbytes((256, 256), "int4_g32") / (256 * 256) == 0.5625  # the default's bytes per weight
    cands, defaults = mixed.candidates({"a": (64, 256), "b": (64, 96), "c": (64, 48)}, "int4_g32")
    sizes = {c.name: c.sizes for c in cands}
    assert list(sizes["a"]) == ["int4_g256", "int4_g128", "int4_g64", "int4_g32", "int8_channel"]  # cheapest first
    assert list(sizes["b"]) == ["int4_g32", "int8_channel"]  # only group 32 divides 96
    assert "c" not in sizes and defaults == {"a": "int4_g32", "b": "int4_g32"}  # 48: float32 in the export
    per_channel, _ = mixed.candidates({"a": (64, 256)}, "int4_channel")  # --group-size 0's default joins the list
    assert "int4_channel" in per_channel[0].sizes
    assert mixed.parse_type("int4_g64") == (4, 64) and mixed.parse_type("int8_channel") == (8, None)
    with pytest.raises(ValueError, match="not an ExecuTorch mixed-precision type"):
        mixed.parse_type("q4_0")


def test_fake_quant_is_torchaos_weight_at_each_type():
    """The scan's simulation is the tensor check's read-back (torchao's config on one nn.Linear): int4 codes take
    at most 16 levels per group, and the error shrinks as the groups do."""
    from edgekit.exporters.executorch import readback

    w = np.random.default_rng(0).standard_normal((32, 256)).astype(np.float32)
    err = {}
    for t in mixed.CANDIDATES:
        q = mixed.fake_quant(w, t, "affine")
        assert q.shape == w.shape and q.dtype == np.float32
        np.testing.assert_array_equal(q, readback.linear("w", "w", w, mixed.linear_quant(t, "affine"), "w").values)
        err[t] = float(np.sqrt(np.mean((q - w) ** 2)))
        bits, group = mixed.parse_type(t)
        if bits == 4:
            assert max(len(np.unique(b)) for b in q.reshape(32, -1, group).reshape(-1, group)) <= 16
    assert err["int4_g256"] > err["int4_g128"] > err["int4_g64"] > err["int4_g32"] > 10 * err["int8_channel"]


def test_a_plan_becomes_quantize_linears_overrides_on_the_graph():
    """Checkpoint names -> graph modules; in_proj's three graph linears take its one type; everything else
    keeps the default; the read-back reads each linear at its own type."""
    from torch import nn

    from edgekit.exporters.executorch import lfm2, quant, readback

    per = {"model.layers.0.conv.in_proj.weight": mixed.linear_quant("int8_channel", "affine"),
           "model.layers.2.self_attn.q_proj.weight": mixed.linear_quant("int4_g128", "affine")}
    over = lfm2.graph_overrides(per)
    assert set(over) == {"layers.0.conv.B_proj.base", "layers.0.conv.C_proj.base", "layers.0.conv.x_proj.base",
                         "layers.2.self_attn.q_proj.base"}
    cfg = make_plan(SOURCE, "executorch", "8da4w").checkpoint.model_config.with_context(64)
    eager = lfm2.Lfm2(cfg).eval()
    quant.quantize_linears(eager, quant.LinearQuant(4, 32), over)
    blocks = {n: tuple(m.weight.block_size) for n, m in eager.named_modules()
              if isinstance(m, nn.Linear) and hasattr(m.weight, "block_size")}
    assert blocks["layers.0.conv.C_proj.base"] == (1, cfg.hidden_size)  # int8 per output channel
    assert str(eager.get_submodule("layers.0.conv.x_proj.base").weight.target_dtype) == "torch.int8"
    assert blocks["layers.2.self_attn.q_proj.base"] == (1, 128)
    assert blocks["layers.1.conv.B_proj.base"] == (1, 32) and blocks["layers.2.self_attn.k_proj.base"] == (1, 32)

    rng = np.random.default_rng(1)
    weights = {"model.layers.0.conv.in_proj.weight": rng.standard_normal((768, 256)).astype(np.float32),
               "model.layers.1.conv.in_proj.weight": rng.standard_normal((768, 256)).astype(np.float32),
               "model.embed_tokens.weight": rng.standard_normal((64, 256)).astype(np.float32)}
    prep = make_plan(SOURCE, "executorch", "8da4w")
    read = {t.name: t for t in readback.read(weights, prep.plan.options, prep.plan.quant, list(weights)[:2], per)}
    assert (read["model.layers.0.conv.in_proj.weight"].qtype, read["model.layers.0.conv.in_proj.weight"].block) == ("INT8", 0)
    assert (read["model.layers.1.conv.in_proj.weight"].qtype, read["model.layers.1.conv.in_proj.weight"].block) == ("INT4", 32)


def test_mixed_options_at_plan_time():
    from edgekit.families import Family
    from edgekit.plan import Format
    from edgekit.recipes import RECIPES

    on = make_plan(SOURCE, "executorch", "8da4w", options={"mixed_precision": True})
    assert on.plan.options.mixes(on.plan.quant) and on.plan.options.budget() is None
    budget = make_plan(SOURCE, "executorch", "8da4w", options={"byte_budget": "0.6"})
    assert budget.plan.options.mixes(budget.plan.quant) and budget.plan.options.budget().bytes_per_weight == 0.6
    default = make_plan(SOURCE, "executorch", "8da4w")
    assert default.plan.options.mixes(default.plan.quant)  # MIXED_DEFAULT
    for plain in ({"no_calibration": True}, {"mixed_precision": False}):  # round-to-nearest at --group-size
        prep = make_plan(SOURCE, "executorch", "8da4w", options=plain)
        assert not prep.plan.options.mixes(prep.plan.quant)
    with pytest.raises(UnsupportedError, match="--calibration is read by the mixed-precision scan and GPTQ only"):
        make_plan(SOURCE, "executorch", "8da4w", options={"calibration": __file__, "mixed_precision": False})
    for quant in ("8da8w", "fp32"):
        for opts in ({"mixed_precision": True}, {"byte_budget": "0.6"}):
            with pytest.raises(UnsupportedError, match=f"mixed precision applies to 8da4w only, not {quant}"):
                make_plan(SOURCE, "executorch", quant, options=opts)
    with pytest.raises(UnsupportedError, match="bytes per weight"):
        make_plan(SOURCE, "executorch", "8da4w", options={"byte_budget": "lots"})
    with pytest.raises(UnsupportedError, match="--byte-budget needs mixed precision"):
        make_plan(SOURCE, "executorch", "8da4w", options={"byte_budget": "0.6", "mixed_precision": False})
    with pytest.raises(UnsupportedError, match="the mixed-precision scan reads the calibration text"):
        make_plan(SOURCE, "executorch", "8da4w", options={"mixed_precision": True, "no_calibration": True})
    with pytest.raises(UnsupportedError, match="calibrated quants \\(8da4w\\) only, not 8da8w"):
        make_plan(SOURCE, "executorch", "8da8w", options={"no_calibration": True})
    # the flags are LFM2's: BitNet's ExecuTorch row (a subclass of the same options) offers and accepts none
    lfm2 = RECIPES.get(Family.LFM2, Format.EXECUTORCH)
    assert {"mixed_precision", "byte_budget", "calibration"} <= set(lfm2.options.flags(lfm2.quants))
    bitnet = RECIPES.get(Family.BITNET, Format.EXECUTORCH)
    assert not {"mixed_precision", "byte_budget", "calibration", "no_calibration"} & set(bitnet.options.flags(bitnet.quants))
    with pytest.raises(UnsupportedError, match="mixed precision applies to no quant"):
        make_plan("builtin:bitnet-tiny", "executorch", "8da4w", options={"mixed_precision": True})


def test_budget_below_the_cheapest_types_is_refused_with_its_minimum(tmp_path):
    from edgekit.export import export

    # every linear at int4 group 256: 0.5 + 2/256 bytes per weight
    with pytest.raises(mixed_mod.BudgetError, match=r"needs at least 0\.5078"):
        export(make_plan(SOURCE, "executorch", "8da4w", options={"byte_budget": "0.5", "max_context": 64}),
               tmp_path / "b", verify=False, progress=lambda _m: None)
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_mixed_8da4w_export_passes_verification(tmp_path):
    """A mixed 8da4w export (built-in + LoRA) passes the three-part verification at the recipe's bars, with its
    tensor check reading each linear at its own type; it records the assignment within the default's bytes."""
    from edgekit.bundle import read_manifest
    from edgekit.export import export
    from edgekit.families import Family
    from edgekit.plan import Format
    from parity import assert_three_parts, recipe

    out = tmp_path / "b"
    export(make_plan(SOURCE, "executorch", "8da4w", ADAPTER, {"max_context": 512}), out,  # mixed by default
           progress=lambda _m: None)
    m = read_manifest(out)
    assert_three_parts(m["verification"], recipe(Family.LFM2, Format.EXECUTORCH).thresholds["8da4w"])
    mp = m["artifact"]["mixed_precision"]
    assert mp["budget"] == "default" and mp["bytes_per_weight"] <= mp["default_bytes_per_weight"] == 0.5625
    assert len(mp["tensor_types"]) == 34 and set(mp["scan_kl"]) == set(mp["tensor_types"])
    assert set(mp["tensor_types"].values()) <= set(mixed.CANDIDATES) and len(set(mp["tensor_types"].values())) > 1
    assert mp["calibration_sha256"] == m["artifact"]["calibration"]["sha256"]
    worst = m["verification"]["metrics"]["tensor_check"]["worst"]
    assert any(k.startswith("INT8") for k in worst) and any(k.startswith("INT4") for k in worst), worst
