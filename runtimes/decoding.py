"""What step-driven engines share (ONNX Runtime, ExecuTorch's Method API): text <-> ids from the bundle's
tokenizer.json, a seeded sampler, and the timed prefill/decode loop.  No torch.

llama.cpp brings its own tokenizer, sampler and loop; the engines here run one forward call at a time, so
the loop lives in Python — it does nothing per token beyond one call, one argmax (or sample) and a list append.
"""

from __future__ import annotations

import time
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from ..errors import ContextLengthError, EdgekitError, require
from .protocol import Prompt, SamplingParams, StreamResult, Timing


@lru_cache(maxsize=1)
def _byte_level_table() -> dict[str, int]:
    """Byte-level BPE writes each byte as a printable stand-in character; this maps them back.  `tokenizers`
    decodes whole sequences only (a token ending inside a UTF-8 character comes back as U+FFFD), and streaming
    needs each token's exact bytes, so the table is rebuilt here from the scheme's definition."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {chr(b): b for b in printable}
    extra = 0
    for b in range(256):
        if b not in table.values():
            table[chr(256 + extra)] = b
            extra += 1
    return table


class TextCodec:
    """tokenizer.json of a bundle: encode, decode, and the raw bytes of one token (for streaming)."""

    def __init__(self, path: Path) -> None:
        tokenizers = require("tokenizers", "onnx")
        try:
            self.tok = tokenizers.Tokenizer.from_file(str(path))
        except Exception as exc:
            raise EdgekitError(f"{path}: cannot read the tokenizer ({exc})") from None
        added = self.tok.get_added_tokens_decoder()
        self.special = {t.content for t in added.values() if t.special}
        # an added token is stored as its plain text, not in the byte-level alphabet: "½" (U+00BD) is also the
        # byte-level stand-in of byte 0xBD, so it must be looked up by id, not guessed from its characters
        self._added = {int(i): t for i, t in added.items()}
        self._bytes: dict[int, bytes] = {}

    def encode(self, text: str, add_special: bool = True) -> list[int]:
        try:
            return self.tok.encode(text, add_special_tokens=add_special).ids
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - a Rust panic is a BaseException (pyo3's PanicException)
            raise EdgekitError(f"the bundle's tokenizer failed to encode ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); re-export the bundle") from None

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def piece(self, token: int) -> bytes:
        if token not in self._bytes:
            text = self.tok.id_to_token(token) or ""
            table = _byte_level_table()
            added = self._added.get(token)
            if added is not None:
                data = b"" if added.special else added.content.encode("utf-8")
            elif text in self.special:
                data = b""
            elif all(c in table for c in text):
                data = bytes(table[c] for c in text)
            else:  # an added, non-special token is stored as plain text
                data = text.encode("utf-8")
            self._bytes[token] = data
        return self._bytes[token]

    def prompt(self, prompt: Prompt) -> list[int]:
        tokens = self.encode(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
        if not tokens:
            raise EdgekitError("empty prompt")
        return tokens


class Sampler:
    """Greedy, or temperature + top-k + top-p over one logits row, seeded for reproducibility."""

    def __init__(self, params: SamplingParams) -> None:
        self.p = params
        self.rng = np.random.default_rng(params.seed)

    def __call__(self, row: np.ndarray) -> int:
        row = np.asarray(row).reshape(-1)
        if self.p.greedy:
            return int(row.argmax())
        z = row.astype(np.float64) / self.p.temperature
        k = min(self.p.top_k, z.size) if self.p.top_k > 0 else z.size
        idx = np.argpartition(-z, k - 1)[:k]
        idx = idx[np.argsort(-z[idx])]
        probs = np.exp(z[idx] - z[idx[0]])
        probs /= probs.sum()
        # smallest prefix reaching top_p; the float cumulative sum may end just under 1.0, so top_p = 1.0 would
        # point one past the end: keep at most every candidate
        keep = min(int(np.searchsorted(np.cumsum(probs), self.p.top_p) + 1), probs.size)
        probs = probs[:keep] / probs[:keep].sum()
        return int(idx[self.rng.choice(keep, p=probs)])


def check_fits(n_prompt: int, params: SamplingParams, n_ctx: int) -> None:
    if n_prompt + params.max_tokens > n_ctx:
        raise ContextLengthError(
            f"prompt ({n_prompt} tokens) + max_tokens ({params.max_tokens}) exceeds the context of {n_ctx}; "
            "shorten the prompt or lower max_tokens"
        )


def decode(
    prefill: Callable[[Sequence[int]], np.ndarray],
    step: Callable[[int], np.ndarray],
    tokens: Sequence[int],
    params: SamplingParams,
    result: StreamResult,
    eos_ids: set[int],
) -> Iterator[int]:
    """Prefill once, then one call per token; timings are the engine calls only.  ``prefill`` and ``step``
    return the next-token logits row and must start from / continue a fresh state."""
    sampler = Sampler(params)
    start = time.perf_counter()
    row = prefill(tokens)
    prefill_s = time.perf_counter() - start
    ttft = decode_s = 0.0
    steps = 0
    try:
        while True:
            token = sampler(row)
            if not ttft:
                ttft = time.perf_counter() - start
            if params.stop_at_eos and token in eos_ids:
                break
            result.tokens.append(token)
            yield token
            if len(result.tokens) >= params.max_tokens:
                break
            t = time.perf_counter()
            row = step(token)
            decode_s += time.perf_counter() - t
            steps += 1
    finally:
        result.timing = Timing(
            prompt_tokens=len(tokens), prefill_s=prefill_s, generated_tokens=steps, decode_s=decode_s, ttft_s=ttft
        )
