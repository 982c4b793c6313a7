"""HRM -> ExecuTorch (XNNPACK): the same step program as TRM's with HRM's own H network.

fp32 on the official-format HRM fixture: the export's verification passes, one XNNPACK delegate, and ``solve``
reproduces the official code's logits.  There is no trained HRM, so 8da8w / 8da4w (``slow``) export the
random-weight fixture without verification and measure the identical-answer rate against the float reference
(recorded in the manifest and printed); the recipe's quantised thresholds are TRM's, measured on the trained TRM.
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
    LOCAL, OFFICIAL_SEQ_LEN, TOL, VARIANTS, answer_rate, check_official_outputs, export_bundle, official,
)

FAMILY = Family.HRM
ET = recipe(FAMILY, Format.EXECUTORCH)
QUANTS = quants(FAMILY, Format.EXECUTORCH)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return {"root": tmp_path_factory.mktemp(f"et-{FAMILY.value}")}


def check_single_delegate(bundle) -> None:
    art = read_manifest(bundle)["artifact"]
    assert art["delegated_partitions"] == 1, art
    assert set(art["non_delegated_ops"]) <= {"aten.embedding.default"}, art["non_delegated_ops"]


def _cases() -> list:
    # every case slow (fp32 lowers a whole program, ~85 s alone): HRM's ExecuTorch export is TRM's code
    # (exporters/executorch/hrm.py), whose fp32 parity stays in the default run (test_trm.py)
    return [pytest.param(q, marks=pytest.mark.slow) for q in QUANTS]


@pytest.mark.parametrize("quant", _cases())
def test_parity(cache: dict, quant: str) -> None:
    fixture = official(FAMILY)
    if quant == "fp32":
        t = ET.thresholds[quant]
        bundle = export_bundle(cache, fixture, "executorch", quant, seq_len=OFFICIAL_SEQ_LEN)
        v = read_manifest(bundle)["verification"]
        assert_three_parts(v, t)  # tensor check, fidelity vs the file's weights, cost reported
        check_single_delegate(bundle)
        check_official_outputs(bundle, fixture)
        return
    bundle = export_bundle(cache, fixture, "executorch", quant, verify=False, seq_len=OFFICIAL_SEQ_LEN)
    check_single_delegate(bundle)
    m = answer_rate(bundle, fixture)
    print(f"HRM executorch {quant}: identical answers {m['answer_match']:.4f}, cells {m['cell_match']:.4f}, "
          f"max |Δlogit| {m['max_abs_logit']:.3e} over {m['puzzles']} puzzles x {m['steps']} steps")
    assert m["puzzles"] > 0 and 0.0 <= m["answer_match"] <= 1.0 and np.isfinite(m["max_abs_logit"])


@pytest.mark.parametrize("name", ["official", *VARIANTS[FAMILY]])
def test_step_module_matches_reference(name: str) -> None:
    """The XNNPACK-friendly module (separate H network), in eager PyTorch, against the reference."""
    import torch

    from edgekit.checkpoint import open_checkpoint
    from edgekit.exporters.executorch.trm import build
    from edgekit.families.trm import step
    from edgekit.reference import load_reference

    path = official(FAMILY) if name == "official" else LOCAL / name
    ref = load_reference(open_checkpoint(str(path)), None)
    assert ref.separate_h_level
    length = step.seq_len(ref.config, OFFICIAL_SEQ_LEN if ref.config.seq_len is None else None)
    module = build(ref, length)
    assert module.H_level is not None
    x = torch.from_numpy(np.load(path / "inputs.npy")).long()
    ids = torch.from_numpy(np.load(path / "puzzle_identifiers.npy")).long()
    a = b = ref.initial_state(x.shape[0], length)
    worst = 0.0
    with torch.no_grad():
        for _ in range(ref.config.halt_max_steps):
            ra, rb = ref(*a, x, ids), module(*b, x, ids)
            worst = max(worst, *(float((p - q).abs().max()) for p, q in zip(ra, rb)))
            a, b = ra[:2], rb[:2]
    assert worst <= TOL


@pytest.mark.slow
@pytest.mark.parametrize("name", VARIANTS[FAMILY])
def test_variant_fp32(cache: dict, name: str) -> None:
    fixture = LOCAL / name
    bundle = export_bundle(cache, fixture, "executorch", "fp32")
    check_single_delegate(bundle)
    check_official_outputs(bundle, fixture)
