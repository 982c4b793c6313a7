"""The llama.cpp pre-tokenizer is derived from the tokenizer itself, not from a checksum table."""

import json

import pytest

from edgekit.builtin import ROOT
from edgekit.errors import UnsupportedError
from edgekit.exporters.gguf import vocab
from edgekit.exporters.gguf.lfm2 import PRETOKENIZER_ALIASES as LFM2


def split(regex):
    return {
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
            ],
        }
    }


def test_builtin_tokenizer_is_gpt2():
    tok = json.loads((ROOT / "lfm2-tiny" / "tokenizer.json").read_text())
    assert vocab.pretokenizer_name(tok, LFM2) == "gpt-2"


def test_llama3_regex_maps_to_lfm2_for_lfm2():
    # the split LFM2's published tokenizer uses; llama.cpp's "lfm2" pre-type implements it
    assert vocab.pretokenizer_name(split(vocab.LLAMA3), LFM2) == "lfm2"


def test_qwen2_regex():
    assert vocab.pretokenizer_name(split(vocab.QWEN2), LFM2) == "qwen2"


def test_unknown_regex_fails_and_names_the_override():
    with pytest.raises(UnsupportedError, match="--pretokenizer"):
        vocab.pretokenizer_name(split(r"\w+|\s+"), LFM2)
    assert vocab.pretokenizer_name(split(r"\w+|\s+"), LFM2, override="gpt-2") == "gpt-2"


def test_non_byte_level_is_refused():
    with pytest.raises(UnsupportedError, match="byte-level"):
        vocab.split_regexes({"pre_tokenizer": {"type": "Split", "pattern": {"Regex": "x"}}})
    with pytest.raises(UnsupportedError, match="no llama.cpp equivalent"):
        vocab.split_regexes({"pre_tokenizer": {"type": "Metaspace"}})


def test_padded_vocab_gets_placeholders():
    v = vocab.build_vocab(ROOT / "lfm2-tiny" / "tokenizer.json", 4096 + 8, LFM2)
    assert v.padded == 8 and v.tokens[-1] == "[PAD4103]" and len(v.types) == 4104
