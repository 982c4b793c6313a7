"""TRM: config, official-checkpoint loader and PyTorch reference against the official code's outputs.

Fixtures: ``../shared/fixtures/trm-official/trm_att`` (attention + RoPE + puzzle prefix, made by the official code)
and ``tests/fixtures/trm-mlp``, ``tests/fixtures/trm-nopuzzle`` (MLP over the sequence; no puzzle embedding,
learned positions), made by ``tests/fixtures/make_fixture.py`` from the unmodified official code.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from edgekit.errors import CheckpointError, UnsupportedError
from edgekit.families.trm import checkpoint as ck
from edgekit.families.trm.config import TrmConfig, read_config
from edgekit.families.trm.reference import run
from shared_fixtures import SHARED

REPO = Path(__file__).resolve().parents[3]
OFFICIAL = SHARED / "trm-official" / "trm_att"
LOCAL = REPO / "tests" / "fixtures"
TOL = 1e-4

needs_official = pytest.mark.skipif(not OFFICIAL.is_dir(), reason=f"{OFFICIAL} not present")


def _compare(model, folder: Path) -> dict[str, float]:
    """Run the official evaluation loop on the fixture's inputs; max |Δ| per output against outputs.npz."""
    inputs = np.load(folder / "inputs.npy")
    ids = np.load(folder / "puzzle_identifiers.npy")
    ref = np.load(folder / "outputs.npz")
    res = run(model, inputs, ids, halt=False)
    assert res.logits_per_step.shape[0] == int(ref["num_steps"])
    np.testing.assert_array_equal(res.preds.numpy(), ref["preds"])
    np.testing.assert_array_equal(res.logits_per_step.argmax(-1).numpy(), ref["preds_per_step"])
    return {
        "logits": float(np.abs(res.logits_per_step.numpy() - ref["logits_per_step"]).max()),
        "q_halt": float(np.abs(res.q_halt_logits_per_step.numpy() - ref["q_halt_logits_per_step"]).max()),
        "q_continue": float(np.abs(res.q_continue_logits_per_step.numpy() - ref["q_continue_logits_per_step"]).max()),
    }


# -- the official fixture ---------------------------------------------------------------------------------------


@needs_official
@pytest.mark.parametrize("sub", ["", "no_compile"])
def test_official_attention_fixture_matches(sub: str) -> None:
    model = ck.load_checkpoint(OFFICIAL / sub if sub else OFFICIAL)
    assert model.config.prefix_len == 16 and model.config.vocab_size == 11
    err = _compare(model, OFFICIAL)
    assert max(err.values()) <= TOL, err


@needs_official
def test_official_fixture_state_after_every_step() -> None:
    """The carry itself (z_H, z_L, prefix included) after the last step, and the scaled input embedding."""
    model = ck.load_checkpoint(OFFICIAL)
    inter = np.load(OFFICIAL / "intermediates.npz")
    inputs = torch.from_numpy(np.load(OFFICIAL / "inputs.npy"))
    ids = torch.from_numpy(np.load(OFFICIAL / "puzzle_identifiers.npy"))
    with torch.no_grad():
        x = model.input_embeddings(inputs, ids)
        assert float((x - torch.from_numpy(inter["input_embeddings"])).abs().max()) <= 1e-5
        z_H, z_L = model.initial_state(inputs.shape[0], inputs.shape[1])
        for i in range(4):
            z_H, z_L, *_ = model.step(z_H, z_L, inputs, ids)
            assert float((z_H - torch.from_numpy(inter["z_H_per_step"][i])).abs().max()) <= TOL
            assert float((z_L - torch.from_numpy(inter["z_L_per_step"][i])).abs().max()) <= TOL


@pytest.mark.parametrize("name", ["trm-mlp", "trm-nopuzzle"])
def test_variant_fixtures_match(name: str) -> None:
    folder = LOCAL / name
    if not (folder / "outputs.npz").exists():
        pytest.skip(f"{folder} not generated")
    model = ck.load_checkpoint(folder)
    err = _compare(model, folder)
    assert max(err.values()) <= TOL, err


# -- config -----------------------------------------------------------------------------------------------------


@needs_official
def test_config_reads_official_names_and_defaults() -> None:
    cfg = read_config(OFFICIAL)
    assert (cfg.H_cycles, cfg.L_cycles, cfg.L_layers, cfg.halt_max_steps) == (2, 3, 2, 4)
    assert (cfg.hidden_size, cfg.num_heads, cfg.expansion, cfg.pos_encodings) == (64, 4, 4.0, "rope")
    assert (cfg.puzzle_emb_ndim, cfg.puzzle_emb_len, cfg.prefix_len) == (64, 16, 16)
    assert cfg.rms_norm_eps == 1e-5 and cfg.rope_theta == 10000.0 and cfg.no_ACT_continue and not cfg.mlp_t
    assert cfg.seq_len is None and cfg.vocab_size is None  # not in all_config.yaml
    full = ck.load_config(OFFICIAL)  # torch-free: shapes from the zip
    assert (full.vocab_size, full.num_puzzle_identifiers, full.seq_len) == (11, 1, None)
    assert ck.load_config(OFFICIAL, seq_len=81).total_len == 97


