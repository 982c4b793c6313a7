"""Golden outputs: what a bundle must produce on any device, written on the host, checked on the device.

``write_golden`` (host; needs the export extra) runs the merged PyTorch reference on the verification text's
windows (the same windows as ``edgekit.verify``) and stores, per position, the reference's top-K token ids and
logits plus the log-sum-exp of the full row, and its greedy continuation; also the host engine's argmax, so a
device can be compared with the host as well.  The file is ``golden.json`` inside the bundle, listed in the
manifest, so it travels and is hashed with the bundle.

``compare`` (device; numpy only) computes the verification metrics from a session against that file.  Mean
KL is taken over the reference's top-K tokens plus one bucket for the rest of the vocabulary: merging outcomes
can only lower a KL divergence, so this is a slight under-estimate, and the top-K capture almost all of the
mass of a trained model.  max |Δlogit| is over the top-K logits.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .errors import BundleError
from .verify import greedy_prefix

GOLDEN = "golden.json"
SCHEMA = 1
TOP_K = 16
TOKENIZER_SAMPLE_CHARS = 2000


@dataclass(frozen=True)
class DeviceCheck:
    """The verification metrics measured on a device, and the failures against the bundle's thresholds."""

    metrics: Mapping[str, Any]
    thresholds: Mapping[str, Any]
    failures: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.failures


def _lse(x: np.ndarray) -> np.ndarray:
    return np.logaddexp.reduce(x.astype(np.float64), axis=-1)


def write_golden(bundle: str | Path, progress: Callable[[str], None] = print) -> Path:
    """Compute the golden outputs of ``bundle`` from its recorded source (+ adapter) and add them to it."""
    from tokenizers import Tokenizer

    from . import reference, runtimes, verify
    from .bundle import read_manifest, write_manifest
    from .checkpoint import open_checkpoint
    from .exporters import get
    from .lora import open_adapter
    from .plan import Target

    root = Path(bundle)
    manifest = read_manifest(root)
    ckpt = open_checkpoint(manifest["source"]["path"])
    if ckpt.sha256 != manifest["source"]["sha256"]:
        raise BundleError(f"{ckpt.path}: the checkpoint changed since the export; golden outputs would not match")
    lora = open_adapter(manifest["adapter"]["path"], ckpt) if manifest.get("adapter") else None
    progress(f"golden: loading reference {ckpt.path}" + (f" + adapter {lora.path}" if lora else ""))
    model = reference.load_reference(ckpt, lora)
    thresholds = (manifest.get("verification") or {}).get("thresholds") or get(
        Target(manifest["format"])
    ).thresholds[manifest["plan"]["quant"]["name"]].to_dict()

    tok = Tokenizer.from_file(str(root / "tokenizer.json"))
    text = verify.heldout_text()
    meta = manifest.get("model", {})
    bos = meta.get("bos_id") if meta.get("add_bos") else None
    wins = verify.windows(tok.encode(text, add_special_tokens=False).ids, bos, verify.WINDOW, verify.MIN_TOKENS)
    top_ids, top_logits, lse = [], [], []
    session = runtimes.load(root)
    try:
        host_argmax = []
        for i, w in enumerate(wins, 1):
            progress(f"golden: window {i}/{len(wins)}")
            ref = reference.logits(model, w)
            idx = np.argsort(-ref, axis=-1)[:, :TOP_K]
            top_ids.append(idx.tolist())
            top_logits.append(np.take_along_axis(ref, idx, axis=-1).round(5).tolist())
            lse.append(_lse(ref).round(6).tolist())
            host_argmax.append(session.logits(w).argmax(-1).tolist())
        prompt = wins[0][: verify.GREEDY_PROMPT]
        from .runtimes import SamplingParams

        host_greedy = session.generate(prompt, SamplingParams(max_tokens=verify.GREEDY_TOKENS, stop_at_eos=False)).tokens
    finally:
        session.close()
    sample = text[:TOKENIZER_SAMPLE_CHARS]
    golden = {
        "schema": SCHEMA,
        "artifact_sha256": manifest["files"][manifest["artifact"]["artifact"]]["sha256"],
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "top_k": TOP_K,
        "windows": wins,
        "reference": {"top_ids": top_ids, "top_logits": top_logits, "lse": lse},
        "host_engine": {"argmax": host_argmax, "greedy": list(host_greedy)},
        "greedy": {"prompt": list(prompt), "reference": reference.greedy(model, prompt, verify.GREEDY_TOKENS)},
        "tokenizer": {"text": sample, "ids": tok.encode(sample, add_special_tokens=False).ids},
        "thresholds": thresholds,
    }
    path = root / GOLDEN
    tmp = root / (GOLDEN + ".tmp")
    tmp.write_text(json.dumps(golden, separators=(",", ":")), encoding="utf-8")
    tmp.replace(path)
    write_manifest(root, manifest)  # list golden.json (size, sha256) so it is shipped and checked with the bundle
    return path


