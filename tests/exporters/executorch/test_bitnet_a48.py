"""BitNet a4.8 -> ExecuTorch: each projection's input goes through the reference's quantise/dequantise
(``ActQuant``) before XNNPACK's matmul.

The eager program (before lowering: the same modules torch.export traces) must give the a4.8 reference's logits;
the lowered fp32 export must pass verification against it (slow).  Measured on the built-in (2,048 held-out
tokens vs the a4.8 reference): fp32 top-1 1.0000, mean KL 3.6e-7, max |dlogit| 5.4e-2.
"""

from __future__ import annotations

import pytest

pytest.importorskip("executorch")

from edgekit.builtin import ROOT as BUILTIN  # noqa: E402

SOURCE = BUILTIN / "bitnet-tiny"


def test_eager_program_is_the_a48_reference():
    import torch

    from edgekit.exporters.executorch import bitnet as B
    from edgekit.families.bitnet.reference import BitNetReference
    from edgekit.families.bitnet.weights import load

    w = load(SOURCE)
    ref = BitNetReference(w, activations="a4.8").eval()
    a8 = BitNetReference(w, activations="a8").eval()
    model = B.BitNet(w.config, 64, ref.inv_freq.clone())
    B.load_weights(model, w)
    B.set_activations(model, ref)
    modes = {(m.mode, m.topk) for m in model.modules() if isinstance(m, B.ActQuant)}
    assert modes == {("a4", None), ("a8", 0.5), ("a8", None)}
    tokens = torch.tensor([[1, 50, 300, 7, 1200, 33, 9, 4000, 12, 77]])
    with torch.no_grad():
        got = model.eval()(tokens, torch.tensor([0]))[0]
        want = ref(tokens).logits[0, -1]
        other = a8(tokens).logits[0, -1]
    assert (got - want).abs().max() < 1e-3
    assert (other - want).abs().max() > 1e-2  # the modes differ measurably: the check can fail


@pytest.mark.slow
def test_fp32_a48_export_verifies(tmp_path):
    from edgekit.bundle import read_manifest
    from edgekit.export import export, make_plan

    root = tmp_path / "b"
    export(make_plan(str(SOURCE), "executorch", "fp32", options={"bitnet_activations": "a4.8"}), root,
           progress=lambda _m: None)
    m = read_manifest(root)
    v = m["verification"]["metrics"]
    assert m["verification"]["passed"] and v["top1"] >= 0.999 and v["mean_kl"] <= 1e-5, v
    assert m["artifact"]["activations"].startswith("a4.8")
