"""Calibration text (bad input, disjointness from the verification text) and the importance statistics."""

from pathlib import Path

import numpy as np
import pytest

from edgekit import calibration as cal
from edgekit.builtin import train
from edgekit.errors import UnsupportedError
from edgekit.export import make_plan

CALIBRATION_MODULES = ("contextlib.py", "queue.py", "sched.py")  # what edgekit/data/calibration.txt is made of


def test_builtin_sample_is_disjoint_from_the_verification_text():
    assert not set(CALIBRATION_MODULES) & set(train.HELDOUT_MODULES)
    text = cal.default_text()
    assert cal.overlap(text, cal.heldout_text()) is None
    # the check can fail: a sample carrying a slice of the held-out text is caught
    held = cal.heldout_text()
    assert cal.overlap(text + held[5000:5400], held) is not None


def test_builtin_sample_is_long_enough():
    ckpt = Path(train.__file__).parent / "lfm2-tiny"
    windows = cal.token_windows(cal.default_text(), ckpt / "tokenizer.json", bos=1)
    assert sum(len(w) for w in windows) >= 4 * cal.MIN_TOKENS
    assert all(w[0] == 1 for w in windows)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "is empty"),
        (b"  \n\t ", "is empty"),
        (b"def f():\n    return 1\n", "characters; at least 1024 tokens"),
        (b"\xff\xfe\x00\x01" * 1000, "not UTF-8"),
        (b"ab\x00cd" * 1000, "NUL bytes"),
    ],
)
def test_bad_calibration_files_are_refused(tmp_path, content, message):
    f = tmp_path / "cal.txt"
    f.write_bytes(content)
    with pytest.raises(cal.CalibrationError, match=message):
        cal.load_text(f)
    with pytest.raises(UnsupportedError, match=message):  # at plan time, before anything is loaded
        make_plan("builtin:lfm2-tiny", "gguf", "q4_k_m", options={"calibration": str(f)})


def test_overlapping_calibration_file_is_refused(tmp_path):
    f = tmp_path / "cal.txt"
    f.write_text(cal.default_text()[:20000] + cal.heldout_text()[10000:10300], encoding="utf-8")
    with pytest.raises(cal.CalibrationError, match="overlaps the verification text"):
        make_plan("builtin:lfm2-tiny", "gguf", "q4_k_m", options={"calibration": str(f)})


def test_missing_calibration_file_is_refused(tmp_path):
    with pytest.raises(cal.CalibrationError, match="no such file"):
        make_plan("builtin:lfm2-tiny", "gguf", "q4_0", options={"calibration": str(tmp_path / "nope.txt")})


def test_calibration_options_apply_to_calibrated_quants_only(tmp_path):
    f = tmp_path / "cal.txt"
    f.write_text(cal.default_text(), encoding="utf-8")
    prep = make_plan("builtin:lfm2-tiny", "gguf", "q4_k_m", options={"calibration": str(f)})
    assert prep.plan.options.calibrates(prep.plan.quant)
    assert make_plan("builtin:lfm2-tiny", "gguf", "q4_k_m").plan.options.calibrates(prep.plan.quant)
    plain = make_plan("builtin:lfm2-tiny", "gguf", "q4_k_m", options={"no_calibration": True})
    assert not plain.plan.options.calibrates(plain.plan.quant)
    with pytest.raises(UnsupportedError, match="to calibrated quants"):
        make_plan("builtin:lfm2-tiny", "gguf", "q8_0", options={"calibration": str(f)})
    with pytest.raises(UnsupportedError, match="not both"):
        make_plan("builtin:lfm2-tiny", "gguf", "q4_0", options={"calibration": str(f), "no_calibration": True})
    with pytest.raises(UnsupportedError, match="to calibrated quants"):  # ternary BitNet: nothing to calibrate
        make_plan("builtin:bitnet-tiny", "gguf", "tq2_0", options={"no_calibration": True})


@pytest.fixture(scope="module")
def tiny_reference():
    from edgekit.checkpoint import open_checkpoint
    from edgekit.reference import load_reference

    ckpt = open_checkpoint("builtin:lfm2-tiny")
    return ckpt, load_reference(ckpt, None)


def test_importance_statistics_shape_and_values(tiny_reference):
    import torch

    ckpt, model = tiny_reference
    text = cal.load_text(None)
    windows = cal.token_windows(text.text, ckpt.path / "tokenizer.json", ckpt.model_config.bos_token_id, window=128)[:4]
    imp = cal.importance(model, windows, text)
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert set(imp.values) == set(linears)
    assert imp.tokens == sum(len(w) for w in windows)
    for name, v in imp.values.items():
        assert v.dtype == np.float32 and v.shape == (linears[name].in_features,)
        assert np.all(np.isfinite(v)) and np.all(v >= 0) and v.max() > 0
    # the LM head's input is the final hidden state (after the last norm): E[h^2] per channel, computed directly
    with torch.inference_mode():
        hidden = model.model(input_ids=torch.tensor(windows)).last_hidden_state
    direct = (hidden.reshape(-1, hidden.shape[-1]).double() ** 2).mean(0).float().numpy()
    np.testing.assert_allclose(imp.values["lm_head"], direct, rtol=1e-4)
    s = imp.summary()
    assert s["sha256"] == text.sha256 and s["source"] == cal.DEFAULT_NAME and s["tokens"] == imp.tokens


