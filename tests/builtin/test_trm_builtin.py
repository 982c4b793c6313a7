"""The committed built-in TRM (``edgekit/builtin/trm-sudoku``): official format, and it solves its held-out puzzles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from edgekit.families.trm import checkpoint as ck
from edgekit.families.trm.reference import run

ROOT = Path(__file__).resolve().parents[2] / "edgekit" / "builtin" / "trm-sudoku"


@pytest.fixture(scope="module")
def model():
    return ck.load_checkpoint(ROOT)


@pytest.fixture(scope="module")
def held_out() -> dict[str, np.ndarray]:
    return dict(np.load(ROOT / "held_out.npz"))


def test_files_are_the_official_format_and_small() -> None:
    step = ck.find_weights_file(ROOT)
    assert step.name.startswith("step_")
    keys = list(ck.tensor_shapes(step))
    assert keys and all(k.startswith("_orig_mod.model.inner.") for k in keys)
    arch = yaml.safe_load((ROOT / "all_config.yaml").read_text())["arch"]
    assert arch["name"] == "recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1" and arch["mlp_t"] is True
    assert "seq_len" not in arch  # as in official configs: it comes from the dataset metadata (dataset.json)
    assert sum(f.stat().st_size for f in ROOT.iterdir()) < 10 * 2**20


def test_config_is_complete_without_torch_side_info() -> None:
    cfg = ck.load_config(ROOT)
    assert (cfg.seq_len, cfg.vocab_size, cfg.num_puzzle_identifiers) == (16, 6, 1)
    assert cfg.prefix_len == 1 and cfg.total_len == 17


def test_held_out_set_is_in_the_official_encoding(held_out: dict[str, np.ndarray]) -> None:
    x, y = held_out["inputs"], held_out["labels"]
    assert x.dtype == np.int32 and x.shape == y.shape and x.shape[1] == 16
    assert set(np.unique(x)) <= {1, 2, 3, 4, 5} and set(np.unique(y)) <= {2, 3, 4, 5}
    given = x != 1
    assert (x[given] == y[given]).all()  # the clues are part of the solution
    assert set(np.unique(held_out["puzzle_identifiers"])) == {0}


@pytest.mark.parametrize("halt", [False, True])
def test_solves_held_out_puzzles(model, held_out: dict[str, np.ndarray], halt: bool) -> None:
    n = 200  # a fast subset; the slow test below covers all of them
    res = run(model, held_out["inputs"][:n], held_out["puzzle_identifiers"][:n], halt=halt)
    exact = float((res.preds.numpy() == held_out["labels"][:n]).all(-1).mean())
    assert exact >= 0.95, exact
    if halt:
        assert float(res.steps.float().mean()) < model.config.halt_max_steps  # halting actually saves steps


@pytest.mark.slow
def test_full_held_out_accuracy_matches_training_record(model, held_out: dict[str, np.ndarray]) -> None:
    record = json.loads((ROOT / "TRAINING.json").read_text())
    for halt, key in ((False, "exact_accuracy_all_steps"), (True, "exact_accuracy_halt")):
        res = run(model, held_out["inputs"], held_out["puzzle_identifiers"], halt=halt)
        exact = float((res.preds.numpy() == held_out["labels"]).all(-1).mean())
        assert exact >= 0.95
        # float summation order may differ between machines: allow a handful of borderline puzzles
        assert abs(exact - record[key]) <= 0.005, (exact, record[key])
