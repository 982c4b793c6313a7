"""Mixed precision under a byte budget (edgekit/mixed.py, exporters/gguf/mixed.py): budget parsing and refusals,
the selection, the scan's simulation against what llama.cpp writes, and parity of GGUF 4-bit exports plain,
calibrated and calibrated + mixed."""

import numpy as np
import pytest

from edgekit import mixed
from edgekit.errors import UnsupportedError
from edgekit.export import make_plan

SOURCE, ADAPTER = "builtin:lfm2-tiny", "builtin:lfm2-tiny-lora"


def test_budget_parsing():
    assert mixed.parse_budget("0.57").bytes_per_weight == 0.57
    assert mixed.parse_budget("3.9MB").total_mb == 3.9
    assert mixed.parse_budget("0.5").bytes_for(1000) == 500
    assert mixed.parse_budget("2MB").bytes_for(1000) == 2e6
    for bad in ("", "abc", "-1", "0", "1.2GB"):
        with pytest.raises(mixed.BudgetError, match="bytes per weight"):
            mixed.parse_budget(bad)
    with pytest.raises(mixed.BudgetError, match="write 40.0MB"):
        mixed.parse_budget("40")


def test_selection_respects_the_budget_and_prefers_cost_per_byte():
    cands = [
        mixed.Candidate("a", 100, {"lo": 50, "hi": 100}),
        mixed.Candidate("b", 100, {"lo": 50, "hi": 100}),
        mixed.Candidate("c", 100, {"lo": 50, "mid": 70, "hi": 100}),
    ]
    costs = {"a": {"lo": 1.0, "hi": 0.1}, "b": {"lo": 0.2, "hi": 0.1}, "c": {"lo": 1.0, "mid": 0.2, "hi": 0.19}}
    assert mixed.select(cands, costs, 150) == {"a": "lo", "b": "lo", "c": "lo"}
    # 20 extra bytes: c -> mid saves 0.04/byte, the best step
    assert mixed.select(cands, costs, 170) == {"a": "lo", "b": "lo", "c": "mid"}
    # then a -> hi (0.018/byte) before b (0.002/byte); c's last step (0.0003/byte) last
    assert mixed.select(cands, costs, 220) == {"a": "hi", "b": "lo", "c": "mid"}
    assert mixed.select(cands, costs, 1e9) == {"a": "hi", "b": "hi", "c": "hi"}
    with pytest.raises(mixed.BudgetError, match=r"needs at least 0\.5000 \(0\.000 MB\)"):
        mixed.select(cands, costs, 149)


def test_mixed_options_at_plan_time():
    opts = make_plan(SOURCE, "gguf", "q4_k_m", options={"byte_budget": "0.6"}).plan.options
    assert opts.mixes(make_plan(SOURCE, "gguf", "q4_k_m").plan.quant) and opts.budget().bytes_per_weight == 0.6
    off = make_plan(SOURCE, "gguf", "q4_k_m", options={"mixed_precision": False})
    assert not off.plan.options.mixes(off.plan.quant)
    for quant, by_default in (("q4_k_m", True), ("q4_0", True), ("q5_k_m", False)):  # MIXED_DEFAULT
        default = make_plan(SOURCE, "gguf", quant)
        assert default.plan.options.mixes(default.plan.quant) == by_default, quant
    plain = make_plan(SOURCE, "gguf", "q4_k_m", options={"no_calibration": True})  # plain round-to-nearest
    assert not plain.plan.options.mixes(plain.plan.quant)
    on = make_plan(SOURCE, "gguf", "q4_0", options={"mixed_precision": True})
    assert on.plan.options.mixes(on.plan.quant)
    with pytest.raises(UnsupportedError, match="mixed precision applies to q4_0, q4_k_m, q5_k_m only, not q8_0"):
        make_plan(SOURCE, "gguf", "q8_0", options={"byte_budget": "0.6"})
    with pytest.raises(UnsupportedError, match="bytes per weight"):
        make_plan(SOURCE, "gguf", "q4_0", options={"byte_budget": "lots"})
    with pytest.raises(UnsupportedError, match="--byte-budget needs mixed precision"):
        make_plan(SOURCE, "gguf", "q4_0", options={"byte_budget": "0.6", "mixed_precision": False})
    for scan in ({"byte_budget": "0.7"}, {"mixed_precision": True}):  # the scan would read the calibration text
        with pytest.raises(UnsupportedError, match="gguf --no-calibration: the mixed-precision scan reads"):
            make_plan(SOURCE, "gguf", "q4_k_m", options={**scan, "no_calibration": True})


def test_budget_below_the_quant_is_refused_with_its_minimum(tmp_path):
    from edgekit.export import export

    with pytest.raises(mixed.BudgetError, match=r"needs at least 0\.56\d\d"):  # Q4_0: 18 bytes per 32 weights
        export(make_plan(SOURCE, "gguf", "q4_0", options={"byte_budget": "0.3"}),
               tmp_path / "b", verify=False, progress=lambda _m: None)
    assert not (tmp_path / "b").exists()


