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