@needs_official
def test_torch_free_shape_reader_agrees_with_torch() -> None:
    infos = ck.tensor_shapes(OFFICIAL / "step_0")
    sd = torch.load(OFFICIAL / "step_0", weights_only=True)
    assert {k: v.shape for k, v in infos.items()} == {k: tuple(v.shape) for k, v in sd.items()}
    assert {v.dtype for v in infos.values()} == {"Float"}


@needs_official
def test_config_modules_import_no_torch() -> None:
    code = (
        "import sys\n"
        "from edgekit.families.trm import checkpoint as ck\n"
        f"cfg = ck.load_config({str(OFFICIAL)!r})\n"
        "assert cfg.vocab_size == 11\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_config_defaults_follow_official_code() -> None:
    cfg = TrmConfig.from_arch(
        {"hidden_size": 32, "num_heads": 2, "expansion": 4, "H_cycles": 1, "L_cycles": 1, "L_layers": 1,
         "halt_max_steps": 2, "pos_encodings": "rope", "puzzle_emb_ndim": 32}
    )
    assert cfg.forward_dtype == "bfloat16" and cfg.puzzle_emb_len == 16 and cfg.no_ACT_continue
    assert TrmConfig.from_arch({**cfg.to_dict(), "puzzle_emb_len": 0}).prefix_len == 1


# -- bad checkpoints --------------------------------------------------------------------------------------------


def _copy(tmp_path: Path, edit=None, sd_edit=None) -> Path:
    out = tmp_path / "ck"
    out.mkdir()
    data = yaml.safe_load((OFFICIAL / "all_config.yaml").read_text())
    if edit:
        edit(data["arch"])
    (out / "all_config.yaml").write_text(yaml.dump(data))
    if sd_edit:
        sd = torch.load(OFFICIAL / "step_0", weights_only=True)
        sd_edit(sd)
        torch.save(sd, out / "step_0")
    else:
        shutil.copy(OFFICIAL / "step_0", out / "step_0")
    return out


@needs_official
def test_missing_config_is_a_checkpoint_error(tmp_path: Path) -> None:
    shutil.copy(OFFICIAL / "step_0", tmp_path / "step_0")
    with pytest.raises(CheckpointError, match="all_config.yaml"):
        ck.load_checkpoint(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no step_N"):
        ck.load_checkpoint(empty)
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        ck.load_checkpoint(tmp_path / "absent")


@needs_official
@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda a: a.update(hidden_size=32), "shape"),
        (lambda a: a.update(L_layers=3), "L_level.layers.2.* is missing|tensor L_level.layers.2"),
        (lambda a: a.update(L_layers=1), "unexpected tensor L_level.layers.1"),
        (lambda a: a.update(mlp_t=True), "mlp_t"),
        (lambda a: a.update(pos_encodings="learned"), "embed_pos"),
        (lambda a: a.update(puzzle_emb_ndim=0), "puzzle_emb_len"),
        (lambda a: a.update(puzzle_emb_ndim=0, puzzle_emb_len=0), "unexpected tensor puzzle_emb.weights"),
        (lambda a: a.pop("hidden_size"), "missing hidden_size"),
        (lambda a: a.update(H_cycles="two"), "H_cycles must be an integer"),
        (lambda a: a.update(pos_encodings="alibi"), "pos_encodings must be one of"),
    ],
)
def test_config_disagreeing_with_tensors(tmp_path: Path, edit, message: str) -> None:
    folder = _copy(tmp_path, edit=edit)
    with pytest.raises(CheckpointError, match=message):
        ck.load_checkpoint(folder)
    with pytest.raises(CheckpointError, match=message):
        ck.load_config(folder)  # the torch-free path refuses the same checkpoints


@needs_official
def test_other_official_arch_is_unsupported(tmp_path: Path) -> None:
    folder = _copy(tmp_path, edit=lambda a: a.update(name="recursive_reasoning.trm_singlez@TinyRecursiveReasoningModel_ACTV1"))
    with pytest.raises(UnsupportedError, match="trm_singlez"):
        ck.load_checkpoint(folder)


