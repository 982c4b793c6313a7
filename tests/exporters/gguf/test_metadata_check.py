"""The GGUF metadata check (``readback.check_metadata``): a key the exporter writes must hold the checkpoint's
value; a tokenizer or architecture key it does not write is refused (a new-user trial: ``add_eos_token`` and
``eot_token_id`` added to a file passed verification while changing llama.cpp's tokenising and stopping)."""

from __future__ import annotations

import gguf

from edgekit.exporters.gguf.readback import check_metadata


def _file(path, extra):
    w = gguf.GGUFWriter(str(path), "lfm2")
    w.add_rope_freq_base(1e6)
    w.add_token_types([3, 1, 1, 1])
    extra(w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _expected(w):
    w.add_rope_freq_base(1e6)
    w.add_token_types([3, 1, 1, 1])


def test_same_values_pass(tmp_path):
    assert check_metadata(_file(tmp_path / "a.gguf", lambda w: None), "lfm2", _expected) == []


def test_unexpected_tokenizer_keys_and_a_changed_list_are_named(tmp_path):
    def extra(w):
        w.add_add_eos_token(True)
        w.add_eot_token_id(18)

    fails = check_metadata(_file(tmp_path / "b.gguf", extra), "lfm2", _expected)
    assert fails == [
        "metadata check: b.gguf holds tokenizer.ggml.add_eos_token = True, which the checkpoint does not give",
        "metadata check: b.gguf holds tokenizer.ggml.eot_token_id = 18, which the checkpoint does not give",
    ]

    def changed(w):
        w.add_rope_freq_base(1e6)
        w.add_token_types([3, 1, 4, 1])

    (fail,) = check_metadata(_file(tmp_path / "c.gguf", lambda w: None), "lfm2", changed)
    assert fail.endswith("(first difference at [2]: 1 vs 4)"), fail