def test_ggml_fake_quant_is_what_llama_cpp_writes(tmp_path):
    """The scan's simulation (ggml_quantize_chunk + gguf-py dequantize) reproduces the file bit for bit, for
    every type the mixed assignment may pick, with and without an importance matrix."""
    import gguf

    from edgekit.export import export
    from edgekit.exporters.gguf import mixed as gmixed
    from edgekit.exporters.gguf import writer

    export(make_plan(SOURCE, "gguf", "f32"), tmp_path / "f32", verify=False, progress=lambda _m: None)
    src = tmp_path / "f32" / "model.gguf"
    floats = {t.name: np.array(t.data, dtype=np.float32) for t in gguf.GGUFReader(str(src)).tensors}
    types = {"blk.0.ffn_down.weight": "Q4_K", "blk.0.ffn_up.weight": "Q5_K", "blk.2.attn_q.weight": "Q6_K",
             "blk.1.shortconv.in_proj.weight": "Q4_0", "blk.3.ffn_gate.weight": "Q5_1", "token_embd.weight": "Q8_0"}
    rng = np.random.default_rng(0)
    imat = {n: rng.uniform(0.1, 4.0, floats[n].shape[-1]).astype(np.float32) for n in types}
    for imatrix in (None, imat):
        dst = tmp_path / "q.gguf"
        writer.requantize(src, dst, gguf.LlamaFileType.MOSTLY_Q4_K_M, imatrix=imatrix, types=types)
        stored = {t.name: t for t in gguf.GGUFReader(str(dst)).tensors}
        for name, t in types.items():
            assert stored[name].tensor_type.name == t
            got = gguf.quants.dequantize(stored[name].data, stored[name].tensor_type).reshape(floats[name].shape)
            want = gmixed.fake_quant(floats[name], t, imat[name] if imatrix else None)
            np.testing.assert_array_equal(got, want, err_msg=f"{name} {t} imatrix={imatrix is not None}")


@pytest.mark.slow
@pytest.mark.parametrize("quant", ["q4_k_m", "q4_0"])
@pytest.mark.parametrize("scheme", ["plain", "calibrated", "mixed"])
def test_gguf_4bit_parity_plain_calibrated_mixed(tmp_path, quant, scheme):
    """Every 4-bit GGUF scheme passes the three-part verification at the recipe's bars; the mixed one records
    each matrix's type, stays within the default's bytes per weight and its file holds those types."""
    import gguf

    from edgekit.bundle import read_manifest
    from edgekit.export import export
    from edgekit.families import Family
    from edgekit.plan import Format
    from parity import assert_three_parts, recipe

    options = {"plain": {"no_calibration": True, "mixed_precision": False}, "calibrated": {"mixed_precision": False},
               "mixed": {}}[scheme]  # mixed precision is the default for these two quants
    out = tmp_path / "b"
    export(make_plan(SOURCE, "gguf", quant, ADAPTER, options), out, progress=lambda _m: None)
    m = read_manifest(out)
    assert_three_parts(m["verification"], recipe(Family.LFM2, Format.GGUF).thresholds[quant])
    mp = m["artifact"]["mixed_precision"]
    assert (m["artifact"]["calibration"] is None) == (scheme == "plain")
    if scheme != "mixed":
        assert mp is None
        return
    assert mp["bytes_per_weight"] <= mp["default_bytes_per_weight"] and mp["budget"] == "default"
    stored = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(out / "model.gguf")).tensors}
    assert mp["tensor_types"] and all(stored[n] == t for n, t in mp["tensor_types"].items())
    assert set(mp["scan_kl"]) == set(mp["tensor_types"]) and mp["scan"] == "estimate"
    if quant == "q4_k_m":  # issue 15's goal for a default 4-bit export (measured 0.9370 / 6.9e-3)
        cost = m["verification"]["metrics"]["cost"]
        assert cost["top1"] >= 0.92 and cost["mean_kl"] <= 9e-3, cost


def test_estimated_scan_carries_the_measured_cost_by_the_weighted_error():
    """The estimate measures one type per linear weight and scales it to the others by sum_j E[x_j^2] sum_i dW_ij^2
    (second order); on a small model with rounding to grids of 1x, 2x, 4x the step it ranks and sizes the types
    like the exact scan (within 30 %), and an embedding table (not a linear layer) is measured at every type."""
    import torch

    torch.manual_seed(0)

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(64, 32)
            self.up = torch.nn.Linear(32, 64, bias=False)
            self.down = torch.nn.Linear(64, 32, bias=False)
            self.head = torch.nn.Linear(32, 64, bias=False)

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            h = self.embed(input_ids)
            return self.head(h + self.down(torch.relu(self.up(h)))) * 3

    model = Tiny().eval()
    steps = {"q2": 0.08, "q3": 0.04, "q4": 0.02}  # cheapest (coarsest) first

    def fake(_name: str, w: np.ndarray, t: str) -> np.ndarray:
        return np.round(w / steps[t]) * steps[t]

    windows = [list(np.random.default_rng(i).integers(0, 64, 64)) for i in range(4)]
    cands = [mixed.Candidate(n, 1, {"q2": 1, "q3": 2, "q4": 3}) for n in ("embed.weight", "up.weight", "down.weight")]
    exact = mixed.scan(model, windows, cands, fake, method="exact")
    calls: list[str] = []
    est = mixed.scan(model, windows, cands, lambda n, w, t: calls.append(n) or fake(n, w, t), method="estimate")
    assert est["embed.weight"] == exact["embed.weight"]  # measured, not estimated
    for name in ("up.weight", "down.weight"):
        assert est[name]["q2"] == pytest.approx(exact[name]["q2"])  # the measured one
        for t in ("q3", "q4"):
            assert est[name][t] == pytest.approx(exact[name][t], rel=0.3), (name, t, est[name], exact[name])
        assert est[name]["q2"] > est[name]["q3"] > est[name]["q4"] > 0
    with pytest.raises(ValueError, match="'estimate' or 'exact'"):
        mixed.scan(model, windows, cands, fake, method="fast")