def _export(tmp_path, fmt, quant, options, name):
    from edgekit.bundle import read_manifest
    from edgekit.export import export

    out = tmp_path / name
    export(make_plan("builtin:lfm2-tiny", fmt, quant, "builtin:lfm2-tiny-lora", options), out, progress=lambda _m: None)
    return read_manifest(out)


@pytest.mark.slow
def test_gguf_q4_k_m_calibrated_and_plain_pass_verification(tmp_path):
    """Both exports verify; the calibrated one records its sample and differs from the plain one (the importance
    matrix reached llama.cpp's quantiser)."""
    calibrated = _export(tmp_path, "gguf", "q4_k_m", {}, "cal")
    plain = _export(tmp_path, "gguf", "q4_k_m", {"no_calibration": True}, "plain")
    assert calibrated["verification"]["passed"] and plain["verification"]["passed"]
    c = calibrated["artifact"]["calibration"]
    assert c["source"] == cal.DEFAULT_NAME and c["sha256"] == cal.load_text(None).sha256 and c["tokens"] >= 4096
    assert plain["artifact"]["calibration"] is None
    assert calibrated["files"]["model.gguf"]["sha256"] != plain["files"]["model.gguf"]["sha256"]
    # the default is calibrated + mixed: other types per tensor, never more bytes than the plain assignment
    assert calibrated["files"]["model.gguf"]["size"] <= plain["files"]["model.gguf"]["size"]


@pytest.mark.slow
@pytest.mark.parametrize("fmt,quant", [("gguf", "q4_0"), ("executorch", "8da4w"), ("onnx", "int4")])
def test_plain_round_to_nearest_passes_verification(tmp_path, fmt, quant):
    """``--no-calibration``: plain round-to-nearest at the quant's default types, no calibration recorded (the
    calibrated default of each is the parity tests' default case)."""
    m = _export(tmp_path, fmt, quant, {"no_calibration": True}, "plain")
    assert m["verification"]["passed"], m["verification"]["failures"]
    assert m["artifact"]["calibration"] is None and m["artifact"]["mixed_precision"] is None


@pytest.mark.slow
def test_onnx_int4_hqq_passes_verification(tmp_path):
    m = _export(tmp_path, "onnx", "int4", {"weight_algorithm": "hqq"}, "hqq")
    assert m["verification"]["passed"], m["verification"]["failures"]
    assert m["artifact"]["quant"]["algorithm"] == "hqq"


def test_onnx_weight_algorithm_applies_to_int4_only():
    assert make_plan("builtin:lfm2-tiny", "onnx", "int4", options={"weight_algorithm": "hqq"}).plan.options.weight_algorithm == "hqq"
    with pytest.raises(UnsupportedError, match="applies to --quant int4 only"):
        make_plan("builtin:lfm2-tiny", "onnx", "int8", options={"weight_algorithm": "hqq"})
    # ONNX int4's calibration text feeds only its mixed-precision scan (the default): without it, it would do
    # nothing
    text = str(Path(__file__).resolve().parents[1] / "edgekit" / "data" / "calibration.txt")
    with pytest.raises(UnsupportedError, match="read by the mixed-precision scan only"):
        make_plan("builtin:lfm2-tiny", "onnx", "int4", options={"calibration": text, "mixed_precision": False})
    prep = make_plan("builtin:lfm2-tiny", "onnx", "int4", options={"calibration": text})
    assert prep.plan.options.mixes(prep.plan.quant)
    # --weight-algorithm hqq writes asymmetric blocks, which the scan does not assign: plain HQQ
    prep = make_plan("builtin:lfm2-tiny", "onnx", "int4", options={"weight_algorithm": "hqq"})
    assert not prep.plan.options.mixes(prep.plan.quant)
    with pytest.raises(UnsupportedError, match="--calibration"):
        make_plan("builtin:lfm2-tiny", "onnx", "int8", options={"calibration": text})


def test_calibration_that_is_not_text_or_a_file_is_refused(tmp_path):
    """A directory, or valid UTF-8 made of control characters (a new-user trial: it passed the plan and failed
    only at the tensor check with a misleading reason), is refused at plan time."""
    noise = tmp_path / "ctrl.txt"
    noise.write_bytes(bytes(1 + (i * 7) % 31 for i in range(5000)))
    for path, message in ((tmp_path, "is a directory"), (noise, "control characters")):
        with pytest.raises(UnsupportedError, match=message):
            make_plan("builtin:lfm2-tiny", "gguf", "q4_k_m", options={"calibration": str(path)})


def test_too_few_tokens_names_the_file_and_what_to_do(tmp_path):
    f = tmp_path / "spaces.txt"
    f.write_text("a" + " " * 3000 + "b", encoding="utf-8")  # enough characters for the plan, few tokens
    plan = make_plan("builtin:lfm2-tiny", "gguf", "q4_k_m", options={"calibration": str(f)})
    with pytest.raises(cal.CalibrationError, match=r"spaces\.txt has \d+ tokens under the model's tokenizer; at "
                                                  r"least 1024 are needed: pass a longer text"):
        cal.checkpoint_windows(plan.plan.options.calibration, plan.checkpoint)
