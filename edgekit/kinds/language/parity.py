"""Parity: an export against the merged PyTorch reference, on the same tokens, teacher-forced — in three parts.

1. **Tensor check** (``edgekit.tensorcheck``): every weight read back from the written file and dequantised, vs
   the merged float weight (name, shape, per-block error in quantisation steps, relative RMS error per type).
2. **Fidelity**: the engine vs a reference built from *the file's own weights* (dequantised), with the engine's
   activation quantisation simulated; near-exact for every quant, so graph and packing bugs cannot hide under
   quantisation noise.  ``top1`` / ``mean_kl`` / ``max_abs_logit`` / greedy tokens are these numbers; the top-1
   gate counts only positions the reference has decided (``decided_top1``), so a flat model's near-ties, which
   any correct engine's arithmetic flips, do not refuse a correct export.  Where a recipe bounds max |Δlogit|
   (float exports), ``reference_noise`` is the float32 reference's own error: max |Δlogit| between it and its
   float64 copy on the same windows (None when the family's forward cannot run in float64).  On a model with
   large logits it exceeds a bar measured on the built-in model (a random BitNet of hidden 512, logit std 6.9:
   1.8e-2 with F16 activation rounding, 2.8e-3 without, where the engine measured 3.2e-2 / 3.2e-3), so the
   bar scales with it (``language.REFERENCE_NOISE_FACTOR``).  Where the reference rounds activations as the
   engine does (8da*, Q8_0 / Q8_K, MatMulNBits accuracy level 4), ``act_noise_kl`` is its mean KL against itself
   with every rounded activation moved by about one float32 ulp first (``tensorcheck.activation_jitter``): which
   way a value on a rounding edge goes is decided by accumulation order, so no engine can be held closer than
   that.  On a flat random model it exceeds the recipe's bar (an LFM2 of hidden 384 with a rank-1 adapter on
   every linear, ExecuTorch 8da8w: 1.15e-3 in verification, 1.29e-3 to 1.49e-3 under four other jitter seeds,
   against a bar of 1e-3, where the engine measured 1.045e-3), so the KL
   bar scales with it too (``language.ACT_NOISE_FACTOR``).
3. **Quantisation cost** (reported, not a gate unless ``--max-kl``): that file reference vs the float reference —
   top-1, mean KL and KL relative to the float model's own mean next-token entropy (``metrics["cost"]``); a
   warning when it is far above what the quant costs on the built-in model (``Thresholds.cost_kl``).

Metrics over a held-out text of at least ``MIN_TOKENS`` tokens, in windows of ``WINDOW`` tokens each starting
from a fresh state; plus ``GREEDY_TOKENS`` greedy tokens from a prompt, compared token by token; plus whether the
engine tokenizes the text exactly as the checkpoint's own tokenizer does.  The last ``DECODE_TOKENS`` positions of
each window are fed one token per call (the decode path) and are also gated on their own (``decode``).  A pair without a read-back yet
(``file_weights`` in its pair file) skips part 1, and its fidelity reference is the float one.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ...errors import EdgekitError
from .. import Report

WINDOW = 512
MIN_TOKENS = 2048
GREEDY_TOKENS = 32
GREEDY_PROMPT = 48
# the last positions of every window are fed one token per call (``LanguageSession.logits(decode_from=)``): the
# path generation decodes on, state carried between calls; a new-user trial zeroed an ONNX conv state after every
# call and only the (ungated) greedy run noticed
DECODE_TOKENS = 32


def heldout_text() -> str:
    return resources.files("edgekit").joinpath("data/heldout.txt").read_text(encoding="utf-8")


def compare_logits(ref: np.ndarray, got: np.ndarray,
                   stats: Mapping[str, np.ndarray] | None = None) -> dict[str, float]:
    """Per-position sums so windows can be pooled: agreeing top-1 count, KL sum, max |Δ|, and the reference's
    next-token entropy sum (nats); ``stats``: ``position_stats(ref, got)`` where the caller has it already."""
    s = position_stats(ref, got) if stats is None else stats
    return {
        "agree": float(np.sum(~s["flip"])),
        "kl_sum": float(np.sum(s["kl"])),
        "max_abs": float(np.max(np.abs(ref.astype(np.float64) - got.astype(np.float64)))),
        "entropy_sum": float(np.sum(s["entropy"])),
        "n": float(ref.shape[0]),
    }


# A flip of the top-1 token at a reference margin (top-1 minus top-2 logit) above this many logit-noise sigmas has
# odds below 1e-5 under the engine's own noise (Gaussian per-logit noise sigma: the difference of two tokens'
# errors has sigma*sqrt(2), and P(N(0,1) > 6/sqrt(2)) ~ 1e-5); such a flip is a wrong graph, not arithmetic.
DECIDED_SIGMAS = 6.0


# The first positions of every window, against which the rest is compared (``kl_drift``).
DRIFT_HEAD = 64


def position_stats(ref: np.ndarray, got: np.ndarray) -> dict[str, np.ndarray]:
    """Per position: the reference's top-1 minus top-2 logit margin, whether the engine's top-1 differs, the
    reference's Gini impurity 1 - sum p^2 (how much of its probability is spread: the KL that per-logit noise of
    variance s^2 causes is about s^2/2 times it), KL(reference || engine) and the reference's entropy (nats)."""
    ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
    top2 = np.partition(ref64, -2, axis=-1)[:, -2:]
    log_p = ref64 - np.logaddexp.reduce(ref64, axis=-1, keepdims=True)
    p = np.exp(log_p)
    log_q = got64 - np.logaddexp.reduce(got64, axis=-1, keepdims=True)
    return {"margin": top2[:, 1] - top2[:, 0], "flip": ref.argmax(-1) != got.argmax(-1),
            "impurity": 1.0 - np.sum(p * p, axis=-1), "kl": np.sum(p * (log_p - log_q), axis=-1),
            "entropy": -np.sum(p * log_p, axis=-1)}


