"""The llama.cpp session: protocol, streaming, sampling, timing, and no torch on the device side."""

import subprocess
import sys

import pytest

from conftest import exported
from edgekit.errors import BundleError, EdgekitError
from edgekit.runtimes import LanguageSession, SamplingParams, StreamResult, load
from edgekit.runtimes.protocol import utf8_text


@pytest.fixture(scope="module")
def session(export_cache):
    s = load(exported(export_cache, "builtin:lfm2-tiny", "gguf", "q8_0", adapter="builtin:lfm2-tiny-lora"))
    yield s
    s.close()


def test_is_a_language_session(session):
    assert isinstance(session, LanguageSession)
    assert session.engine == "llama.cpp"


def test_tokenize_roundtrip(session):
    text = "def f(x):\n    return x * 2\n"
    ids = session.tokenize(text, add_special=False)
    assert session.detokenize(ids) == text
    assert session.tokenize(text)[0] == session.manifest["model"]["bos_id"]


def test_greedy_is_deterministic_and_timed(session):
    p = SamplingParams(max_tokens=16, stop_at_eos=False)
    a = session.generate("import os\n", p)
    b = session.generate("import os\n", p)
    assert a.tokens == b.tokens and len(a.tokens) == 16
    assert a.timing.prompt_tokens == len(session.tokenize("import os\n"))
    assert a.timing.prefill_s > 0 and a.timing.decode_s > 0 and a.timing.decode_tps > 0


def test_sampling_with_seed(session):
    p = SamplingParams(max_tokens=24, temperature=1.2, top_k=200, top_p=1.0, seed=7, stop_at_eos=False)
    a, b = session.generate("class ", p), session.generate("class ", p)
    assert a.tokens == b.tokens
    greedy = session.generate("class ", SamplingParams(max_tokens=24, stop_at_eos=False))
    others = [session.generate("class ", SamplingParams(**{**p.__dict__, "seed": s})).tokens for s in range(3)]
    assert any(o != greedy.tokens for o in others)


def test_stream_equals_generate(session):
    p = SamplingParams(max_tokens=20, stop_at_eos=False)
    result = StreamResult()
    streamed = "".join(session.stream("for i in range(", p, result))
    assert streamed == session.generate("for i in range(", p).text
    assert len(result.tokens) == 20


def test_stream_survives_split_utf8(session):
    text = "naïve → 😀 ok"
    pieces = [session._llm.detokenize([t]) for t in session.tokenize(text, add_special=False)]
    assert any(_is_partial(p) for p in pieces)  # the byte-level vocab really splits these characters
    assert "".join(utf8_text(pieces)) == text


def _is_partial(piece: bytes) -> bool:
    try:
        piece.decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True


def test_logits_shape_and_fresh_state(session):
    ids = session.tokenize("x = 1\ny = 2\n")
    a, b = session.logits(ids), session.logits(ids)
    assert a.shape == (len(ids), session.manifest["model"]["vocab_size"])
    assert (a == b).all()


def test_prompt_longer_than_context(session):
    with pytest.raises(EdgekitError, match="exceeds the context"):
        session.generate(list(range(5, 5000)), SamplingParams(max_tokens=4))


def test_corrupt_gguf_is_a_clear_error(export_cache, tmp_path):
    import shutil

    bundle = shutil.copytree(exported(export_cache, "builtin:lfm2-tiny", "gguf", "q8_0", adapter="builtin:lfm2-tiny-lora"), tmp_path / "b")
    size = (bundle / "model.gguf").stat().st_size
    (bundle / "model.gguf").write_bytes(b"\0" * size)  # same size, garbage content
    with pytest.raises(BundleError, match="sha256 differs"):  # refused before llama.cpp maps the file
        load(bundle)
    with pytest.raises(BundleError, match="llama.cpp could not load"):  # --no-check: the engine's own refusal
        load(bundle, check=False)


def test_loading_a_gguf_bundle_imports_no_torch(export_cache):
    bundle = exported(export_cache, "builtin:lfm2-tiny", "gguf", "q8_0", adapter="builtin:lfm2-tiny-lora")
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
        "import edgekit\n"
        f"s = edgekit.load({str(bundle)!r})\n"
        "from edgekit.runtimes import SamplingParams\n"
        "print(len(s.generate('import ', SamplingParams(max_tokens=4, stop_at_eos=False)).tokens))\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "4"
