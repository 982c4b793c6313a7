"""`edgekit run` on a real GGUF bundle: stderr holds exactly the timing line, newline-terminated, and none of
llama.cpp's load chatter ("padding V cache"); a refusal is one line with exit code 2 (issue 17 kind 7)."""

from conftest import exported
from edgekit.cli import main


def test_run_prints_one_timing_line_with_a_newline_and_no_engine_noise(export_cache, capfd):
    bundle = exported(export_cache, "builtin:lfm2-tiny", "gguf", "q8_0", verify=False)
    capfd.readouterr()  # the export's own chatter (torch imports) is not the run's
    assert main(["run", str(bundle), "--prompt", "def main(", "--max-tokens", "4"]) == 0
    out, err = capfd.readouterr()
    assert out.endswith("\n")
    assert "padding V cache" not in err
    assert err.endswith("\n") and err.count("\n") == 1 and err.startswith("[llama.cpp] prompt"), err


def test_run_refusal_is_one_line_exit_2(export_cache, capfd):
    bundle = exported(export_cache, "builtin:lfm2-tiny", "gguf", "q8_0", verify=False)
    capfd.readouterr()
    assert main(["run", str(bundle), "--prompt", "x", "--max-tokens", "100000"]) == 2
    _, err = capfd.readouterr()
    assert err.count("\n") == 1 and err.startswith("edgekit: error:"), err


def test_options_that_cannot_apply_are_refused_before_any_work(export_cache, capfd, tmp_path):
    """Found by a new-user trial: `--max-kl -1` ran a whole export before failing; `--adapter-scale` without
    `--adapter` was ignored."""
    import pytest

    with pytest.raises(SystemExit) as exit_:
        main(["export", "builtin:lfm2-tiny", "--format", "gguf", "--max-kl", "-1", "-o", str(tmp_path / "o")])
    assert exit_.value.code == 2 and not (tmp_path / "o").exists()
    assert "--max-kl: must be a positive number, got -1" in capfd.readouterr().err
    bundle = exported(export_cache, "builtin:lfm2-tiny", "gguf", "q8_0", verify=False)
    capfd.readouterr()
    assert main(["run", str(bundle), "--prompt", "x", "--adapter-scale", "0.5"]) == 2
    assert "--adapter-scale applies to a separate adapter" in capfd.readouterr().err


def test_executorch_log_lines_are_dropped_from_pythons_stderr_and_ours_kept():
    """ExecuTorch hands its cpuinfo lines to Python's stderr in flushed pieces; `edgekit run/chat/solve` drop them
    (whole lines in its log format only) unless --verbose (new-user trial: ~20 lines inside the answer)."""
    import io

    from edgekit.cli import _DropNativeLogLines

    out = io.StringIO()
    s = _DropNativeLogLines(out)
    for piece in ["[", "cpuinfo_utils.cpp", ":", "71", "] ", "Reading file /sys/x", "\n",
                  "I tokenizers:regex.cpp:40] Registering\n", "[executorch] prompt 4 tok", "\n", "partial"]:
        s.write(piece)
        s.flush()
    assert out.getvalue() == "[executorch] prompt 4 tok\npartial"


def test_k_quant_fallback_is_one_line_and_recorded(tmp_path, capfd):
    """A model whose rows are not a multiple of 256 weights (hidden 320): llama.cpp stores those matrices in a
    legacy type instead of Q4_K and logs one warning each; the export says so once and the manifest lists them."""
    from factory import make_lfm2
    from edgekit.bundle import read_manifest
    from edgekit.export import export, make_plan

    src = make_lfm2(tmp_path / "lfm2", hidden=320, intermediate=512, heads=5, kv_heads=1,
                    layer_types=("conv", "full_attention"), seed=3)
    lines: list[str] = []
    capfd.readouterr()
    out = export(make_plan(str(src), "gguf", "q4_k_m", None, {"mixed_precision": False}), tmp_path / "b",
                 verify=False, progress=lines.append)
    err = capfd.readouterr().err
    assert "not divisible by 256" not in err and "fallback quantization" not in err, err
    fallbacks = read_manifest(out)["artifact"]["k_quant_fallbacks"]
    assert fallbacks["blk.0.ffn_up.weight"] == "Q5_0" and "blk.0.ffn_down.weight" not in fallbacks  # 512 wide: fits
    (note,) = [x for x in lines if x.startswith("note: llama.cpp stored")]
    assert f"stored {len(fallbacks)} matrices" in note
    # the factory copies tokenizer_config.json (no chat_template in it) but not chat_template.jinja
    assert any("has no chat template" in x and "User:/Assistant:" in x for x in lines), lines
