"""The language kind's golden outputs (see ``edgekit.golden``).

``write`` runs the merged PyTorch reference on the verification text's windows (the same windows as
``verify``) and stores, per position, the reference's top-K token ids and logits plus the log-sum-exp of the full
row, and its greedy continuation; also the host engine's argmax, so a device can be compared with the host as
well.  ``compare`` (device; numpy only) computes the verification metrics from a session against that data.
Mean KL is taken over the reference's top-K tokens plus one bucket for the rest of the vocabulary: merging
outcomes can only lower a KL divergence, so this is a slight under-estimate, and the top-K capture almost all of
the mass of a trained model.  max |Δlogit| is over the top-K logits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .. import DeviceCheck
from .parity import decided_top1, greedy_prefix, kl_drift

TOP_K = 16
TOKENIZER_SAMPLE_CHARS = 2000


def _lse(x: np.ndarray) -> np.ndarray:
    return np.logaddexp.reduce(x.astype(np.float64), axis=-1)


def write(root: Path, manifest: Mapping[str, Any], model: Any, progress: Callable[[str], None]) -> dict[str, Any]:
    """The golden data of the bundle at ``root`` from the merged reference ``model`` (its fidelity reference, built
    from the file's weights where the pair can read them back)."""
    from tokenizers import Tokenizer

    from ... import reference, runtimes
    from ...runtimes import SamplingParams
    from . import parity as verify

    tok = Tokenizer.from_file(str(root / "tokenizer.json"))
    text = verify.heldout_text()
    meta = manifest.get("model", {})
    bos = meta.get("bos_id") if meta.get("add_bos") else None
    top_ids, top_logits, lse, host_argmax = [], [], [], []
    # the fidelity reference (the file's own weights, the engine's activation quantisation): a device is held to
    # the fidelity thresholds, so it is compared with what the file itself computes, not with the float model
    model = verify.file_reference(Path(root), manifest, model)[1]
    host_metrics = (manifest.get("verification") or {}).get("metrics") or {}
    session = runtimes.load(root)
    try:
        window = min(verify.WINDOW, int(getattr(session, "n_ctx", verify.WINDOW)))  # sized to a small context
        wins = verify.windows(tok.encode(text, add_special_tokens=False).ids, bos, window, verify.MIN_TOKENS)
        n_greedy, n_prompt = verify.greedy_sizes(window)
        for i, w in enumerate(wins, 1):
            progress(f"golden: window {i}/{len(wins)}")
            ref = reference.logits(model, w)
            idx = np.argsort(-ref, axis=-1)[:, :TOP_K]
            top_ids.append(idx.tolist())
            top_logits.append(np.take_along_axis(ref, idx, axis=-1).round(5).tolist())
            lse.append(_lse(ref).round(6).tolist())
            host_argmax.append(session.logits(w).argmax(-1).tolist())
        prompt = wins[0][:n_prompt]
        host_greedy = session.generate(prompt, SamplingParams(max_tokens=n_greedy, stop_at_eos=False)).tokens
    finally:
        session.close()
    sample = text[:TOKENIZER_SAMPLE_CHARS]
    return {
        "top_k": TOP_K,
        "windows": wins,
        "reference": {"top_ids": top_ids, "top_logits": top_logits, "lse": lse},
        "host_engine": {"argmax": host_argmax, "greedy": list(host_greedy)},
        "greedy": {"prompt": list(prompt), "reference": reference.greedy(model, prompt, n_greedy)},
        "tokenizer": {"text": sample, "ids": tok.encode(sample, add_special_tokens=False).ids},
        # the host's quantisation cost, so a device's fidelity bars widen exactly as the host's did
        "cost": host_metrics.get("cost"),
        "fidelity_reference": host_metrics.get("fidelity_reference"),
        # and the float32 reference's own error, so a device's max |Δlogit| bar is the host's
        "reference_noise": host_metrics.get("reference_noise"),
        # and its sensitivity to where activations round, so a device's mean KL bar is the host's
        "act_noise_kl": host_metrics.get("act_noise_kl"),
    }


def window_positions(got: np.ndarray, top_ids: Sequence[Sequence[int]], top_logits: Sequence[Sequence[float]],
                     lse: Sequence[float]) -> dict[str, np.ndarray]:
    """``parity.position_stats`` from the golden top-K: margin, flip, impurity (from the top-K probabilities: the
    tail's squares are negligible) and KL over the top-K tokens plus one bucket for the rest."""
    ids = np.asarray(top_ids, dtype=np.int64)
    ref = np.asarray(top_logits, dtype=np.float64)
    got64 = got.astype(np.float64)
    log_p = ref - np.asarray(lse, dtype=np.float64)[:, None]
    log_q = np.take_along_axis(got64 - _lse(got64)[:, None], ids, axis=-1)
    p, q = np.exp(log_p), np.exp(log_q)
    p_tail = np.clip(1.0 - p.sum(-1), 1e-12, 1.0)
    q_tail = np.clip(1.0 - q.sum(-1), 1e-12, 1.0)
    kl = np.sum(p * (log_p - log_q), axis=-1) + p_tail * (np.log(p_tail) - np.log(q_tail))
    return {"margin": ref[:, 0] - ref[:, 1], "flip": got.argmax(-1) != ids[:, 0],
            "impurity": 1.0 - np.sum(p * p, axis=-1), "kl": np.maximum(kl, 0.0)}


def window_metrics(got: np.ndarray, top_ids: Sequence[Sequence[int]], top_logits: Sequence[Sequence[float]],
                   positions: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Per-window sums, poolable across windows: top-1 agreements and KL sum (from ``window_positions``), max
    |Δlogit| over the top-K logits."""
    ids = np.asarray(top_ids, dtype=np.int64)
    ref = np.asarray(top_logits, dtype=np.float64)
    return {
        "agree": float(np.sum(~positions["flip"])),
        "kl_sum": float(np.sum(positions["kl"])),
        "max_abs": float(np.max(np.abs(np.take_along_axis(got.astype(np.float64), ids, axis=-1) - ref))),
        "n": float(got.shape[0]),
    }


def compare(session: Any, golden: Mapping[str, Any]) -> DeviceCheck:
    """Run ``session`` on the golden windows and check the bundle's thresholds (numpy only)."""
    from ...runtimes import SamplingParams

    totals = {"agree": 0.0, "kl_sum": 0.0, "max_abs": 0.0, "n": 0.0}
    host_agree = 0.0
    ref = golden["reference"]
    positions = []
    for i, w in enumerate(golden["windows"]):
        got = session.logits(w)
        positions.append(window_positions(got, ref["top_ids"][i], ref["top_logits"][i], ref["lse"][i]))
        part = window_metrics(got, ref["top_ids"][i], ref["top_logits"][i], positions[-1])
        totals = {k: max(totals[k], part[k]) if k == "max_abs" else totals[k] + part[k] for k in totals}
        host_agree += float(np.sum(got.argmax(-1) == np.asarray(golden["host_engine"]["argmax"][i])))
    g = golden["greedy"]
    got_greedy = session.generate(g["prompt"], SamplingParams(max_tokens=len(g["reference"]), stop_at_eos=False)).tokens
    tok = golden["tokenizer"]
    metrics = {
        "top1": totals["agree"] / totals["n"],
        "mean_kl": totals["kl_sum"] / totals["n"],
        **decided_top1(positions, totals["kl_sum"] / totals["n"]),
        "kl_drift": kl_drift(positions),
        "max_abs_logit": totals["max_abs"],
        "tokens": int(totals["n"]),
        "greedy_prefix": greedy_prefix(g["reference"], got_greedy),
        "greedy_tokens": len(g["reference"]),
        "host_top1": host_agree / totals["n"],  # agreement with the host engine on the same bundle
        "host_greedy_prefix": greedy_prefix(golden["host_engine"]["greedy"], got_greedy),
        "tokenizer_match": session.tokenize(tok["text"], add_special=False) == tok["ids"],
        "cost": golden.get("cost"),
        "fidelity_reference": golden.get("fidelity_reference"),
        "reference_noise": golden.get("reference_noise"),
        "act_noise_kl": golden.get("act_noise_kl"),
    }
    from . import Thresholds

    t = Thresholds.from_dict(golden["thresholds"])
    fails = t.check(metrics)
    return DeviceCheck(metrics=metrics, thresholds=t.to_dict(), failures=tuple(fails))
