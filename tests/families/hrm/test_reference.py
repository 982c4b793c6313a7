"""HRM: config, official-checkpoint loader and reference against the official HRM code's outputs.

Fixtures: ``../shared/fixtures/hrm-official/hrm_att`` (attention + RoPE + puzzle prefix) and
``tests/fixtures/hrm-learned`` (learned positions, padded 2-position prefix, H_layers != L_layers), both made by
the unmodified sapientinc/HRM code.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from edgekit.errors import CheckpointError, UnsupportedError
from edgekit.families.hrm import checkpoint as ck
from edgekit.families.hrm.config import HrmConfig, read_config
from edgekit.families.hrm.reference import run
from edgekit.families.trm.checkpoint import tensor_shapes
from shared_fixtures import SHARED

REPO = Path(__file__).resolve().parents[3]
OFFICIAL = SHARED / "hrm-official" / "hrm_att"
LOCAL = REPO / "tests" / "fixtures" / "hrm-learned"
TOL = 1e-4

needs_official = pytest.mark.skipif(not OFFICIAL.is_dir(), reason=f"{OFFICIAL} not present")


def _errors(model, folder: Path) -> dict[str, float]:
    ref = np.load(folder / "outputs.npz")
    res = run(model, np.load(folder / "inputs.npy"), np.load(folder / "puzzle_identifiers.npy"), halt=False)
    assert res.logits_per_step.shape[0] == int(ref["num_steps"])
    np.testing.assert_array_equal(res.preds.numpy(), ref["preds"])
    return {
        "logits": float(np.abs(res.logits_per_step.numpy() - ref["logits_per_step"]).max()),
        "q_halt": float(np.abs(res.q_halt_logits_per_step.numpy() - ref["q_halt_logits_per_step"]).max()),
        "q_continue": float(np.abs(res.q_continue_logits_per_step.numpy() - ref["q_continue_logits_per_step"]).max()),
    }


@needs_official
@pytest.mark.parametrize("sub", ["", "no_compile"])
def test_official_fixture_matches(sub: str) -> None:
    model = ck.load_checkpoint(OFFICIAL / sub if sub else OFFICIAL)
    assert model.separate_h_level and model.config.prefix_len == 1
    err = _errors(model, OFFICIAL)
    assert max(err.values()) <= TOL, err


@needs_official
def test_official_fixture_carry_after_every_step() -> None:
    model = ck.load_checkpoint(OFFICIAL)
    inter = np.load(OFFICIAL / "intermediates.npz")
    inputs = torch.from_numpy(np.load(OFFICIAL / "inputs.npy"))
    ids = torch.from_numpy(np.load(OFFICIAL / "puzzle_identifiers.npy"))
    with torch.no_grad():
        z_H, z_L = model.initial_state(inputs.shape[0], inputs.shape[1])
        assert torch.equal(z_H[0, 0], torch.from_numpy(inter["H_init"]))
        for i in range(4):
            z_H, z_L, *_ = model.step(z_H, z_L, inputs, ids)
            assert float((z_H - torch.from_numpy(inter["z_H_per_step"][i])).abs().max()) <= TOL
            assert float((z_L - torch.from_numpy(inter["z_L_per_step"][i])).abs().max()) <= TOL


def test_learned_positions_fixture_matches() -> None:
    if not (LOCAL / "outputs.npz").exists():
        pytest.skip(f"{LOCAL} not generated")
    model = ck.load_checkpoint(LOCAL)
    assert model.config.prefix_len == 2 and model.config.seq_len == 16  # seq_len from embed_pos / dataset.json
    err = _errors(model, LOCAL)
    assert max(err.values()) <= TOL, err


@needs_official
def test_config_reads_official_names() -> None:
    cfg = read_config(OFFICIAL)
    assert (cfg.H_cycles, cfg.L_cycles, cfg.H_layers, cfg.L_layers, cfg.halt_max_steps) == (2, 2, 2, 2, 4)
    assert cfg.prefix_len == 1 and cfg.forward_dtype == "float32" and cfg.halt_on_continue
    full = ck.load_config(OFFICIAL)
    assert (full.vocab_size, full.num_puzzle_identifiers) == (11, 1)


def test_forward_dtype_defaults_to_bfloat16_and_prefix_is_derived() -> None:
    cfg = HrmConfig.from_arch(
        {"name": "hrm.hrm_act_v1@HierarchicalReasoningModel_ACTV1", "hidden_size": 64, "num_heads": 4,
         "expansion": 4, "H_cycles": 2, "L_cycles": 2, "H_layers": 4, "L_layers": 4, "halt_max_steps": 16,
         "pos_encodings": "rope", "puzzle_emb_ndim": 100}
    )
    assert cfg.forward_dtype == "bfloat16" and cfg.prefix_len == 2


@needs_official
@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda a: a.update(H_layers=1), "unexpected tensor H_level.layers.1"),
        (lambda a: a.update(H_layers=3), "H_level.layers.2.* is missing|tensor H_level.layers.2"),
        (lambda a: a.update(num_heads=8, hidden_size=32), "shape"),
        (lambda a: a.update(name="recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1"), "not an HRM model"),
        (lambda a: a.update(mlp_t=True), "supports neither"),
        (lambda a: a.pop("H_cycles"), "missing H_cycles"),
    ],
)
def test_config_disagreeing_with_tensors(tmp_path: Path, edit, message: str) -> None:
    folder = tmp_path / "ck"
    folder.mkdir()
    data = yaml.safe_load((OFFICIAL / "all_config.yaml").read_text())
    edit(data["arch"])
    (folder / "all_config.yaml").write_text(yaml.dump(data))
    shutil.copy(OFFICIAL / "step_0", folder / "step_0")
    with pytest.raises(CheckpointError, match=message):
        ck.load_checkpoint(folder)
    with pytest.raises(CheckpointError, match=message):
        ck.load_config(folder)


@needs_official
def test_release_file_name_and_bfloat16_init_states(tmp_path: Path) -> None:
    """HRM's released checkpoints name the file ``checkpoint``; real runs store H_init/L_init in bfloat16."""
    folder = tmp_path / "release"
    folder.mkdir()
    shutil.copy(OFFICIAL / "all_config.yaml", folder / "all_config.yaml")
    sd = torch.load(OFFICIAL / "step_0", weights_only=True)
    for k in ("_orig_mod.model.inner.H_init", "_orig_mod.model.inner.L_init"):
        sd[k] = sd[k].to(torch.bfloat16)
    torch.save(sd, folder / "checkpoint")
    assert ck.find_weights_file(folder).name == "checkpoint"
    infos = tensor_shapes(folder / "checkpoint")
    assert {v.dtype for k, v in infos.items() if k.endswith("_init")} == {"BFloat16"}
    model = ck.load_checkpoint(folder)
    assert model.H_init.dtype == torch.float32
    assert torch.equal(model.H_init, sd["_orig_mod.model.inner.H_init"].float())


@needs_official
def test_run_refuses_out_of_range_tokens() -> None:
    model = ck.load_checkpoint(OFFICIAL)
    with pytest.raises(UnsupportedError, match=r"\[0, 10\]"):
        run(model, np.full((1, 81), 12, np.int32))


@needs_official
def test_halting_compares_halt_with_continue() -> None:
    """HRM stops a row at the first step where q_halt > q_continue (its official training-time rule)."""
    model = ck.load_checkpoint(OFFICIAL)
    inputs = np.load(OFFICIAL / "inputs.npy")
    full = run(model, inputs)
    early = run(model, inputs, halt=True)
    for row in range(inputs.shape[0]):
        qh, qc = full.q_halt_logits_per_step[:, row], full.q_continue_logits_per_step[:, row]
        first = next((i for i in range(4) if qh[i] > qc[i]), 3)
        assert int(early.steps[row]) == first + 1
        assert torch.equal(early.preds[row], full.logits_per_step[first, row].argmax(-1))
