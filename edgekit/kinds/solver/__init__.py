"""The solver kind: a puzzle grid in, a grid out (TRM, HRM).

A bundle holds one supervision step (state in, state out, logits and halting logits) and the reset carry
(``carry_init.npz``); the session (``runtimes.solver``) runs the ACT loop with early halting.  Verification runs
the engine and PyTorch references over the same puzzles for every step without halting (the official
evaluation), in three parts (issue 11, as for the language kind):

1. **Tensor check** (``edgekit.tensorcheck``): every weight read back from the bundle (the pair's
   ``file_weights``) and held to the float reference's within its storage type's bound, the reset carry included.
2. **Fidelity**: the engine vs a reference built from the file's own weights with the engine's activation
   quantisation simulated (``tensorcheck.fidelity_reference``): max |Δlogit| and max |Δq| over all steps, the
   fraction of puzzles whose answers (argmax of the final step) are identical, and the fraction whose halting
   step is identical under ``halt=True`` — these are the gated numbers.
3. **Quantisation cost** (reported; ``metrics["cost"]``): that file reference vs the float reference: identical
   answers, identical cells, max |Δlogit|; a warning when far more answers change than on the built-in model.

A pair without a read-back compares the engine with the float reference (fidelity and cost are then one number).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from .. import DeviceCheck, Report, tensor_check_rows

CARRY_FILE = "carry_init.npz"
COST_WARN_FACTOR = 10.0
HELD_OUT = "held_out.npz"  # optional beside a checkpoint: inputs [N, seq_len], labels, puzzle_identifiers
N_PUZZLES = 64
SEED = 0


@dataclass(frozen=True)
class Thresholds:
    """Pass criteria of a solver export: identical answers (fraction of puzzles) and, for float exports, the
    largest logit error over every step."""

    min_answer_match: float
    max_abs_logit: float | None = None
    min_halt_match: float = 0.0  # fraction of puzzles halting at the same step as the reference
    # what the quant costs the built-in model (identical answers, file reference vs float): a cost with more
    # than COST_WARN_FACTOR times as many changed answers draws a warning, never a refusal
    cost_answer_match: float | None = None
    # the engine's numerics on one step from the reset state (before the ACT loop amplifies them), vs the file's
    # weights: the quantised recipes' logit gate (the all-step max |Δlogit| of a random-weight model is chaotic)
    max_first_step_logit: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Thresholds":
        keys = ("min_answer_match", "max_abs_logit", "min_halt_match", "cost_answer_match", "max_first_step_logit")
        return cls(**{k: d[k] for k in keys if k in d})

    def bars(self, m: Mapping[str, Any]) -> tuple[float, float]:
        """(identical answers bar, halting-step bar) of the fidelity: the recipe's, lowered to what the
        quantisation itself keeps on this model (``m["cost"]``) when fidelity is measured against the file's
        weights — on a random-weight model whose answers flip with any rounding (the official fixtures: int8 keeps
        17 % of the answers against the float model), the engine may not change more answers than quantisation
        does, but it is not held to a trained model's 99 %."""
        cost = m.get("cost")
        if not cost or m.get("fidelity_reference") != "file weights":
            return self.min_answer_match, self.min_halt_match
        return min(self.min_answer_match, cost["answer_match"]), min(self.min_halt_match, cost["halt_match"])

    def warnings(self, m: Mapping[str, Any]) -> list[str]:
        cost = m.get("cost")
        if not cost or self.cost_answer_match is None:
            return []
        changed, usual = 1.0 - cost["answer_match"], 1.0 - self.cost_answer_match
        if changed <= COST_WARN_FACTOR * max(usual, 1.0 / max(1, int(m["puzzles"]))):
            return []
        return [f"quantisation changes {changed:.1%} of the answers against the float model (the built-in model: "
                f"{usual:.1%}); consider a wider quant"]

    def check(self, m: Mapping[str, Any]) -> list[str]:
        fails = list((m.get("tensor_check") or {}).get("failures", []))
        answers, halts = self.bars(m)
        if not m["answer_match"] >= answers:
            fails.append(f"identical answers {m['answer_match']:.4f} < {answers:.4g}")
        if self.max_abs_logit is not None and not m["max_abs_logit"] <= self.max_abs_logit:
            fails.append(f"max |Δlogit| {m['max_abs_logit']:.3e} > {self.max_abs_logit}")
        first = m.get("first_step_max_abs_logit")
        if self.max_first_step_logit is not None and first is not None and not first <= self.max_first_step_logit:
            fails.append(f"first-step max |Δlogit| {first:.3e} > {self.max_first_step_logit}")
        if not m["halt_match"] >= halts:
            fails.append(f"halting step agreement {m['halt_match']:.4f} < {halts:.4g}")
        return fails

    def rows(self, m: Mapping[str, Any]) -> list[tuple[str, str, str]]:
        tensor = tensor_check_rows(m)
        cost = m.get("cost") or {}
        costs = [
            ("cost: identical answers vs float", f"{cost['answer_match']:.4f}",
             f"built-in {self.cost_answer_match:.4f}" if self.cost_answer_match is not None else "reported"),
            ("cost: identical cells vs float", f"{cost['cell_match']:.4f}", "reported"),
            ("cost: max |Δlogit| vs float", f"{cost['max_abs_logit']:.2e}", "reported"),
        ] if cost else []
        answers, halts = self.bars(m)
        first = m.get("first_step_max_abs_logit")
        return tensor + [
            ("identical answers", f"{m['answer_match']:.4f}", f">= {answers:.4g}"),
            ("max |Δlogit|", f"{m['max_abs_logit']:.2e}", f"<= {self.max_abs_logit}" if self.max_abs_logit else "-"),
            ("first-step max |Δlogit|", f"{first:.2e}" if first is not None else "-",
             f"<= {self.max_first_step_logit}" if self.max_first_step_logit else "-"),
            ("max |Δq|", f"{m['max_abs_q']:.2e}", "-"),
            ("halt step match", f"{m['halt_match']:.4f}", f">= {halts:.4g}"),
            ("exact solves", f"{m['engine_exact']:.4f}" if m.get("engine_exact") is not None else "-",
             f"reference {m['reference_exact']:.4f}" if m.get("reference_exact") is not None else "-"),
        ] + costs