@needs_official
def test_seq_len_disagreeing_with_dataset_json(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    (folder / "dataset.json").write_text('{"seq_len": 81, "vocab_size": 12, "num_puzzle_identifiers": 1}')
    with pytest.raises(CheckpointError, match="vocab_size is 12 in the config but the tensors say 11"):
        ck.load_checkpoint(folder)
    with pytest.raises(CheckpointError, match="seq_len disagrees"):
        ck.load_checkpoint(folder, seq_len=64)


@needs_official
@pytest.mark.parametrize(
    "sd_edit, message",
    [
        (lambda sd: sd.__setitem__("_orig_mod.model.inner.lm_head.weight", torch.full((11, 64), float("nan"))), "NaN"),
        (lambda sd: sd.pop("_orig_mod.model.inner.q_head.bias"), "q_head.bias is missing"),
        (lambda sd: sd.__setitem__("_orig_mod.model.inner.q_head.bias", torch.zeros(3)), "q_head.bias has shape"),
        (lambda sd: sd.__setitem__("model.inner.H_init", torch.zeros(64)), "prefix"),
        (lambda sd: sd.__setitem__("_orig_mod.model.inner.H_level.layers.0.mlp.down_proj.weight", torch.zeros(64, 256)),
         "unexpected tensor H_level"),
        (lambda sd: sd.__setitem__("_orig_mod.model.inner.H_init", torch.zeros(64, dtype=torch.int32)), "dtype"),
    ],
)
def test_bad_tensors(tmp_path: Path, sd_edit, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        ck.load_checkpoint(_copy(tmp_path, sd_edit=sd_edit))


@needs_official
def test_plain_keys_and_prefixed_keys_load_the_same_and_highest_step_wins(tmp_path: Path) -> None:
    a = ck.load_checkpoint(OFFICIAL).state_dict()
    b = ck.load_checkpoint(OFFICIAL / "no_compile").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    folder = _copy(tmp_path)
    sd = torch.load(OFFICIAL / "step_0", weights_only=True)
    sd["_orig_mod.model.inner.q_head.bias"] = torch.tensor([7.0, 8.0])
    torch.save(sd, folder / "step_12")
    (folder / "step_3").write_bytes(b"not a checkpoint")  # lower N: never read
    assert ck.find_weights_file(folder).name == "step_12"
    assert ck.load_checkpoint(folder).q_head.bias.tolist() == [7.0, 8.0]
    (folder / "step_99").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="step_99"):
        ck.load_checkpoint(folder)


# -- run(): inputs and halting ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def official_model():
    if not OFFICIAL.is_dir():
        pytest.skip("official fixture absent")
    return ck.load_checkpoint(OFFICIAL)


@pytest.mark.parametrize(
    "inputs, ids, message",
    [
        (np.ones((2, 80), np.int32), None, "shape|cells"),
        (np.full((2, 81), 11, np.int32), None, r"\[0, 10\]"),
        (np.full((2, 81), -1, np.int64), None, r"\[0, 10\]"),
        (np.ones((2, 81), np.float32), None, "integer"),
        (np.ones(81, np.int32), None, r"\[batch, seq_len\]"),
        (np.ones((2, 81), np.int32), [0, 1], "identifiers"),
        (np.ones((2, 81), np.int32), [0], "2 puzzles"),
    ],
)
def test_run_refuses_bad_puzzles(official_model, inputs, ids, message: str) -> None:
    model = official_model
    if inputs.ndim == 2 and inputs.shape[1] == 80:
        model = ck.load_checkpoint(OFFICIAL, seq_len=81)  # a known length is enforced
    with pytest.raises(UnsupportedError, match=message):
        run(model, inputs, ids)


def test_run_refuses_bad_max_steps(official_model) -> None:
    with pytest.raises(UnsupportedError, match="max_steps"):
        run(official_model, np.ones((1, 81), np.int32), max_steps=0)


def test_halting_stops_rows_at_their_step(official_model) -> None:
    inputs = np.load(OFFICIAL / "inputs.npy")
    full = run(official_model, inputs, halt=False)
    early = run(official_model, inputs, halt=True)
    # no_ACT_continue: a row stops at the first step with q_halt > 0 (or the last step).
    for row in range(inputs.shape[0]):
        qh = full.q_halt_logits_per_step[:, row]
        first = next((i for i in range(len(qh)) if qh[i] > 0), len(qh) - 1)
        assert int(early.steps[row]) == first + 1
        assert torch.equal(early.logits[row], full.logits_per_step[first, row])
    assert int(full.steps.min()) == 4


def test_step_is_pure_and_exports(official_model) -> None:
    """One step does not touch its inputs, and torch.export traces it with the same numbers."""
    model = official_model
    inputs = torch.from_numpy(np.load(OFFICIAL / "inputs.npy")[:2])
    ids = torch.zeros(2, dtype=torch.int32)
    z_H, z_L = model.initial_state(2, 81)
    before = (z_H.clone(), z_L.clone())
    with torch.no_grad():
        out = model(z_H, z_L, inputs, ids)
    assert torch.equal(z_H, before[0]) and torch.equal(z_L, before[1])
    assert [tuple(t.shape) for t in out] == [(2, 97, 64), (2, 97, 64), (2, 81, 11), (2,), (2,)]
    assert out[3].dtype == torch.float32
    exported = torch.export.export(model, (z_H, z_L, inputs, ids))
    with torch.no_grad():
        again = exported.module()(z_H, z_L, inputs, ids)
    for a, b in zip(out, again):
        assert float((a - b).abs().max()) <= 1e-5
