"""The pieces step-driven engines share: sampler, byte-exact token pieces, the timed decode loop."""

import numpy as np
import pytest

from edgekit.builtin import ROOT
from edgekit.errors import ContextLengthError
from edgekit.runtimes.decoding import Sampler, TextCodec, check_fits, decode
from edgekit.runtimes.protocol import SamplingParams, StreamResult, utf8_text


def test_sampler_greedy_and_seeded():
    row = np.array([0.1, 3.0, 2.9, -1.0])
    assert Sampler(SamplingParams())(row) == 1
    p = SamplingParams(temperature=1.0, top_k=3, top_p=1.0, seed=3)
    a = [Sampler(p)(row) for _ in range(5)]
    s = Sampler(p)
    draws = [s(row) for _ in range(200)]
    assert a == [a[0]] * 5  # a fresh sampler with the same seed starts the same way
    assert set(draws) <= {0, 1, 2} and len(set(draws)) > 1  # top-k 3 excludes index 3


def test_sampler_top_p_keeps_the_head():
    row = np.log(np.array([0.7, 0.2, 0.05, 0.05]))
    s = Sampler(SamplingParams(temperature=1.0, top_k=0, top_p=0.8, seed=0))
    assert set(s(row) for _ in range(300)) == {0, 1}


def test_codec_pieces_rebuild_text_exactly():
    codec = TextCodec(ROOT / "lfm2-tiny" / "tokenizer.json")
    text = "naïve → 😀 <|im_end|> ok"
    ids = codec.encode(text, add_special=False)
    pieces = [codec.piece(i) for i in ids]
    assert "".join(utf8_text(pieces)) == text.replace("<|im_end|>", "")
    assert codec.decode(ids) == text.replace("<|im_end|>", "")


def test_decode_loop_times_engine_calls_and_stops_at_eos():
    rows = {0: np.array([0.0, 1.0, 0.0]), 1: np.array([0.0, 0.0, 1.0]), 2: np.array([1.0, 0.0, 0.0])}
    calls = []

    def prefill(tokens):
        calls.append(("prefill", list(tokens)))
        return rows[0]

    def step(token):
        calls.append(("step", token))
        return rows[token]

    result = StreamResult()
    out = list(decode(prefill, step, [5, 6], SamplingParams(max_tokens=10), result, eos_ids={0}))
    assert out == [1, 2] and result.tokens == [1, 2]
    assert calls == [("prefill", [5, 6]), ("step", 1), ("step", 2)]
    assert result.timing.prompt_tokens == 2 and result.timing.generated_tokens == 2


def test_check_fits():
    check_fits(10, SamplingParams(max_tokens=6), 16)
    with pytest.raises(ContextLengthError, match="exceeds the context of 16"):
        check_fits(11, SamplingParams(max_tokens=6), 16)
