"""apps/chat (``edgekit chat``) driven through a real pty with scripted input on the built-in LFM2 GGUF bundle:
streaming, the tokens/s line, /reset, dropping old turns at the context limit, a message too long for the
context, Ctrl-C during an answer, and a bundle that is not a language model."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pexpect = pytest.importorskip("pexpect")

STATS = r"\[(\d+) tokens, [\d.]+ tok/s, first token \d+ ms, prompt (\d+) tokens\]"


def spawn(bundle: Path, *args: str) -> "pexpect.spawn":
    child = pexpect.spawn(sys.executable, ["-m", "edgekit", "chat", str(bundle), "--threads", "1", *args],
                          encoding="utf-8", timeout=60, dimensions=(50, 200))
    child.expect("commands: /reset")
    return child


def test_chat_turns_reset_and_context_limit(lfm2_gguf):
    child = spawn(lfm2_gguf, "--ctx", "160", "--max-tokens", "48", "--temperature", "0")
    child.expect_exact("> ")
    child.sendline("def fib(n):")
    child.expect(STATS)
    first_prompt = int(child.match.group(2))
    child.expect_exact("> ")
    child.sendline("import os")
    child.expect(STATS)
    assert int(child.match.group(2)) > first_prompt  # the second turn carries the first
    dropped = False
    for line in ("class Parser:", "for i in range(10):", "while True:"):
        child.expect_exact("> ")
        child.sendline(line)
        k = child.expect([r"\[context full: dropped the (\d+) oldest turn", STATS])
        if k == 0:
            dropped = True
            child.expect(STATS)
        assert int(child.match.group(2)) + 48 <= 160
    assert dropped
    child.expect_exact("> ")
    child.sendline("x = " + " + ".join(f"value_{k}" for k in range(120)))  # far beyond 160 - 48 tokens
    child.expect("cannot hold it")
    child.expect_exact("> ")
    child.sendline("/reset")
    child.expect_exact("[conversation reset]")
    child.expect_exact("> ")
    child.sendline("def fib(n):")
    child.expect(STATS)
    assert int(child.match.group(2)) == first_prompt  # a fresh conversation again
    child.expect_exact("> ")
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_ctrl_c_stops_the_answer_not_the_chat(lfm2_gguf):
    child = spawn(lfm2_gguf, "--ignore-eos", "--max-tokens", "4000", "--temperature", "0")
    child.expect_exact("> ")
    child.sendline("def main():")
    # the terminal echoes the line before chat reads it: wait past the echo, for answer text itself (an interrupt
    # sent on the echo could land in readline, before generation starts; seen once under load in CI)
    child.expect_exact("def main():\r\n")
    child.expect(r"\S+\s+\S+\s+\S+")  # answer text is streaming in
    child.sendintr()
    # a second Ctrl-C if the first one has not stopped the answer within a second (the answer takes ~3 s here);
    # a chat that ignores Ctrl-C still runs to 4000 tokens and fails below
    if child.expect([STATS + r" \[stopped\]", pexpect.TIMEOUT], timeout=1) == 1:
        child.sendintr()
        child.expect(STATS + r" \[stopped\]")
    assert int(child.match.group(1)) < 4000
    child.expect_exact("> ")
    child.sendline("/quit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_chat_refuses_a_solver_bundle(trm_onnx):
    import subprocess

    r = subprocess.run([sys.executable, "-m", "edgekit", "chat", str(trm_onnx)], capture_output=True, text=True,
                       input="", timeout=120)
    assert r.returncode == 2
    assert r.stderr.startswith("edgekit: error:") and "not a language model" in r.stderr


def test_template_rendering_and_fallback(lfm2_gguf, tmp_path):
    from edgekit.apps.textgen import ChatTemplate

    t = ChatTemplate.from_bundle(lfm2_gguf, {"model": {}})
    assert t.stop_texts[0] == "<|im_end|>" and t.bos_token == "<|startoftext|>"
    text = t.render([{"role": "user", "content": "hi"}])
    assert text == "<|startoftext|><|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    plain = ChatTemplate.from_bundle(tmp_path, {"model": {}})
    assert plain.source is None and plain.render([{"role": "user", "content": "hi"}]) == "User: hi\nAssistant:"


def test_stream_text_stops_at_stop_tokens_and_strings(lfm2_gguf):
    """apps/textgen.stream_text on the real engine: a stop token ends the answer before it (not emitted), a stop
    string cuts the text before it, EOS ids are left to the session (so ignore_eos works)."""
    from edgekit import load
    from edgekit.apps.textgen import Outcome, stop_token_ids, stream_text
    from edgekit.runtimes import SamplingParams

    s = load(lfm2_gguf, n_threads=1)
    try:
        assert stop_token_ids(s, ["<|im_end|>"]) == {s.tokenize("<|im_end|>", add_special=False)[0]}
        assert not stop_token_ids(s, []) and 2 not in stop_token_ids(s, ["<|im_end|>"])
        ids = s.tokenize("def fib(n):")
        params = SamplingParams(max_tokens=24, temperature=0)
        full = s.generate(ids, params)
        k = next(i for i in range(3, 24) if full.tokens[i] not in full.tokens[:i])  # a first occurrence
        out = Outcome()
        text = "".join(stream_text(s, ids, params, out, stop_ids=frozenset({full.tokens[k]})))
        assert out.tokens == full.tokens[:k] and out.finish_reason == "stop"
        assert text == s.detokenize(full.tokens[:k])
        stop = full.text[len(full.text) // 2:][:4]
        out = Outcome()
        text = "".join(stream_text(s, ids, params, out, stop_strings=[stop]))
        assert text == full.text[: full.text.index(stop)] and out.finish_reason == "stop"
        out = Outcome()
        assert "".join(stream_text(s, ids, params, out)) == full.text and out.finish_reason == "length"
    finally:
        s.close()