def bundle_files(checkpoint: Any) -> list[Path]:
    return [checkpoint.path / HELD_OUT] if (checkpoint.path / HELD_OUT).is_file() else []


def metadata(checkpoint: Any, artifact: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The manifest's ``model`` section: what a solver session needs to size and check its inputs (the
    sequence length is the one the exported graph was built for)."""
    cfg = checkpoint.model_config
    return {
        "seq_len": (artifact or {}).get("seq_len", cfg.seq_len),
        "vocab_size": cfg.vocab_size,
        "num_puzzle_identifiers": cfg.num_puzzle_identifiers,
        "prefix_len": cfg.prefix_len,
        "hidden_size": cfg.hidden_size,
        "halt_max_steps": cfg.halt_max_steps,
        "halt_on_continue": cfg.halt_on_continue,
        "kv_values_per_position": 0,
        "config": cfg.to_dict(),
    }


def io(checkpoint: Any) -> dict[str, Any]:
    return {
        "input": "inputs int64 [batch, seq_len] (official dataset token ids), puzzle_identifiers int64 [batch]",
        "state": "z_H, z_L float32 [batch, prefix_len + seq_len, hidden]; reset carry in " + CARRY_FILE,
        "output": "logits [batch, seq_len, vocab], q_halt_logits [batch], q_continue_logits [batch], next state",
    }


def summary(m: Mapping[str, Any]) -> str:
    line = (
        f"identical answers {m['answer_match']:.4f}, max |Δlogit| {m['max_abs_logit']:.2e}, "
        f"halt match {m['halt_match']:.4f} on {m['puzzles']} puzzles"
    )
    cost, tc = m.get("cost"), m.get("tensor_check")
    if cost is None:
        return line
    tensors = "n/a" if tc is None else ("PASS" if tc["passed"] else "FAIL")
    return (f"tensor check {tensors}; fidelity {line}; quantisation cost: identical answers "
            f"{cost['answer_match']:.4f}, cells {cost['cell_match']:.4f}")


def puzzles(root: Path, meta: Mapping[str, Any], n: int = N_PUZZLES) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(inputs [n, seq_len] int64, puzzle_identifiers [n] int64, labels or None): the held-out puzzles that
    travel with the bundle where there are any, else seeded random token grids (the engine-vs-reference
    comparison needs valid inputs, not solvable ones)."""
    held = root / HELD_OUT
    if held.is_file():
        try:
            data = np.load(held, allow_pickle=False)
            _ = data["inputs"]
        except (ValueError, KeyError, OSError) as exc:
            from ...errors import CheckpointError

            raise CheckpointError(f"{held}: not a held-out puzzle set (an .npz with 'inputs'; {exc})") from None
        x = np.asarray(data["inputs"], dtype=np.int64)[:n]
        ids = np.asarray(data["puzzle_identifiers"], dtype=np.int64)[:n] if "puzzle_identifiers" in data else np.zeros(len(x), np.int64)
        labels = np.asarray(data["labels"], dtype=np.int64)[:n] if "labels" in data else None
        return x, ids, labels
    rng = np.random.default_rng(SEED)
    x = rng.integers(1, int(meta["vocab_size"]), size=(n, int(meta["seq_len"])), dtype=np.int64)
    ids = rng.integers(0, int(meta["num_puzzle_identifiers"]), size=n, dtype=np.int64)
    return x, ids, None


