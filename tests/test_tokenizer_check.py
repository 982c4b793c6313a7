"""Plan-time tokenizer checks and the runtime pieces of issue 17 kinds 3 and 5, on mutated copies of the built-in
LFM2's tokenizer files (the weights are linked, not copied: no export runs here)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgekit import builtin
from edgekit.errors import CheckpointError, UnsupportedError
from edgekit.export import make_plan


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    src = builtin.resolve("builtin:lfm2-tiny")
    dst = tmp_path / "ckpt"
    dst.mkdir()
    for f in src.iterdir():
        if f.suffix == ".safetensors":
            (dst / f.name).symlink_to(f)
        else:
            shutil.copy(f, dst / f.name)
    return dst


def edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_unmodified_copy_plans(ckpt):
    make_plan(ckpt, "gguf", "q8_0")


def test_post_processor_naming_an_unknown_token_is_refused(ckpt):
    def edit(t):
        t["post_processor"]["single"][0]["SpecialToken"]["id"] = "<|nosuch|>"

    edit_json(ckpt / "tokenizer.json", edit)
    with pytest.raises(CheckpointError, match=r"names special token '<\|nosuch\|>'.*panic"):
        make_plan(ckpt, "onnx", "fp32")


def test_post_processor_with_a_wrong_id_is_refused(ckpt):
    def edit(t):
        t["post_processor"]["special_tokens"]["<|startoftext|>"]["ids"] = [7]

    edit_json(ckpt / "tokenizer.json", edit)
    with pytest.raises(CheckpointError, match="maps '<\\|startoftext\\|>' to id 7"):
        make_plan(ckpt, "gguf", "q8_0")


@pytest.mark.parametrize("data", [b"\xff\xfe{", b"{\"model\": ", b"[1, 2]"])
def test_tokenizer_json_not_utf8_json_object_is_refused(ckpt, data):
    (ckpt / "tokenizer.json").write_bytes(data)
    with pytest.raises(CheckpointError) as err:
        make_plan(ckpt, "gguf", "q8_0")
    assert "\n" not in str(err.value)


def test_normalizer_is_refused_for_gguf_and_kept_where_the_engine_mirrors_it(ckpt):
    def edit(t):
        t["normalizer"] = {"type": "NFKC"}

    edit_json(ckpt / "tokenizer.json", edit)
    with pytest.raises(UnsupportedError, match="NFKC normalizer, which llama.cpp does not apply.*--format onnx"):
        make_plan(ckpt, "gguf", "q8_0")
    make_plan(ckpt, "onnx", "fp32")  # onnxruntime sessions tokenize with this very tokenizer.json


@pytest.mark.parametrize(
    "name,edit,pattern",
    [
        ("tokenizer_config.json", lambda d: d.update(eos_token=5), "eos_token must be a string"),
        ("tokenizer_config.json", lambda d: d.update(bos_token="<|nosuch|>"), "not a token of tokenizer.json"),
        ("tokenizer_config.json", lambda d: d.update(extra_special_tokens="x"), "must be a list"),
        ("tokenizer_config.json", lambda d: d.update(add_bos_token="false"), "add_bos_token must be true or false"),
        ("tokenizer_config.json", lambda d: d.update(chat_template=3), "chat_template must be a string"),
        ("generation_config.json", lambda d: d.update(eos_token_id="2"), "eos_token_id must be an int"),
        ("generation_config.json", lambda d: d.update(eos_token_id=[2, 99999]), "eos_token_id 99999 is outside"),
        ("generation_config.json", lambda d: d.update(pad_token_id=True), "pad_token_id must be an int"),
    ],
)
def test_invalid_tokenizer_side_files_are_refused(ckpt, name, edit, pattern):
    edit_json(ckpt / name, edit)
    with pytest.raises(CheckpointError, match=pattern):
        make_plan(ckpt, "gguf", "q8_0")


def test_special_tokens_map_that_is_not_json_is_refused(ckpt):
    (ckpt / "special_tokens_map.json").write_text("{'bos_token': 1}")
    with pytest.raises(CheckpointError, match="special_tokens_map.json: not valid JSON"):
        make_plan(ckpt, "gguf", "q8_0")


def test_chat_template_syntax_error_is_refused_at_export(ckpt):
    (ckpt / "chat_template.jinja").write_text("{% for m in messages %}{{ m.content }}")
    with pytest.raises(CheckpointError, match=r"chat template syntax error at line 1"):
        make_plan(ckpt, "gguf", "q8_0")


def test_top_p_one_with_sampling_never_overruns_the_candidates():
    from edgekit.runtimes.decoding import Sampler
    from edgekit.runtimes.protocol import SamplingParams

    rng = np.random.default_rng(0)
    for seed in range(50):
        row = rng.normal(size=4096).astype(np.float32) * 3
        s = Sampler(SamplingParams(temperature=0.8, top_k=0, top_p=1.0, seed=seed))
        assert 0 <= s(row) < 4096


def test_non_ascii_plain_added_token_decodes_to_its_text(tmp_path):
    from tokenizers import AddedToken, Tokenizer

    from edgekit.runtimes.decoding import TextCodec

    tok = Tokenizer.from_file(str(builtin.resolve("builtin:lfm2-tiny") / "tokenizer.json"))
    tok.add_tokens([AddedToken("½", special=False, normalized=False), AddedToken("→é", special=False)])
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    codec = TextCodec(path)
    ids = codec.encode("x ½ y →é", add_special=False)
    assert b"".join(codec.piece(i) for i in ids).decode("utf-8") == "x ½ y →é"
