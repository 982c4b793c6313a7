"""Bad checkpoints fail fast with one clear line (and before any output is written)."""

import json
import shutil
from pathlib import Path

import pytest

from edgekit.checkpoint import open_checkpoint
from edgekit.errors import CheckpointError, UnsupportedError
from edgekit.export import make_plan


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_builtin_opens():
    ckpt = open_checkpoint("builtin:lfm2-tiny")
    assert ckpt.family.family.value == "lfm2"
    cfg = ckpt.model_config
    assert cfg.intermediate_size % 256 == 0 and cfg.hidden_size % 256 == 0
    assert "full_attention" in cfg.layer_types and "conv" in cfg.layer_types


def test_unknown_builtin():
    with pytest.raises(CheckpointError, match="built-ins: builtin:lfm2-tiny"):
        open_checkpoint("builtin:nope")


def test_missing_config(rand_lfm2, tmp_path):
    d = copy(rand_lfm2, tmp_path / "c")
    (d / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json"):
        open_checkpoint(d)


def test_malformed_config(rand_lfm2, tmp_path):
    d = copy(rand_lfm2, tmp_path / "c")
    (d / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        open_checkpoint(d)


def test_config_missing_keys(rand_lfm2, tmp_path):
    d = copy(rand_lfm2, tmp_path / "c")
    cfg = json.loads((d / "config.json").read_text())
    del cfg["conv_L_cache"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="lacks conv_L_cache"):
        open_checkpoint(d)


def test_other_architecture_names_supported(rand_lfm2, tmp_path):
    d = copy(rand_lfm2, tmp_path / "c")
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(architectures=["LlamaForCausalLM"], model_type="llama")
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedError, match="LlamaForCausalLM.*supported families: lfm2"):
        open_checkpoint(d)


def test_truncated_safetensors(rand_lfm2, tmp_path):
    d = copy(rand_lfm2, tmp_path / "c")
    w = d / "model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        open_checkpoint(d)


def test_corrupt_safetensors(rand_lfm2, tmp_path):
    d = copy(rand_lfm2, tmp_path / "c")
    (d / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        open_checkpoint(d)


def test_missing_weights(rand_lfm2, tmp_path):
    d = copy(rand_lfm2, tmp_path / "c")
    (d / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        open_checkpoint(d)


def test_tokenizer_larger_than_embedding(tmp_path):
    from factory import make_lfm2

    d = make_lfm2(tmp_path / "c", layer_types=("conv", "full_attention"))
    cfg = json.loads((d / "config.json").read_text())
    tok = json.loads((d / "tokenizer.json").read_text())
    tok["added_tokens"].append(
        {"id": cfg["vocab_size"] + 5, "content": "<|extra|>", "single_word": False, "lstrip": False,
         "rstrip": False, "normalized": False, "special": True}
    )
    (d / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(CheckpointError, match="does not belong to these weights"):
        open_checkpoint(d)


def test_sharded_checkpoint(rand_lfm2, tmp_path):
    from safetensors.numpy import load_file, save_file

    d = copy(rand_lfm2, tmp_path / "c")
    tensors = load_file(d / "model.safetensors")
    (d / "model.safetensors").unlink()
    names = sorted(tensors)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    for fname, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, d / fname, metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: f for f, ks in shards.items() for k in ks}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    ckpt = open_checkpoint(d)
    assert len(ckpt.files) == 2 and len(ckpt.shapes) == len(names)
    (d / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="shards that are missing"):
        open_checkpoint(d)


def test_bad_input_is_refused_before_output_exists(rand_lfm2, tmp_path):
    d = copy(rand_lfm2, tmp_path / "c")
    (d / "model.safetensors").write_bytes(b"junk")
    out = tmp_path / "out"
    with pytest.raises(CheckpointError):
        make_plan(d, "gguf", "q8_0")
    assert not out.exists() and list(tmp_path.iterdir()) == [d]


def test_broken_official_trm_checkpoint_is_one_line(tmp_path):
    (tmp_path / "all_config.yaml").write_text("arch:\n  name: recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1\n")
    (tmp_path / "step_0").write_bytes(b"")
    with pytest.raises(CheckpointError) as e:
        open_checkpoint(tmp_path)
    assert "\n" not in str(e.value)


def test_unknown_layout_names_what_is_read(tmp_path):
    (tmp_path / "all_config.yaml").write_text("arch:\n  name: some.other@Model\n")
    with pytest.raises(CheckpointError, match="no config.json.*official checkpoint layouts of trm, hrm"):
        open_checkpoint(tmp_path)