def _exact(preds: np.ndarray, labels: np.ndarray | None) -> float | None:
    return None if labels is None else float(np.mean(np.all(preds == labels, axis=-1)))


def compare(engine: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray], labels: np.ndarray | None) -> dict[str, Any]:
    """Metrics from per-step outputs of both sides (numpy): ``logits_per_step`` [N, B, S, V], ``q_halt_per_step``,
    ``q_continue_per_step`` [N, B], ``halt_steps`` [B] (the step each puzzle halts at under halt=True)."""
    answers_e = engine["logits_per_step"][-1].argmax(-1)
    answers_r = ref["logits_per_step"][-1].argmax(-1)
    dq = max(float(np.max(np.abs(engine[k] - ref[k]))) for k in ("q_halt_per_step", "q_continue_per_step"))
    return {
        "puzzles": int(answers_e.shape[0]),
        "steps": int(engine["logits_per_step"].shape[0]),
        "answer_match": float(np.mean(np.all(answers_e == answers_r, axis=-1))),
        "cell_match": float(np.mean(answers_e == answers_r)),
        "max_abs_logit": float(np.max(np.abs(engine["logits_per_step"] - ref["logits_per_step"]))),
        # one step from the same reset state: the engine's numerics before the ACT loop amplifies them
        "first_step_max_abs_logit": float(np.max(np.abs(engine["logits_per_step"][0] - ref["logits_per_step"][0]))),
        "max_abs_q": dq,
        "halt_match": float(np.mean(engine["halt_steps"] == ref["halt_steps"])),
        "engine_exact": _exact(answers_e, labels),
        "reference_exact": _exact(answers_r, labels),
    }


def engine_outputs(session: Any, x: np.ndarray, ids: np.ndarray) -> dict[str, np.ndarray]:
    full = session.solve(x, ids, halt=False, keep_steps=True)
    halted = session.solve(x, ids, halt=True)
    return {
        "logits_per_step": full.logits_per_step,
        "q_halt_per_step": full.q_halt_per_step,
        "q_continue_per_step": full.q_continue_per_step,
        "halt_steps": halted.steps,
    }