def read_golden(bundle: str | Path) -> dict[str, Any]:
    path = Path(bundle) / GOLDEN
    if not path.is_file():
        raise BundleError(f"{bundle}: no {GOLDEN}; write it on the export host with: edgekit golden {bundle}")
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("schema") != SCHEMA:
        raise BundleError(f"{path}: golden schema {data.get('schema')!r}; re-run: edgekit golden {bundle}")
    return data


def window_metrics(got: np.ndarray, top_ids: Sequence[Sequence[int]], top_logits: Sequence[Sequence[float]],
                   lse: Sequence[float]) -> dict[str, float]:
    """Per-window sums, poolable across windows: top-1 agreements, KL sum (top-K + tail), max |Δlogit|."""
    ids = np.asarray(top_ids, dtype=np.int64)
    ref = np.asarray(top_logits, dtype=np.float64)
    got64 = got.astype(np.float64)
    log_p = ref - np.asarray(lse, dtype=np.float64)[:, None]
    log_q_all = got64 - _lse(got64)[:, None]
    log_q = np.take_along_axis(log_q_all, ids, axis=-1)
    p, q = np.exp(log_p), np.exp(log_q)
    p_tail = np.clip(1.0 - p.sum(-1), 1e-12, 1.0)
    q_tail = np.clip(1.0 - q.sum(-1), 1e-12, 1.0)
    kl = np.sum(p * (log_p - log_q), axis=-1) + p_tail * (np.log(p_tail) - np.log(q_tail))
    return {
        "agree": float(np.sum(got.argmax(-1) == ids[:, 0])),
        "kl_sum": float(np.sum(np.maximum(kl, 0.0))),
        "max_abs": float(np.max(np.abs(np.take_along_axis(got64, ids, axis=-1) - ref))),
        "n": float(got.shape[0]),
    }


def compare(session: Any, golden: Mapping[str, Any]) -> DeviceCheck:
    """Run ``session`` on the golden windows and check the bundle's thresholds (numpy only)."""
    from .runtimes import SamplingParams

    totals = {"agree": 0.0, "kl_sum": 0.0, "max_abs": 0.0, "n": 0.0}
    host_agree = 0.0
    ref = golden["reference"]
    for i, w in enumerate(golden["windows"]):
        got = session.logits(w)
        part = window_metrics(got, ref["top_ids"][i], ref["top_logits"][i], ref["lse"][i])
        totals = {k: max(totals[k], part[k]) if k == "max_abs" else totals[k] + part[k] for k in totals}
        host_agree += float(np.sum(got.argmax(-1) == np.asarray(golden["host_engine"]["argmax"][i])))
    g = golden["greedy"]
    got_greedy = session.generate(g["prompt"], SamplingParams(max_tokens=len(g["reference"]), stop_at_eos=False)).tokens
    tok = golden["tokenizer"]
    metrics = {
        "top1": totals["agree"] / totals["n"],
        "mean_kl": totals["kl_sum"] / totals["n"],
        "max_abs_logit": totals["max_abs"],
        "tokens": int(totals["n"]),
        "greedy_prefix": greedy_prefix(g["reference"], got_greedy),
        "greedy_tokens": len(g["reference"]),
        "host_top1": host_agree / totals["n"],  # agreement with the host engine on the same bundle
        "host_greedy_prefix": greedy_prefix(golden["host_engine"]["greedy"], got_greedy),
        "tokenizer_match": session.tokenize(tok["text"], add_special=False) == tok["ids"],
    }
    t = golden["thresholds"]
    fails = []
    if metrics["top1"] < t["min_top1"]:
        fails.append(f"top-1 agreement {metrics['top1']:.4f} < {t['min_top1']}")
    if metrics["mean_kl"] > t["max_mean_kl"]:
        fails.append(f"mean KL {metrics['mean_kl']:.3e} > {t['max_mean_kl']:.1e}")
    if t.get("max_abs_logit") is not None and metrics["max_abs_logit"] > t["max_abs_logit"]:
        fails.append(f"max |Δlogit| {metrics['max_abs_logit']:.3e} > {t['max_abs_logit']}")
    if metrics["greedy_prefix"] < t.get("min_greedy_prefix", 0):
        fails.append(f"greedy tokens diverge at {metrics['greedy_prefix']} < {t['min_greedy_prefix']}")
    if not metrics["tokenizer_match"]:
        fails.append("the engine tokenizes the sample text differently from the checkpoint's tokenizer")
    return DeviceCheck(metrics=metrics, thresholds=dict(t), failures=tuple(fails))
