"""Refusals that used to come late or never (issue 17, small ones): each is refused when the plan is made, in one
line, before any model loads; and `edgekit formats` offers no flag its row always refuses."""

import numpy as np
import pytest

from edgekit.errors import UnsupportedError
from edgekit.export import make_plan


def test_accept_reternarisation_without_an_adapter_is_refused():
    with pytest.raises(UnsupportedError, match="--accept-reternarisation applies only when a LoRA adapter is merged"):
        make_plan("builtin:bitnet-tiny", "gguf", "tq2_0", options={"accept_reternarisation": True})
    make_plan("builtin:bitnet-tiny", "gguf", "tq2_0", "builtin:bitnet-tiny-lora", options={"accept_reternarisation": True})


@pytest.mark.parametrize("fmt", ["onnx", "executorch"])
def test_seq_len_disagreement_is_refused_at_plan_time(fmt):
    known = make_plan("builtin:trm-sudoku", fmt, "fp32").checkpoint.model_config.seq_len
    with pytest.raises(UnsupportedError, match=f"--seq-len {known + 1} disagrees with the checkpoint's sequence length {known}"):
        make_plan("builtin:trm-sudoku", fmt, "fp32", options={"seq_len": known + 1})
    make_plan("builtin:trm-sudoku", fmt, "fp32", options={"seq_len": known})


def test_unknown_pretokenizer_is_refused_at_plan_time():
    with pytest.raises(UnsupportedError, match="--pretokenizer 'llama-9' is not a pre-tokenizer llama.cpp knows") as err:
        make_plan("builtin:lfm2-tiny", "gguf", "q8_0", options={"pretokenizer": "llama-9"})
    assert "\n" not in str(err.value)
    make_plan("builtin:lfm2-tiny", "gguf", "q8_0", options={"pretokenizer": "lfm2"})


def test_every_listed_pretokenizer_is_in_the_installed_llama_cpp():
    """The list is llama.cpp's own: each name is a NUL-terminated string in libllama (a suffix may share its
    bytes with a longer literal, hence the search for name + NUL)."""
    from pathlib import Path

    llama_cpp = pytest.importorskip("llama_cpp")
    from edgekit.exporters.gguf.vocab import LLAMA_CPP_PRETOKENIZERS

    libs = sorted((Path(llama_cpp.__file__).parent / "lib").glob("libllama*"))
    assert libs, "libllama not found beside llama_cpp"
    data = libs[0].read_bytes()
    assert b"unknown pre-tokenizer type" in data
    missing = [n for n in LLAMA_CPP_PRETOKENIZERS if n.encode() + b"\0" not in data]
    assert not missing


def test_bitnet_onnx_block_limits_are_refused_at_plan_time():
    with pytest.raises(UnsupportedError, match="int2 needs --accuracy-level 4 and --block-size <= 128"):
        make_plan("builtin:bitnet-tiny", "onnx", "int2", options={"block_size": 256})
    make_plan("builtin:bitnet-tiny", "onnx", "int4", options={"block_size": 256})  # 256 divides 256 and 768


def test_formats_lists_no_flag_that_the_row_always_refuses(capsys):
    from edgekit.cli import main
    from edgekit.families import Family
    from edgekit.plan import Format
    from edgekit.recipes import RECIPES

    bitnet_gguf = RECIPES.get(Family.BITNET, Format.GGUF)
    flags = bitnet_gguf.options.flags(bitnet_gguf.quants)
    assert "calibration" not in flags and "no_calibration" not in flags and "mixed_precision" not in flags
    assert "pretokenizer" in flags
    for name in ("calibration", "mixed_precision"):  # they are refused for every quant of the row indeed
        for q in bitnet_gguf.quants:
            with pytest.raises(UnsupportedError):
                make_plan("builtin:bitnet-tiny", "gguf", q, options={name: "x.txt" if name == "calibration" else True})
    lfm2 = RECIPES.get(Family.LFM2, Format.GGUF)
    assert "calibration" in lfm2.options.flags(lfm2.quants)
    assert main(["formats"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("bitnet   gguf"))
    assert "--calibration" not in row and "--mixed-precision" not in row and "--pretokenizer" in row


def test_solve_refuses_to_overwrite_its_output(export_cache, tmp_path, capsys):
    from conftest import exported
    from edgekit.cli import main

    bundle = exported(export_cache, "builtin:trm-sudoku", "onnx", "fp32", verify=False)
    seq = make_plan("builtin:trm-sudoku", "onnx", "fp32").checkpoint.model_config.seq_len
    puzzles = tmp_path / "p.npy"
    np.save(puzzles, np.ones((1, seq), dtype=np.int64))
    out = tmp_path / "answers.npy"
    out.write_bytes(b"keep me")
    assert main(["solve", str(bundle), "--input", str(puzzles), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exists; pass --force" in err[0] and out.read_bytes() == b"keep me"
    assert main(["solve", str(bundle), "--input", str(puzzles), "-o", str(out), "--force"]) == 0
    assert np.load(out).shape == (1, seq)