def kl_drift(stats: Sequence[Mapping[str, np.ndarray]]) -> float | None:
    """Mean fidelity KL over the positions after the first ``DRIFT_HEAD`` of each window, over the mean KL of
    those first positions (None: windows too short, or no error at all).  An engine's arithmetic (activation
    rounding, accumulation order) errs about as much at every position: measured 0.92-1.12 on correct GGUF and
    ONNX exports of the built-in and of flat random models.  An error that builds up along the sequence — a
    wrong RoPE base or variant, a KV-cache or state bug — does not: a GGUF with its RoPE base halved measured 2.1
    (bench/RESULTS.md, "Fidelity on a flat model")."""
    head = [s["kl"][:DRIFT_HEAD] for s in stats if len(s["kl"]) > 2 * DRIFT_HEAD]
    tail = [s["kl"][DRIFT_HEAD:] for s in stats if len(s["kl"]) > 2 * DRIFT_HEAD]
    if not head:
        return None
    h = float(np.mean(np.concatenate(head)))
    return float(np.mean(np.concatenate(tail))) / h if h > 0 else None


def decided_top1(stats: Sequence[Mapping[str, np.ndarray]], mean_kl: float) -> dict[str, float]:
    """Top-1 agreement where the reference has decided: over positions whose top-1/top-2 margin exceeds
    ``DECIDED_SIGMAS`` times the engine's measured logit noise ``sigma = sqrt(2 * mean_kl / mean impurity)``
    (nats: for small per-logit noise of variance s^2, KL(p || q) ~ Var_p(noise)/2 ~ s^2 (1 - sum p^2) / 2).

    On a flat (uncertain) model most positions are near-ties that any correct engine's arithmetic flips; raw top-1
    then measures the model's confidence, not the engine.  This statistic does not: a correct engine scores ~1.0 on
    any model, and a wrong graph flips decided tokens.  The noise it is measured against is itself bounded by the
    mean-KL bar, so a noisy engine cannot hide flips behind a large sigma.  Returns ``top1_decided``,
    ``decided`` (the fraction of positions counted), ``noise`` (sigma) and ``margin`` (the cut, nats)."""
    margin = np.concatenate([s["margin"] for s in stats])
    flip = np.concatenate([s["flip"] for s in stats])
    impurity = float(np.mean(np.concatenate([s["impurity"] for s in stats])))
    sigma = float(np.sqrt(2.0 * max(mean_kl, 0.0) / impurity)) if impurity > 0 else 0.0
    cut = DECIDED_SIGMAS * sigma
    decided = margin > cut
    return {"top1_decided": float(1.0 - flip[decided].mean()) if decided.any() else 1.0,
            "decided": float(decided.mean()), "noise": sigma, "margin": cut}


