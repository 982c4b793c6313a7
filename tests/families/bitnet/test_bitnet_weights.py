"""Packed / unpacked / master BitNet weights: the published packing, absmean ternarisation, bad weights."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edgekit.errors import CheckpointError
from edgekit.families.bitnet import weights as W
from edgekit.families.bitnet.synthetic import random_weights, tiny_config


def codes(shape, seed=0):
    return np.random.default_rng(seed).integers(-1, 2, size=shape).astype(np.int8)


def test_pack_roundtrip_and_layout() -> None:
    c = codes((16, 5))
    packed = W.pack(c)
    assert packed.dtype == np.uint8 and packed.shape == (4, 5)
    # byte [r, j] holds codes[i * rows + r, j] + 1 in bits 2i..2i+1 (transformers' pack_weights)
    assert packed[1, 2] == sum((int(c[i * 4 + 1, 2]) + 1) << (2 * i) for i in range(4))
    np.testing.assert_array_equal(W.unpack(packed), c)


def test_pack_matches_transformers() -> None:
    torch = pytest.importorskip("torch")
    bitnet = pytest.importorskip("transformers.integrations.bitnet")
    c = codes((64, 32), seed=1)
    theirs = bitnet.pack_weights(torch.from_numpy(c.astype(np.float32)).clone()).numpy()
    np.testing.assert_array_equal(W.pack(c), theirs)


def test_unpack_refuses_non_ternary_field() -> None:
    packed = W.pack(codes((8, 3)))
    packed[0, 0] |= 0b11 << 4
    with pytest.raises(CheckpointError, match="not a ternary value"):
        W.unpack(packed, "q_proj")


def test_pack_refuses_bad_input() -> None:
    with pytest.raises(CheckpointError, match="multiple of 4"):
        W.pack(codes((6, 2)))
    with pytest.raises(CheckpointError, match="ternary"):
        W.pack(np.full((4, 2), 2, dtype=np.int8))


def test_ternarize_absmean() -> None:
    w = np.array([[0.1, -0.5, 0.02, 0.9], [-0.3, 0.0, 0.26, -0.04]], dtype=np.float32)
    t = W.ternarize(w)
    gamma = np.abs(w).mean()
    assert t.scale == pytest.approx(gamma, rel=1e-6)
    np.testing.assert_array_equal(t.codes, np.clip(np.round(w / gamma), -1, 1))
    with pytest.raises(CheckpointError, match="NaN"):
        W.ternarize(np.array([[np.nan, 1.0]], dtype=np.float32))


def test_faithful_master_reternarises_exactly() -> None:
    t = W.TernaryLinear(codes=codes((32, 64), seed=3), scale=0.0123)
    back = W.ternarize(W.faithful_master(t))
    np.testing.assert_array_equal(back.codes, t.codes)
    assert back.scale == pytest.approx(t.scale, rel=1e-6)
    # the naive master codes * scale shrinks the scale by the non-zero fraction (issue 12)
    naive = W.ternarize(t.dense())
    assert naive.scale == pytest.approx(t.scale * t.nonzero_fraction, rel=1e-5)


@pytest.mark.parametrize("layout", ["packed", "master"])
def test_write_and_load_roundtrip(tmp_path: Path, layout: str) -> None:
    w = random_weights(tiny_config(), seed=4)
    W.write_checkpoint(w, tmp_path, layout)
    back = W.load(tmp_path)
    assert back.layout == layout and (back.master is not None) == (layout == "master")
    for name, t in w.ternary.items():
        np.testing.assert_array_equal(back.ternary[name].codes, t.codes)
        assert back.ternary[name].scale == pytest.approx(t.scale, rel=1e-6)
    for name, a in w.floats.items():
        np.testing.assert_array_equal(back.floats[name], a)


def test_bf16_master_weights(tmp_path: Path) -> None:
    w = random_weights(tiny_config(), seed=5, master=True)
    W.write_checkpoint(w, tmp_path, "master", float_dtype="BF16")
    back = W.load(tmp_path)
    name = next(iter(w.ternary))
    bf = (w.master[name].view(np.uint32) + 0x7FFF + ((w.master[name].view(np.uint32) >> 16) & 1)) >> 16 << 16
    np.testing.assert_array_equal(back.master[name], bf.astype(np.uint32).view(np.float32))
    np.testing.assert_array_equal(back.ternary[name].codes, W.ternarize(back.master[name]).codes)


def test_autobitlinear_offline_multiplies_scale(tmp_path: Path) -> None:
    w = random_weights(tiny_config(), seed=6)
    W.write_checkpoint(w, tmp_path, "packed")
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["quantization_config"]["linear_class"] = "autobitlinear"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    back = W.load(tmp_path)
    name = next(iter(w.ternary))
    # the stored weight_scale is 1 / scale (BitLinear divides); AutoBitLinear multiplies by it
    assert back.ternary[name].scale == pytest.approx(1.0 / w.ternary[name].scale, rel=1e-6)


def _tensors(tmp_path: Path, w) -> dict:
    W.write_checkpoint(w, tmp_path, "packed")
    return dict(W.read_tensors(tmp_path))


def test_missing_weight_scale(tmp_path: Path) -> None:
    w = random_weights(tiny_config(), seed=7)
    t = _tensors(tmp_path, w)
    del t["model.layers.1.mlp.up_proj.weight_scale"]
    with pytest.raises(CheckpointError, match="no weight_scale"):
        W.from_tensors(w.config, t)


def test_non_finite_and_unexpected(tmp_path: Path) -> None:
    w = random_weights(tiny_config(), seed=8)
    t = _tensors(tmp_path, w)
    t["model.norm.weight"] = np.full_like(t["model.norm.weight"], np.inf)
    with pytest.raises(CheckpointError, match="NaN or Inf"):
        W.from_tensors(w.config, t)
    t = _tensors(tmp_path, w)
    t["model.layers.0.mlp.extra.weight"] = np.zeros(3, dtype=np.float32)
    with pytest.raises(CheckpointError, match="unexpected tensors"):
        W.from_tensors(w.config, t)
    t = _tensors(tmp_path, w)
    t["model.layers.0.self_attn.q_proj.weight_scale"] = np.array([np.nan], dtype=np.float32)
    with pytest.raises(CheckpointError, match="finite"):
        W.from_tensors(w.config, t)


def test_unpacked_offline_must_be_ternary(tmp_path: Path) -> None:
    w = random_weights(tiny_config(), seed=9)
    t = _tensors(tmp_path, w)
    cfg = replace(w.config, quantization=replace(w.config.quantization, linear_class="autobitlinear"))
    name = "model.layers.0.self_attn.v_proj.weight"
    for n in w.ternary:
        t[n] = w.ternary[n].codes.astype(np.float32)
    assert W.from_tensors(cfg, t).layout == "unpacked"
    t[name] = t[name] * 0.5
    with pytest.raises(CheckpointError, match="not ternary"):
        W.from_tensors(cfg, t)


def test_missing_tensor_and_bad_shape(tmp_path: Path) -> None:
    w = random_weights(tiny_config(), seed=10)
    t = _tensors(tmp_path, w)
    del t["model.layers.1.self_attn.o_proj.weight"]
    with pytest.raises(CheckpointError, match="o_proj.weight is missing"):
        W.from_tensors(w.config, t)
    t = _tensors(tmp_path, w)
    t["model.layers.0.self_attn.q_proj.weight"] = t["model.layers.0.self_attn.q_proj.weight"][:-1]
    with pytest.raises(CheckpointError, match="packed shape"):
        W.from_tensors(w.config, t)
