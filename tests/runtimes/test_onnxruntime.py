"""The ONNX exporter's plan checks and the onnxruntime wrapper: protocol, state, bad input, no torch on load."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import exported
from edgekit.bundle import read_manifest, write_manifest
from edgekit.errors import BundleError, ContextLengthError, StateError, UnsupportedError
from edgekit.export import export, make_plan
from edgekit.runtimes import LanguageSession, SamplingParams, StreamResult

BASE, LORA = "builtin:lfm2-tiny", "builtin:lfm2-tiny-lora"


@pytest.fixture(scope="module")
def bundle(export_cache) -> Path:
    return exported(export_cache, BASE, "onnx", "fp32", adapter=LORA)


@pytest.fixture()
def session(bundle):
    import edgekit

    s = edgekit.load(bundle, n_threads=1)
    yield s
    s.close()


def test_session_protocol_and_generation(session):
    assert isinstance(session, LanguageSession) and session.engine == "onnxruntime"
    ids = session.tokenize("def main():\n    ")
    assert session.detokenize(ids[1:]) == "def main():\n    "
    result = StreamResult()
    text = "".join(session.stream(ids, SamplingParams(max_tokens=12, stop_at_eos=False), result))
    assert len(result.tokens) == 12 and text == session.detokenize(result.tokens)
    t = result.timing
    assert t.prompt_tokens == len(ids) and t.generated_tokens == 11 and t.prefill_tps > 0 and t.decode_tps > 0
    again = session.generate(ids, SamplingParams(max_tokens=12, stop_at_eos=False))
    assert again.tokens == result.tokens  # a fresh state per call: greedy is repeatable
    sampled = session.generate(ids, SamplingParams(max_tokens=8, temperature=0.8, seed=1, stop_at_eos=False))
    assert sampled.tokens == session.generate(ids, SamplingParams(max_tokens=8, temperature=0.8, seed=1,
                                                                   stop_at_eos=False)).tokens


def test_decode_with_state_equals_teacher_forced_logits(session):
    """Prefill + one-token steps through the bound state give the same rows as one all-positions call."""
    ids = [1] + list(range(300, 319))
    full = session.logits(ids)
    state = session.new_state()
    rows = [session.forward(ids[:12], state)[-1]]
    rows += [session.forward([t], state)[-1] for t in ids[12:]]
    assert np.abs(np.stack(rows) - full[11:]).max() < 1e-4
    assert state.position == len(ids)


def test_wrong_state_shape_is_a_state_error(session):
    state = session.new_state()
    name = next(iter(state.in_place))
    state.in_place[name] = np.zeros((1, 1, 8, 8), np.float32)
    with pytest.raises(StateError, match=name.replace(".", r"\.")):
        session.forward([1, 2, 3], state)
    state = session.new_state()
    conv = next(iter(state.swap))
    state.swap[conv][0] = np.zeros((1, 3, 2), np.float32)
    with pytest.raises(StateError, match="new_state"):
        session.forward([1, 2, 3], state)


def test_prompt_longer_than_context(bundle):
    import edgekit

    s = edgekit.load(bundle, n_ctx=32)
    try:
        with pytest.raises(ContextLengthError, match="context of 32"):
            s.generate(list(range(5, 40)), SamplingParams(max_tokens=4))
        with pytest.raises(ContextLengthError, match="max_tokens"):
            s.generate(list(range(5, 25)), SamplingParams(max_tokens=20))
        with pytest.raises(ContextLengthError):
            s.logits(list(range(5, 40)))
    finally:
        s.close()


def test_onnx_file_inputs_not_matching_the_manifest(bundle, tmp_path):
    """A model.onnx whose inputs differ from the recorded signature is refused with a BundleError."""
    import shutil

    import onnx

    bad = tmp_path / "bad"
    shutil.copytree(bundle, bad)
    model = onnx.load(str(bad / "model.onnx"), load_external_data=False)
    conv = next(i for i in model.graph.input if i.name.startswith("past."))
    old, new = conv.name, conv.name.replace("past.", "past_state.")
    conv.name = new  # renamed where it is consumed too, so the graph itself stays valid
    for node in model.graph.node:
        node.input[:] = [new if x == old else x for x in node.input]
    onnx.save(model, str(bad / "model.onnx"))
    write_manifest(bad, read_manifest(bad))  # file sizes updated: only the signature check can catch it
    import edgekit

    with pytest.raises(BundleError, match="does not match its manifest"):
        edgekit.load(bad)


def test_conv_state_shape_inconsistent_with_manifest(bundle, tmp_path):
    import shutil

    bad = tmp_path / "bad-state"
    shutil.copytree(bundle, bad)
    m = read_manifest(bad)
    m["artifact"]["state"]["past.0.conv"]["shape"][2] = 3
    write_manifest(bad, m)
    import edgekit

    with pytest.raises(BundleError, match="state past.0.conv"):
        edgekit.load(bad)


def test_options_are_validated_when_planning():
    with pytest.raises(UnsupportedError, match="--head-bits applies to --quant int4 / int2 only"):
        make_plan(BASE, "onnx", "fp32", options={"head_bits": 8})
    with pytest.raises(UnsupportedError, match="--block-size"):
        make_plan(BASE, "onnx", "int4", options={"block_size": 7})
    with pytest.raises(UnsupportedError, match="int3"):
        make_plan(BASE, "onnx", "int3")


def test_int4_options_reach_the_file(export_cache, tmp_path):
    out = tmp_path / "b64"
    # the plain assignment (the default's mixed precision only takes its bytes as the budget)
    export(make_plan(BASE, "onnx", "int4", options={"block_size": 64, "head_bits": 8, "mixed_precision": False}),
           out, verify=False, progress=lambda _m: None)
    import onnx

    model = onnx.load(str(out / "model.onnx"), load_external_data=False)
    nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    attrs = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in nbits]
    assert {a["block_size"] for a in attrs} == {64}
    assert sorted({a["bits"] for a in attrs}) == [4, 8]
    gbq = next(n for n in model.graph.node if n.op_type == "GatherBlockQuantized")
    assert {a.name: onnx.helper.get_attribute_value(a) for a in gbq.attribute}["bits"] == 8
    assert read_manifest(out)["artifact"]["quant"] == {"name": "int4", "block_size": 64, "accuracy_level": 4,
                                                       "head_bits": 8, "algorithm": "affine"}


def test_genai_config_names_the_graph_io(bundle):
    cfg = json.loads((bundle / "genai_config.json").read_text())["model"]
    sig = read_manifest(bundle)["artifact"]["signature"]
    dec = cfg["decoder"]
    assert cfg["type"] == "lfm2" and dec["filename"] == "model.onnx"
    for i, kind in enumerate(dec["layer_types"]):
        if kind == "conv":
            assert dec["inputs"]["past_conv_names"] % i in sig["inputs"]
            assert dec["outputs"]["present_conv_names"] % i in sig["outputs"]
        else:
            assert dec["inputs"]["past_key_names"] % i in sig["inputs"]
            assert dec["outputs"]["present_value_names"] % i in sig["outputs"]
    assert sig["inputs"]["past.0.conv"] == ["float", ["batch_size", 256, dec["conv_cache_size"]]]


def test_loading_does_not_import_torch(bundle):
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import edgekit\n"
        "from edgekit.runtimes import SamplingParams\n"
        f"s = edgekit.load({str(bundle)!r})\n"
        "g = s.generate('def f(x):', SamplingParams(max_tokens=4, stop_at_eos=False))\n"
        "assert len(g.tokens) == 4\n"
        "assert 'transformers' not in sys.modules, 'transformers was imported'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
