"""TRM -> ExecuTorch (XNNPACK), one case per quant of the recipe, run by the real ExecuTorch runtime.

fp32 on the official-format fixture: the export's own verification (every step, 64 puzzles) must pass, the step
must be one XNNPACK delegate with only the embedding gathers outside, and ``solve`` must reproduce the official
code's logits.  8da8w / 8da4w on the trained built-in TRM (``slow``; skip until it exists).  The rewritten step module
(``exporters/executorch/trm_graph.py``) is checked against the reference on every fixture in eager PyTorch (fast);
exporting the variant fixtures is ``slow``.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("executorch")

from edgekit.bundle import read_manifest  # noqa: E402
from edgekit.families import Family  # noqa: E402
from edgekit.plan import Format  # noqa: E402
from parity import quants, recipe  # noqa: E402
from solver_cases import (  # noqa: E402
    assert_three_parts,
    CHAOTIC, LOCAL, OFFICIAL_SEQ_LEN, TOL, VARIANTS, builtin_trm, check_official_outputs, export_bundle, official,
)

FAMILY = Family.TRM
ET = recipe(FAMILY, Format.EXECUTORCH)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return {"root": tmp_path_factory.mktemp(f"et-{FAMILY.value}")}


def check_single_delegate(bundle) -> None:
    art = read_manifest(bundle)["artifact"]
    assert art["delegated_partitions"] == 1, art
    assert set(art["non_delegated_ops"]) <= {"aten.embedding.default"}, art["non_delegated_ops"]


def _cases() -> list:
    # quantised exports of the built-in model take ~2.5 min each on 2 shared cores (lowering dominates): slow
    return [q if q == "fp32" else pytest.param(q, marks=pytest.mark.slow) for q in quants(FAMILY, Format.EXECUTORCH)]


@pytest.mark.parametrize("quant", _cases())
def test_parity(cache: dict, quant: str) -> None:
    t = ET.thresholds[quant]
    if quant == "fp32":
        fixture = official(FAMILY)
        bundle = export_bundle(cache, fixture, "executorch", quant, seq_len=OFFICIAL_SEQ_LEN)
    else:
        bundle = export_bundle(cache, builtin_trm(), "executorch", quant)
    v = read_manifest(bundle)["verification"]
    assert_three_parts(v, t)  # tensor check, fidelity vs the file's weights (answers, max |Δlogit|), cost reported
    check_single_delegate(bundle)
    if quant == "fp32":
        check_official_outputs(bundle, fixture)


def _fixtures() -> list[str]:
    return ["official", *VARIANTS[FAMILY]]


@pytest.mark.parametrize("name", _fixtures())
def test_step_module_matches_reference(name: str) -> None:
    """The XNNPACK-friendly module, in eager PyTorch, against the reference: every output of every step."""
    import torch

    from edgekit.checkpoint import open_checkpoint
    from edgekit.exporters.executorch.trm import build
    from edgekit.families.trm import step
    from edgekit.reference import load_reference

    path = official(FAMILY) if name == "official" else LOCAL / name
    ref = load_reference(open_checkpoint(str(path)), None)
    assert ref.separate_h_level == (FAMILY is Family.HRM)
    length = step.seq_len(ref.config, OFFICIAL_SEQ_LEN if ref.config.seq_len is None else None)
    module = build(ref, length)
    x = torch.from_numpy(np.load(path / "inputs.npy")).long()
    ids = torch.from_numpy(np.load(path / "puzzle_identifiers.npy")).long()
    a = b = ref.initial_state(x.shape[0], length)
    worst = []
    with torch.no_grad():
        for _ in range(ref.config.halt_max_steps):
            ra, rb = ref(*a, x, ids), module(*b, x, ids)
            worst.append(max(float((p - q).abs().max()) for p, q in zip(ra, rb)))
            a, b = ra[:2], rb[:2]
    assert torch.equal(ra[2].argmax(-1), rb[2].argmax(-1))
    assert (worst[0] if name in CHAOTIC else max(worst)) <= TOL, worst


@pytest.mark.slow
@pytest.mark.parametrize("name", VARIANTS[FAMILY])
def test_variant_fp32(cache: dict, name: str) -> None:
    fixture = LOCAL / name
    bundle = export_bundle(cache, fixture, "executorch", "fp32", verify=name not in CHAOTIC)
    check_single_delegate(bundle)
    check_official_outputs(bundle, fixture, chaotic=name in CHAOTIC)
