"""TRM -> ONNX, one case per quant of the recipe, run by real onnxruntime.

fp32 on the official-format fixture (the export's verification passes and ``solve`` reproduces the official
code's logits) and on the variant fixtures (MLP over the sequence; no puzzle embedding with learned positions);
int8 / int4 on the trained built-in TRM (skip until it exists).
"""

from __future__ import annotations

import pytest

pytest.importorskip("onnxruntime")

from edgekit.bundle import read_manifest  # noqa: E402
from edgekit.families import Family  # noqa: E402
from edgekit.plan import Format  # noqa: E402
from parity import quants, recipe  # noqa: E402
from solver_cases import (  # noqa: E402
    assert_three_parts,
    CHAOTIC, LOCAL, OFFICIAL_SEQ_LEN, VARIANTS, builtin_trm, check_official_outputs, export_bundle, official,
)

FAMILY = Family.TRM
ONNX = recipe(FAMILY, Format.ONNX)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return {"root": tmp_path_factory.mktemp(f"onnx-{FAMILY.value}")}


@pytest.mark.parametrize("quant", quants(FAMILY, Format.ONNX))
def test_parity(cache: dict, quant: str) -> None:
    t = ONNX.thresholds[quant]
    if quant == "fp32":
        fixture = official(FAMILY)
        bundle = export_bundle(cache, fixture, "onnx", quant, seq_len=OFFICIAL_SEQ_LEN)
    else:
        bundle = export_bundle(cache, builtin_trm(), "onnx", quant)
    v = read_manifest(bundle)["verification"]
    assert_three_parts(v, t)  # tensor check, fidelity vs the file's weights (answers, max |Δlogit|), cost reported
    if quant == "fp32":
        check_official_outputs(bundle, fixture)


# Without a puzzle embedding the TorchScript exporter drops the unused ``puzzle_identifiers`` input; the solver
# session feeds only the inputs the graph has.
@pytest.mark.parametrize("name", VARIANTS[FAMILY])
def test_variant_fp32(cache: dict, name: str) -> None:
    fixture = LOCAL / name
    bundle = export_bundle(cache, fixture, "onnx", "fp32", verify=name not in CHAOTIC)
    check_official_outputs(bundle, fixture, chaotic=name in CHAOTIC)
