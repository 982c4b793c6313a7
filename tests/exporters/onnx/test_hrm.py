"""HRM -> ONNX: the same step graph as TRM's with HRM's own H network, run by real onnxruntime.

fp32 on the official-format HRM fixture and the variant fixture (learned positions, a two-position prefix,
H_layers != L_layers).  There is no trained HRM: int8 / int4 export the random-weight official fixture without
verification and measure the identical-answer rate against the float reference (recorded in the manifest and
printed); the recipe's quantised thresholds are TRM's, measured on the trained TRM.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from edgekit.bundle import read_manifest  # noqa: E402
from edgekit.families import Family  # noqa: E402
from edgekit.plan import Format  # noqa: E402
from parity import quants, recipe  # noqa: E402
from solver_cases import (  # noqa: E402
    assert_three_parts,
    LOCAL, OFFICIAL_SEQ_LEN, VARIANTS, answer_rate, check_official_outputs, export_bundle, official,
)

FAMILY = Family.HRM
ONNX = recipe(FAMILY, Format.ONNX)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return {"root": tmp_path_factory.mktemp(f"onnx-{FAMILY.value}")}


@pytest.mark.parametrize("quant", quants(FAMILY, Format.ONNX))
def test_parity(cache: dict, quant: str) -> None:
    fixture = official(FAMILY)
    if quant == "fp32":
        t = ONNX.thresholds[quant]
        bundle = export_bundle(cache, fixture, "onnx", quant, seq_len=OFFICIAL_SEQ_LEN)
        v = read_manifest(bundle)["verification"]
        assert_three_parts(v, t)  # tensor check, fidelity vs the file's weights, cost reported
        check_official_outputs(bundle, fixture)
        return
    bundle = export_bundle(cache, fixture, "onnx", quant, verify=False, seq_len=OFFICIAL_SEQ_LEN)
    m = answer_rate(bundle, fixture)
    print(f"HRM onnx {quant}: identical answers {m['answer_match']:.4f}, cells {m['cell_match']:.4f}, "
          f"max |Δlogit| {m['max_abs_logit']:.3e} over {m['puzzles']} puzzles x {m['steps']} steps")
    assert m["puzzles"] > 0 and 0.0 <= m["answer_match"] <= 1.0 and np.isfinite(m["max_abs_logit"])


@pytest.mark.parametrize("name", VARIANTS[FAMILY])
def test_variant_fp32(cache: dict, name: str) -> None:
    fixture = LOCAL / name
    bundle = export_bundle(cache, fixture, "onnx", "fp32")
    check_official_outputs(bundle, fixture)
