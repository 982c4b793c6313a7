"""The language-model kind: tokenizer in, token logits out (LFM2, BitNet).

Verification (``verify``): teacher-forced top-1 / mean KL / max |Δlogit| against the merged PyTorch reference,
greedy generation, tokenizer agreement.  Golden outputs (``golden``) carry the same check to a device.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from .. import tensor_check_rows
from .golden import compare as compare_golden
from .golden import write as write_golden
from .parity import run as verify


COST_WARN_FACTOR = 10.0
# The engine's own error (activation rounding it does differently, accumulation order, an F16 KV cache) is
# amplified by a sensitive model exactly as the quantisation error is: on a random-weight LFM2 whose q4_k_m
# costs mean KL 0.115 / top-1 0.38, llama.cpp's fidelity was 1.7e-3 / 0.90 (built-in model: cost 1.1e-2,
# fidelity 2.9e-4).  So the fidelity KL bar widens on such a model: the engine may add at most this share of the
# quantisation's KL (per recipe: ``Thresholds.fidelity_share``).  The top-1 bar does not widen: it counts only
# the positions the reference has decided (``parity.decided_top1``), which a correct engine keeps on any model.
FIDELITY_SHARE_OF_COST = 0.05
# ... but only for an error that looks like arithmetic: a KL above the recipe's own bar is accepted only when it
# does not grow along the sequence (``parity.kl_drift``: later positions' mean KL over the first positions';
# correct engines measured 0.92-1.12, a halved RoPE base 2.1).  Without this, a subtle graph bug on a model
# whose quantisation costs much hid under the widened bar (found by a new-user trial: RoPE base halved on a
# random model with another tokenizer, fidelity KL 2.3e-3 under a widened bar of 3.4e-3).
# Below DRIFT_FLOOR nats the check does not apply: there llama.cpp's F16 KV cache, whose error grows with the
# number of cached positions, dominates a float export's tiny KL (measured 2.3x at KL 1e-8 on a BitNet F32 GGUF).
MAX_KL_DRIFT = 1.5
DRIFT_FLOOR = 1e-4
# A max |Δlogit| bar is absolute, so it is only as model-independent as the float32 reference's own rounding
# error (``parity``: ``reference_noise``, the reference vs its float64 copy).  The bar is at least this many times
# that error: an engine is not held closer to the float32 reference than a few times that reference's distance
# from exact arithmetic.  Measured on a random BitNet of hidden 512, 2,048 tokens (README, "A max |Δlogit| bar on
# any model"): engine / reference noise = 1.84 (GGUF F16: 3.24e-2 / 1.76e-2; single windows 1.50-1.68) and 1.14
# (F32: 3.16e-3 / 2.78e-3); 3 leaves room for other CPUs' kernels.  A graph error is far above it: a RoPE base off
# by 0.1 % measured 0.14 against 8.3e-3.
REFERENCE_NOISE_FACTOR = 3.0
# Likewise the mean KL bar of a reference that rounds activations as the engine does: at least this many times its
# KL against itself with every rounded activation moved by one float32 ulp (``parity``: ``act_noise_kl``).  A
# value on a rounding edge goes either way depending on accumulation order; on a flat model one such flip in an
# early layer's keys moves every later position.  Measured on a random LFM2 of hidden 384 with a rank-1 adapter on
# every linear (ExecuTorch 8da8w, 2,048 tokens): the reference against itself 1.29e-3 to 1.49e-3 over four jitter
# seeds, the engine 1.04e-3 (0.75x; edgekit verify measured the reference 1.15e-3 with seeds 0-3 over its four windows) — with a bar of 1e-3 a correct export was refused.  Below this level the
# drift rule does not apply either: a flip's error persists along the sequence just as a RoPE error grows.
ACT_NOISE_FACTOR = 2.0
# The decode positions (``parity.DECODE_TOKENS`` per window, fed one token per call) are gated on their own: top-1
# where decided at the run's bar, and mean KL at most DECODE_KL_FACTOR x the run's KL bar (they are 1/16 of the
# positions, so their mean is noisier than the run's; a state lost between calls measures orders of magnitude above).
DECODE_KL_FACTOR = 4.0


@dataclass(frozen=True)
class Thresholds:
    """Pass criteria of the teacher-forced parity check for one (family, format, quant) recipe.

    ``min_top1`` / ``max_mean_kl`` / ``max_abs_logit`` / ``min_greedy_prefix`` hold the *fidelity* (the engine
    vs the reference built from the file's own weights; ``parity``); ``cost_kl`` is what the quant costs the
    built-in model (mean KL of that file reference vs the float one, nats/token): a cost more than
    ``COST_WARN_FACTOR`` times it draws a warning, never a refusal; ``max_cost_kl`` (``--max-kl``) is the
    user's optional hard budget on the cost."""

    min_top1: float
    max_mean_kl: float
    max_abs_logit: float | None = None  # only meaningful for float exports
    min_greedy_prefix: int = 0  # greedy tokens that must equal the reference before the first divergence
    cost_kl: float | None = None
    max_cost_kl: float | None = None
    # bars against the *float* model, for where the engine cannot be held to the file's weights (a separate
    # LoRA adapter switched in over a quantised base): the pre-issue-11 bars, measured on the built-in
    float_min_top1: float | None = None
    float_max_kl: float | None = None
    # this recipe's share of the cost the engine may add on a sensitive model (default FIDELITY_SHARE_OF_COST)
    fidelity_share: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Thresholds":
        keys = ("min_top1", "max_mean_kl", "max_abs_logit", "min_greedy_prefix", "cost_kl", "max_cost_kl",
                "float_min_top1", "float_max_kl", "fidelity_share")
        return cls(**{k: d[k] for k in keys if k in d})

    def fidelity_bars(self, m: Mapping[str, Any]) -> tuple[float, float]:
        """(top-1 bar, mean KL bar) of the fidelity: the recipe's, the KL bar widened where the quantisation
        itself costs this model much more (``FIDELITY_SHARE_OF_COST``); only when fidelity is measured against the
        file's own weights (otherwise fidelity and cost are one number).  The top-1 bar applies to
        ``fidelity_top1(m)``."""
        cost = m.get("cost")
        if self._to_float(m):
            return self.float_min_top1, self.float_max_kl if self.float_max_kl is not None else self.max_mean_kl
        if not cost or m.get("fidelity_reference") != "file weights":
            return self.min_top1, self.max_mean_kl
        share = FIDELITY_SHARE_OF_COST if self.fidelity_share is None else self.fidelity_share
        return self.min_top1, max(self.max_mean_kl, share * cost["mean_kl"], self.act_noise_bar(m))

    @staticmethod
    def act_noise_bar(m: Mapping[str, Any]) -> float:
        """``ACT_NOISE_FACTOR`` times the reference's KL against itself under a one-ulp activation jitter (0 where
        it rounds no activations)."""
        return ACT_NOISE_FACTOR * (m.get("act_noise_kl") or 0.0)

    def drift_floor(self, m: Mapping[str, Any]) -> float:
        """The fidelity mean KL above which the drift rule applies (``MAX_KL_DRIFT``)."""
        return max(self.max_mean_kl, DRIFT_FLOOR, self.act_noise_bar(m))

    def abs_bar(self, m: Mapping[str, Any]) -> float | None:
        """The max |Δlogit| bar: the recipe's, or ``REFERENCE_NOISE_FACTOR`` times the float32 reference's own error
        where that is larger (``parity``: ``reference_noise``); None where the recipe bounds no logit."""
        if self.max_abs_logit is None:
            return None
        return max(self.max_abs_logit, REFERENCE_NOISE_FACTOR * (m.get("reference_noise") or 0.0))

    def _to_float(self, m: Mapping[str, Any]) -> bool:
        """Held to the float model by its float bars (no read-back, a separate adapter switched in)."""
        return m.get("fidelity_reference", "file weights") != "file weights" and self.float_min_top1 is not None

    def fidelity_top1(self, m: Mapping[str, Any]) -> float:
        """The top-1 statistic the bar applies to: agreement on the positions the reference has decided
        (``parity.decided_top1``) where measured against the file's weights; raw agreement otherwise (the float
        bars were measured on it; metrics recorded before it existed)."""
        return m["top1"] if self._to_float(m) else m.get("top1_decided", m["top1"])

    def warnings(self, m: Mapping[str, Any]) -> list[str]:
        """A quantisation cost far above the built-in model's for this quant (one line each; not failures)."""
        cost = m.get("cost")
        if not cost or self.cost_kl is None or not cost["mean_kl"] > COST_WARN_FACTOR * self.cost_kl:
            return []
        return [f"quantisation cost mean KL {cost['mean_kl']:.2e} is {cost['mean_kl'] / self.cost_kl:.0f}x what this "
                f"quant costs the built-in model ({self.cost_kl:.1e}); consider a wider quant or --max-kl"]

    def check(self, m: Mapping[str, Any]) -> list[str]:
        """Failures of metrics ``m`` against these thresholds (one line each); NaN never passes."""
        fails = list((m.get("tensor_check") or {}).get("failures", []))
        top1_bar, kl_bar = self.fidelity_bars(m)
        top1 = self.fidelity_top1(m)
        if not top1 >= top1_bar:
            where = "" if self._to_float(m) or "top1_decided" not in m else (
                f" where the reference's margin exceeds {m['margin']:.3g} nats")
            fails.append(f"fidelity top-1 agreement {top1:.4f}{where} < {top1_bar:.4g}")
        if not m["mean_kl"] <= kl_bar:
            fails.append(f"fidelity mean KL {m['mean_kl']:.3e} > {kl_bar:.2e}" + (
                f" ({ACT_NOISE_FACTOR:g}x the reference's own KL under a one-ulp activation jitter, "
                f"{m['act_noise_kl']:.2e})" if kl_bar == self.act_noise_bar(m) > 0 else ""))
        elif (m["mean_kl"] > self.drift_floor(m) and not self._to_float(m)
              and not (m.get("kl_drift") or 1.0) <= MAX_KL_DRIFT):
            fails.append(
                f"fidelity mean KL {m['mean_kl']:.3e} is above this quant's own bar {self.drift_floor(m):.1e} and grows "
                f"along the sequence ({m['kl_drift']:.2f}x from the first positions to the rest, > {MAX_KL_DRIFT}): "
                "an error that builds up with position (RoPE, KV cache, state), not the engine's rounding")
        fails += self._decode_failures(m, top1_bar, kl_bar)
        cost = m.get("cost")
        if self.max_cost_kl is not None and cost and not cost["mean_kl"] <= self.max_cost_kl:
            fails.append(f"quantisation cost mean KL {cost['mean_kl']:.3e} > --max-kl {self.max_cost_kl:.1e}")
        # held to the float model by its float bars (no read-back): the logit and greedy bars, which hold the engine
        # to the file's own weights, do not apply
        to_float = self._to_float(m)
        abs_bar = self.abs_bar(m)
        if abs_bar is not None and not to_float and not m["max_abs_logit"] <= abs_bar:
            widened = "" if abs_bar == self.max_abs_logit else (
                f" ({REFERENCE_NOISE_FACTOR:g}x the float32 reference's own error {m['reference_noise']:.2e})")
            fails.append(f"max |Δlogit| {m['max_abs_logit']:.3e} > {abs_bar:.3g}{widened}")
        # a context too small for the default greedy run compares fewer tokens (parity.greedy_sizes): all must agree
        if not to_float and m["greedy_prefix"] < min(self.min_greedy_prefix, m["greedy_tokens"]):
            fails.append(f"greedy tokens diverge at {m['greedy_prefix']} < {self.min_greedy_prefix}")
        if not m["tokenizer_match"]:
            fails.append("the engine tokenizes the held-out text differently from the checkpoint's tokenizer")
        if not m.get("text_prompt_match", True):
            fails.append("greedy generation from the text prompt differs from generation from its token ids")
        return fails

    def _decode_failures(self, m: Mapping[str, Any], top1_bar: float, kl_bar: float) -> list[str]:
        d = m.get("decode")
        if not d or self._to_float(m):
            return []
        fails = []
        if d["decided"] > 0 and not d["top1_decided"] >= top1_bar:
            fails.append(f"decode steps (one token per call, {d['positions']} positions): top-1 where decided "
                         f"{d['top1_decided']:.4f} < {top1_bar:.4g}: the state carried between calls is wrong")
        if not d["mean_kl"] <= DECODE_KL_FACTOR * kl_bar:
            fails.append(f"decode steps (one token per call, {d['positions']} positions): mean KL {d['mean_kl']:.3e} > "
                         f"{DECODE_KL_FACTOR:g} x {kl_bar:.2e}: the state carried between calls is wrong")
        return fails

    def rows(self, m: Mapping[str, Any]) -> list[tuple[str, str, str]]:
        tensor = tensor_check_rows(m)
        cost = m.get("cost") or {}
        budget = f"<= {self.max_cost_kl:.0e}" if self.max_cost_kl is not None else (
            f"built-in {self.cost_kl:.1e}" if self.cost_kl is not None else "reported")
        costs = [
            ("cost: top-1 vs float", f"{cost['top1']:.4f}", "vs float"),
            ("cost: mean KL", f"{cost['mean_kl']:.2e}", budget),
            ("cost: KL / entropy", f"{cost['kl_rel']:.2e}", f"H={cost['entropy']:.2f} nats"),
        ] if cost else []
        top1_bar, kl_bar = self.fidelity_bars(m)
        decided = [] if self._to_float(m) or "top1_decided" not in m else [
            (f"fidelity: top-1, margin > {m['margin']:.2g}",
             f"{m['top1_decided']:.4f}" if m["decided"] > 0 else "n/a", f">= {top1_bar:.4g}" if m["decided"] > 0
             else "no position decided: the KL gates"),
            ("fidelity: top-1, all positions", f"{m['top1']:.4f}",
             f"{m['decided']:.0%} decided, noise {m['noise']:.2g} nats"),
        ]
        return tensor + (decided or [("fidelity: top-1 agreement", f"{m['top1']:.4f}", f">= {top1_bar:.4g}")]) + [
            ("fidelity: mean KL", f"{m['mean_kl']:.2e}", f"<= {kl_bar:.2g}" + (
                "" if m.get("act_noise_kl") is None else f", reference's own {m['act_noise_kl']:.1e}")),
        ] + ([] if m.get("kl_drift") is None else [
            ("fidelity: KL later/first positions", f"{m['kl_drift']:.2f}", "-" if self._to_float(m) else (
                f"<= {MAX_KL_DRIFT}" if m["mean_kl"] > self.drift_floor(m)
                else f"reported (gated above KL {self.drift_floor(m):.1e})")),
        ]) + ([] if not m.get("decode") else [
            (f"decode steps ({m['decode']['positions']}): top-1 / KL",
             f"{m['decode']['top1_decided']:.4f} / {m['decode']['mean_kl']:.1e}",
             "reported" if self._to_float(m) else f">= {top1_bar:.4g} / <= {DECODE_KL_FACTOR * kl_bar:.2g}"),
        ]) + [
            ("max |Δlogit|", f"{m['max_abs_logit']:.2e}", "-" if self.max_abs_logit is None else (
                f"<= {self.abs_bar(m):.3g}" + ("" if m.get("reference_noise") is None
                                              else f", reference's own {m['reference_noise']:.1e}"))),
            ("greedy prefix", f"{m['greedy_prefix']}/{m['greedy_tokens']}",
             f">= {self.min_greedy_prefix}" if self.min_greedy_prefix else "reported"),
            ("tokenizer match", str(m["tokenizer_match"]), "True"),
            ("text prompt match", str(m.get("text_prompt_match", "-")), "True"),
        ] + costs


def bundle_files(checkpoint: Any) -> list[Path]:
    """The tokenizer files that travel with the artifact."""
    return list(checkpoint.tokenizer_files)


def metadata(checkpoint: Any, artifact: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The manifest's ``model`` section: what a session needs to tokenize, stop and size its context."""
    from tokenizers import Tokenizer

    cfg = checkpoint.model_config
    eos = set(cfg.eos_token_ids)
    gen_eos = checkpoint.generation_config.get("eos_token_id")
    if gen_eos is not None:
        eos |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos])
    tok = Tokenizer.from_file(str(checkpoint.path / "tokenizer.json"))
    with_special = tok.encode("a", add_special_tokens=True).ids
    plain = tok.encode("a", add_special_tokens=False).ids
    bos = cfg.bos_token_id
    return {
        "vocab_size": cfg.vocab_size,
        "context_length": cfg.max_position_embeddings,
        "bos_id": bos,
        "eos_ids": sorted(eos),
        "pad_id": cfg.pad_token_id,
        "add_bos": bos is not None and with_special[:1] == [bos] and len(with_special) > len(plain),
        "chat_template": checkpoint.chat_template,
        "kv_values_per_position": cfg.kv_values_per_position(),
        "config": cfg.to_dict(),
    }


def summary(m: Mapping[str, Any]) -> str:
    """One line of verification metrics (``edgekit info``)."""
    decided = f" ({m['top1_decided']:.4f} where decided)" if "top1_decided" in m else ""
    line = (
        f"top-1 {m['top1']:.4f}{decided}, mean KL {m['mean_kl']:.2e}, max |Δlogit| {m['max_abs_logit']:.2e}, "
        f"greedy {m['greedy_prefix']}/{m['greedy_tokens']}"
    )
    cost, tc = m.get("cost"), m.get("tensor_check")
    if cost is None:
        return line
    tensors = "n/a" if tc is None else ("PASS" if tc["passed"] else "FAIL")
    return (f"tensor check {tensors}; fidelity {line}; quantisation cost top-1 {cost['top1']:.4f}, "
            f"mean KL {cost['mean_kl']:.2e}")


def io(checkpoint: Any) -> dict[str, Any]:
    return {"input": "token ids [n]", "output": "logits [n, vocab]", "state": "engine-managed (KV cache, conv state)"}