def reference_outputs(model: Any, x: np.ndarray, ids: np.ndarray) -> dict[str, np.ndarray]:
    from ...families.trm.reference import run

    full = run(model, x, ids, halt=False)
    halted = run(model, x, ids, halt=True)
    return {
        "logits_per_step": full.logits_per_step.float().numpy(),
        "q_halt_per_step": full.q_halt_logits_per_step.float().numpy(),
        "q_continue_per_step": full.q_continue_logits_per_step.float().numpy(),
        "halt_steps": halted.steps.numpy(),
    }


def file_reference(root: Path, manifest: Mapping[str, Any], reference: Any) -> tuple[Any, Any]:
    """(tensor check or None, the reference built from the file's weights — ``reference`` itself where the pair
    has no read-back)."""
    from ... import tensorcheck

    return tensorcheck.file_reference(root, manifest, reference)


def verify(
    session: Any, reference: Any, root: Path, thresholds: Thresholds, progress: Callable[[str], None] = print
) -> Report:
    x, ids, labels = puzzles(Path(root), session.manifest["model"])
    progress("verify: reading the weights back from the file (tensor check)")
    tcheck, qref = file_reference(Path(root), session.manifest, reference)
    progress(f"verify: {len(x)} puzzles, every step through the engine and the references")
    float_out = reference_outputs(reference, x, ids)
    file_out = float_out if qref is reference else reference_outputs(qref, x, ids)
    engine = engine_outputs(session, x, ids)
    m = compare(engine, file_out, labels)
    cost = compare(engine if qref is reference else file_out, float_out, labels)
    m["fidelity_reference"] = "file weights" if qref is not reference else "float (no read-back for this pair)"
    m["act_quant"] = sorted({str(v) for v in getattr(qref, "edgekit_act_quant", {}).values()})
    m["tensor_check"] = tcheck.to_dict() if tcheck is not None else None
    m["cost"] = {k: cost[k] for k in ("answer_match", "cell_match", "max_abs_logit", "halt_match")}
    m["cost"]["file_reference_exact"] = cost["engine_exact"]
    m["warnings"] = thresholds.warnings(m)
    for w in m["warnings"]:
        progress(f"warning: {w}")
    return Report(
        metrics=m, thresholds=thresholds.to_dict(), failures=thresholds.check(m), rows=thresholds.rows(m),
        summary=f"{m['puzzles']} puzzles x {m['steps']} steps",
    )


def write_golden(root: Path, manifest: Mapping[str, Any], model: Any, progress: Callable[[str], None]) -> dict[str, Any]:
    """The device check's expected outputs: the reference built from the file's weights (fidelity) where the
    pair has a read-back, else the float reference."""
    x, ids, labels = puzzles(root, manifest["model"])
    progress(f"golden: {len(x)} puzzles through the reference")
    _tc, qref = file_reference(Path(root), manifest, model)
    ref = reference_outputs(qref, x, ids)
    return {
        "inputs": x.tolist(),
        "puzzle_identifiers": ids.tolist(),
        "labels": None if labels is None else labels.tolist(),
        "reference": {k: np.asarray(v).round(5).tolist() for k, v in ref.items()},
    }


def compare_golden(session: Any, golden: Mapping[str, Any]) -> DeviceCheck:
    x = np.asarray(golden["inputs"], dtype=np.int64)
    ids = np.asarray(golden["puzzle_identifiers"], dtype=np.int64)
    ref = {k: np.asarray(v, dtype=np.float32 if k != "halt_steps" else np.int64) for k, v in golden["reference"].items()}
    labels = None if golden.get("labels") is None else np.asarray(golden["labels"], dtype=np.int64)
    m = compare(engine_outputs(session, x, ids), ref, labels)
    t = Thresholds.from_dict(golden["thresholds"])
    return DeviceCheck(metrics=m, thresholds=t.to_dict(), failures=tuple(t.check(m)))
