"""Parity: an export against the merged PyTorch reference, on the same tokens, teacher-forced.

Metrics over a held-out text of at least ``MIN_TOKENS`` tokens, in windows of ``WINDOW`` tokens each starting
from a fresh state: top-1 agreement, mean KL(reference || export), max |Δlogit|; plus ``GREEDY_TOKENS`` greedy
tokens from a prompt, compared token by token; plus whether the engine tokenizes the text exactly as the
checkpoint's own tokenizer does.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ...errors import EdgekitError
from .. import Report

WINDOW = 512
MIN_TOKENS = 2048
GREEDY_TOKENS = 32
GREEDY_PROMPT = 48


def heldout_text() -> str:
    return resources.files("edgekit").joinpath("data/heldout.txt").read_text(encoding="utf-8")


def compare_logits(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    """Per-position sums so windows can be pooled: agreeing top-1 count, KL sum, max |Δ|."""
    ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
    log_p = ref64 - np.logaddexp.reduce(ref64, axis=-1, keepdims=True)
    log_q = got64 - np.logaddexp.reduce(got64, axis=-1, keepdims=True)
    kl = np.sum(np.exp(log_p) * (log_p - log_q), axis=-1)
    return {
        "agree": float(np.sum(ref.argmax(-1) == got.argmax(-1))),
        "kl_sum": float(np.sum(kl)),
        "max_abs": float(np.max(np.abs(ref64 - got64))),
        "n": float(ref.shape[0]),
    }


def windows(ids: Sequence[int], bos: int | None, window: int, min_tokens: int) -> list[list[int]]:
    body = window - (1 if bos is not None else 0)
    out: list[list[int]] = []
    for start in range(0, len(ids) - body + 1, body):
        out.append(([bos] if bos is not None else []) + list(ids[start : start + body]))
        if sum(len(w) for w in out) >= min_tokens:
            break
    return out


def greedy_sizes(n_ctx: int) -> tuple[int, int]:
    """(greedy tokens, prompt tokens) of the greedy check, fitted to a context of ``n_ctx`` positions: the defaults
    (``GREEDY_TOKENS`` after ``GREEDY_PROMPT``) where they fit, else half the context each (minus one position of
    headroom), so a small model (``--max-context 64``, a 64-position config) verifies instead of failing on a
    prompt the user never gave."""
    if n_ctx >= GREEDY_PROMPT + GREEDY_TOKENS + 1:
        return GREEDY_TOKENS, GREEDY_PROMPT
    tokens = max(1, min(GREEDY_TOKENS, (n_ctx - 1) // 2))
    return tokens, max(1, min(GREEDY_PROMPT, n_ctx - 1 - tokens))


def greedy_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def run(
    session: Any,
    reference: Any,
    root: Path,
    thresholds: Any,
    text: str | None = None,
    window: int = WINDOW,
    min_tokens: int = MIN_TOKENS,
    progress: Callable[[str], None] = print,
) -> Report:
    """Compare ``session`` (any LanguageSession) with ``reference`` (the merged torch model, from the bundle at
    ``root``, whose ``tokenizer.json`` is the checkpoint's); ``thresholds`` is a ``language.Thresholds``."""
    from tokenizers import Tokenizer

    from ... import reference as ref_mod

    text = heldout_text() if text is None else text
    tok = Tokenizer.from_file(str(Path(root) / "tokenizer.json"))
    ids = tok.encode(text, add_special_tokens=False).ids
    bos = session.manifest.get("model", {}).get("bos_id") if session.manifest.get("model", {}).get("add_bos") else None
    window = min(window, int(getattr(session, "n_ctx", window)))
    wins = windows(ids, bos, window, min_tokens)
    if sum(len(w) for w in wins) < min_tokens:
        raise EdgekitError(f"verification text has {len(ids)} tokens; at least {min_tokens} are needed")
    totals = {"agree": 0.0, "kl_sum": 0.0, "max_abs": 0.0, "n": 0.0}
    for i, w in enumerate(wins, 1):
        progress(f"verify: window {i}/{len(wins)} ({len(w)} tokens)")
        part = compare_logits(ref_mod.logits(reference, w), session.logits(w))
        totals = {k: max(totals[k], part[k]) if k == "max_abs" else totals[k] + part[k] for k in totals}
    n_greedy, n_prompt = greedy_sizes(window)
    prompt = wins[0][:n_prompt]
    progress(f"verify: {n_greedy} greedy tokens")
    from ...runtimes import SamplingParams

    ref_greedy = ref_mod.greedy(reference, prompt, n_greedy)
    got = session.generate(prompt, SamplingParams(max_tokens=n_greedy, stop_at_eos=False)).tokens
    # an engine may generate from text on another path (ExecuTorch: its C++ runner); both must agree
    prompt_text = tok.decode(wins[0][1 if bos is not None else 0 : n_prompt])
    greedy = SamplingParams(max_tokens=n_greedy)
    from_text = session.generate(prompt_text, greedy).tokens
    from_ids = session.generate(session.tokenize(prompt_text), greedy).tokens
    from ...tokenizer_check import probe_text

    sample = text[:4000] + probe_text(tok)  # non-ASCII, digits, added tokens: not only ASCII prose
    metrics = {
        "top1": totals["agree"] / totals["n"],
        "mean_kl": totals["kl_sum"] / totals["n"],
        "max_abs_logit": totals["max_abs"],
        "tokens": int(totals["n"]),
        "windows": len(wins),
        "greedy_prefix": greedy_prefix(ref_greedy, got),
        "greedy_tokens": n_greedy,
        "reference_greedy": ref_greedy,
        "engine_greedy": list(got),
        "text_prompt_match": from_text == from_ids,
        "tokenizer_match": session.tokenize(sample, add_special=False) == tok.encode(sample, add_special_tokens=False).ids,
        "text_sha256": hashlib.sha256(text.encode()).hexdigest(),
    }
    return Report(
        metrics=metrics, thresholds=thresholds.to_dict(), failures=thresholds.check(metrics),
        rows=thresholds.rows(metrics), summary=f"{metrics['tokens']} tokens in {metrics['windows']} windows",
    )
