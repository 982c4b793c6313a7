"""runtimes/solver.py and `edgekit solve` / `edgekit profile` on a solver bundle (the official-format TRM fixture
exported to ONNX fp32): halting, batching, bad input, and GGUF refused for TRM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgekit.errors import UnsupportedError
from shared_fixtures import SHARED

FIXTURE = SHARED / "trm-official" / "trm_att"
pytestmark = pytest.mark.skipif(not FIXTURE.is_dir(), reason="the official TRM fixture is not on this machine")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    from edgekit.export import export, make_plan

    out = tmp_path_factory.mktemp("solver") / "trm-onnx"
    return export(make_plan(FIXTURE, "onnx", "fp32", options={"seq_len": 81}), out, progress=lambda _m: None)


@pytest.fixture(scope="module")
def session(bundle):
    import edgekit

    s = edgekit.load(bundle)
    yield s
    s.close()


def test_no_halt_reproduces_the_official_outputs(session):
    ref = np.load(FIXTURE / "outputs.npz")
    sol = session.solve(np.load(FIXTURE / "inputs.npy"), np.load(FIXTURE / "puzzle_identifiers.npy"), halt=False)
    assert (sol.steps == 4).all()
    assert np.abs(sol.logits - ref["logits"]).max() < 1e-4
    assert (sol.answers == ref["preds"]).all()


def test_batch_equals_rows_and_halting_respects_max_steps(session):
    x = np.load(FIXTURE / "inputs.npy")
    whole = session.solve(x, max_steps=3)
    for k in range(len(x)):
        one = session.solve(x[k], max_steps=3)
        assert one.steps[0] == whole.steps[k] and (one.answers[0] == whole.answers[k]).all()
    assert whole.steps.max() <= 3 and len(whole.step_seconds) == whole.steps.max()


@pytest.mark.parametrize(
    "inputs, match",
    [
        (np.ones((2, 80), np.int64), r"\[batch, 81\]"),
        (np.full((1, 81), 11), r"token ids must lie in \[0, 10\]"),
        (np.ones((1, 81), np.float32), "integer token ids"),
    ],
)
def test_bad_puzzles_are_refused(session, inputs, match):
    with pytest.raises(UnsupportedError, match=match):
        session.solve(inputs)


def test_gguf_is_refused_for_trm_naming_what_works():
    from edgekit.export import make_plan

    with pytest.raises(UnsupportedError, match=r"trm cannot be exported to gguf \(llama.cpp has no TRM graph.*executorch"):
        make_plan(FIXTURE, "gguf")


def test_seq_len_must_be_known():
    from edgekit.export import make_plan

    with pytest.raises(UnsupportedError, match="pass --seq-len"):  # at plan time, before any export work
        make_plan(FIXTURE, "onnx", "fp32")  # no dataset.json beside the fixture, no --seq-len


def test_cli_solve_and_profile(bundle, tmp_path, capsys):
    from edgekit.cli import main

    (tmp_path / "p.txt").write_text("53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79\n")
    assert main(["solve", str(bundle), "--input", str(tmp_path / "p.txt"), "-o", str(tmp_path / "a.npy"),
                 "--show", "1"]) == 0
    assert np.load(tmp_path / "a.npy").shape == (1, 81)
    assert "5 3 . | . 7 ." in capsys.readouterr().out
    assert main(["solve", str(bundle), "--input", str(tmp_path / "missing.npy")]) == 2
    (tmp_path / "bad.txt").write_text("55" + "." * 79 + "\n")  # two 5s in row 1: no Sudoku can hold them
    assert main(["solve", str(bundle), "--input", str(tmp_path / "bad.txt")]) == 2
    assert "puzzle 0 is not a valid Sudoku: 5 appears twice in row 1" in capsys.readouterr().err
    assert main(["profile", str(bundle), "-r", "1", "--no-roofline", "-q"]) == 0
    out = capsys.readouterr().out
    assert "step1" in out and "solve16" in out and "puzzle-steps/s" in out