def decode_split(session: Any, window: Sequence[int]) -> int | None:
    """Where the window's decode positions start (None: the session has no ``decode_from``)."""
    import inspect

    if "decode_from" not in inspect.signature(session.logits).parameters:
        return None
    return len(window) - min(DECODE_TOKENS, len(window) // 4)


def decode_metrics(stats: Sequence[Mapping[str, np.ndarray]], starts: Sequence[int | None],
                   mean_kl: float) -> dict[str, float] | None:
    """The fidelity of the decode positions alone (``stats`` per window, cut at ``starts``): positions, mean KL
    and top-1 where decided at the whole run's margin cut (``decided_top1`` with the run's ``mean_kl``)."""
    parts = [{k: v[s:] for k, v in st.items()} for st, s in zip(stats, starts) if s is not None]
    if not parts or not sum(len(p["kl"]) for p in parts):
        return None
    d = decided_top1(parts, mean_kl)
    kl = np.concatenate([p["kl"] for p in parts])
    return {"positions": int(kl.size), "mean_kl": float(kl.mean()), "top1_decided": d["top1_decided"],
            "decided": d["decided"]}


def _pool(totals: dict[str, float], part: dict[str, float]) -> dict[str, float]:
    return {k: max(totals.get(k, 0.0), part[k]) if k == "max_abs" else totals.get(k, 0.0) + part[k] for k in part}


def file_reference(root: Path, manifest: Any, reference: Any) -> tuple[Any, Any]:
    """(tensor check or None, the reference built from the file's weights — ``reference`` itself where the
    pair has no read-back)."""
    from ... import tensorcheck

    return tensorcheck.file_reference(root, manifest, reference)


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
    max_kl: float | None = None,
) -> Report:
    """Check ``session`` (any LanguageSession) of the bundle at ``root`` (whose ``tokenizer.json`` is the
    checkpoint's) against ``reference`` (the merged float torch model): tensor check, fidelity, cost (module
    docstring); ``thresholds`` is a ``language.Thresholds``; ``max_kl``: an optional hard budget on the cost's
    mean KL (nats/token).  Raises ``EdgekitError`` when the text is too short; a failed check is in the report."""
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
    from ... import tensorcheck

    adapter_on = getattr(session, "active_adapter", None) is not None
    if not adapter_on or tensorcheck.keeps_adapter_hooks(session.manifest):
        # a separate adapter switched in: ``reference`` is the base with the adapter's branches as forward hooks
        # (``adapters.adapter_reference``), so the file's base weights go under them and the adapter stays float,
        # as the engine computes it (a new-user trial: held to the float model's raw top-1 bar, a correct int8
        # bundle of a flat model was refused)
        progress("verify: reading the weights back from the file (tensor check)")
        tcheck, qref = file_reference(Path(root), session.manifest, reference)
    else:  # the family's file reference cannot carry the adapter: the engine is held to the float model
        tcheck, qref = None, reference
    fid: dict[str, float] = {}
    cost: dict[str, float] = {}
    stats: list[dict[str, np.ndarray]] = []
    # the float32 reference's own rounding error, where a max |Δlogit| bar applies (module docstring, part 2)
    twin = ref_mod.float64_copy(qref) if thresholds.max_abs_logit is not None else None
    noise = 0.0 if twin is not None else None
    # and, where the reference rounds activations as the engine does, its own sensitivity to where they round
    jitter = bool(getattr(qref, "edgekit_act_quant", None))
    act_noise = 0.0 if jitter else None
    starts: list[int | None] = []
    for i, w in enumerate(wins, 1):
        progress(f"verify: window {i}/{len(wins)} ({len(w)} tokens)")
        float_logits = ref_mod.logits(reference, w)
        starts.append(decode_split(session, w))
        engine_logits = session.logits(w) if starts[-1] is None else session.logits(w, decode_from=starts[-1])
        file_logits = float_logits if qref is reference else ref_mod.logits(qref, w)
        if twin is not None:
            noise = max(noise, float(np.abs(file_logits - ref_mod.logits64(twin, w)).max()))
        if jitter:
            with tensorcheck.activation_jitter(seed=i):
                act_noise += float(position_stats(file_logits, ref_mod.logits(qref, w))["kl"].sum())
        stats.append(position_stats(file_logits, engine_logits))
        fid = _pool(fid, compare_logits(file_logits, engine_logits, stats[-1]))
        # without a read-back the engine itself is the only measure of what quantisation cost
        cost = _pool(cost, compare_logits(float_logits, engine_logits if qref is reference else file_logits))
    totals = fid
    n_greedy, n_prompt = greedy_sizes(window)
    prompt = wins[0][:n_prompt]
    progress(f"verify: {n_greedy} greedy tokens")
    from ...runtimes import SamplingParams

    ref_greedy = ref_mod.greedy(qref, prompt, n_greedy)
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
        **decided_top1(stats, totals["kl_sum"] / totals["n"]),
        "kl_drift": kl_drift(stats),
        "decode": decode_metrics(stats, starts, totals["kl_sum"] / totals["n"]),
        "max_abs_logit": totals["max_abs"],
        "reference_noise": noise,
        "act_noise_kl": None if act_noise is None else act_noise / totals["n"],
        "tokens": int(totals["n"]),
        "windows": len(wins),
        "greedy_prefix": greedy_prefix(ref_greedy, got),
        "greedy_tokens": n_greedy,
        "reference_greedy": ref_greedy,
        "engine_greedy": list(got),
        "text_prompt_match": from_text == from_ids,
        "tokenizer_match": session.tokenize(sample, add_special=False) == tok.encode(sample, add_special_tokens=False).ids,
        "text_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "fidelity_reference": "file weights" if qref is not reference else (
            "float (no read-back for this pair)" if getattr(session, "active_adapter", None) is None
            else "float (a separate adapter is switched in; the file holds the base)"),
        "act_quant": sorted({str(v) for v in getattr(qref, "edgekit_act_quant", {}).values()}),
        "tensor_check": tcheck.to_dict() if tcheck is not None else None,
        "cost": {
            "top1": cost["agree"] / cost["n"],
            "mean_kl": cost["kl_sum"] / cost["n"],
            "entropy": cost["entropy_sum"] / cost["n"],
            "kl_rel": (cost["kl_sum"] / cost["entropy_sum"]) if cost["entropy_sum"] > 0 else 0.0,
        },
    }
    if max_kl is not None:
        thresholds = replace(thresholds, max_cost_kl=max_kl)
    metrics["warnings"] = thresholds.warnings(metrics)
    for w in metrics["warnings"]:
        progress(f"warning: {w}")
    return Report(
        metrics=metrics, thresholds=thresholds.to_dict(), failures=thresholds.check(metrics),
        rows=thresholds.rows(metrics), summary=f"{metrics['tokens']} tokens in {metrics['windows']} windows",
    )
