"""Solver sessions (TRM/HRM bundles): the ACT loop over one exported supervision step, with early halting.

The engine handle is thin — ``step(z_H, z_L, inputs, puzzle_identifiers) -> (z_H', z_L', logits, q_halt,
q_continue)`` on numpy arrays — and this module does the rest in numpy, as the reference's ``run`` does: the carry
is reset once to the bundle's ``carry_init.npz`` broadcast over rows and positions; each step every row runs;
a row stops at the first step whose halting head says halt (``q_halt > 0``, or ``q_halt > q_continue`` for
models trained that way) or at ``max_steps``, and keeps that step's outputs; the batch stops when every row
has.  No torch on the ONNX path.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import BundleError, EngineError, UnsupportedError, require

CARRY_FILE = "carry_init.npz"
STEP_INPUTS = ("z_H", "z_L", "inputs", "puzzle_identifiers")
STEP_OUTPUTS = ("z_H_next", "z_L_next", "logits", "q_halt_logits", "q_continue_logits")


@dataclass(frozen=True)
class Solution:
    """What ``solve`` returns.  Per-row values are taken at the step where that row stopped.

    answers [B, seq_len] int64 (argmax of the logits); logits [B, seq_len, vocab] float32; q_halt_logits,
    q_continue_logits [B] float32; steps [B] int64 (1..max_steps); step_seconds: wall time of each batch step;
    ``*_per_step`` (only with ``keep_steps``): every step the loop ran, [N, B, ...]."""

    answers: np.ndarray
    logits: np.ndarray
    q_halt_logits: np.ndarray
    q_continue_logits: np.ndarray
    steps: np.ndarray
    step_seconds: list[float]
    logits_per_step: np.ndarray | None = None
    q_halt_per_step: np.ndarray | None = None
    q_continue_per_step: np.ndarray | None = None

    @property
    def seconds(self) -> float:
        return float(sum(self.step_seconds))


@dataclass
class _Loop:
    logits: np.ndarray | None = None
    qh: np.ndarray | None = None
    qc: np.ndarray | None = None
    per_step: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)


class SolverSession:
    """``solve(inputs, puzzle_identifiers=None, max_steps=None, halt=True)`` over an engine's step handle."""

    engine = "?"

    def __init__(self, root: Path, manifest: Mapping[str, Any]) -> None:
        self.root = Path(root)
        self.manifest = manifest
        m = manifest.get("model", {})
        try:
            self.seq_len = int(m["seq_len"])
            self.vocab_size = int(m["vocab_size"])
            self.num_puzzle_identifiers = int(m["num_puzzle_identifiers"])
            self.halt_max_steps = int(m["halt_max_steps"])
            self.halt_on_continue = bool(m["halt_on_continue"])
            self.total_len = self.seq_len + int(m["prefix_len"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{self.root}: the manifest lacks solver metadata ({exc}); re-export the bundle") from None
        try:
            carry = np.load(self.root / CARRY_FILE)
            self._h_init = np.asarray(carry["H_init"], dtype=np.float32)
            self._l_init = np.asarray(carry["L_init"], dtype=np.float32)
        except (OSError, KeyError, ValueError) as exc:
            raise BundleError(f"{self.root}: {CARRY_FILE} is missing or damaged ({exc}); re-export the bundle") from None

    # -- the engine ---------------------------------------------------------------------------------------------
    def step(
        self, z_h: np.ndarray, z_l: np.ndarray, inputs: np.ndarray, ids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        raise NotImplementedError

    # -- inputs -------------------------------------------------------------------------------------------------
    def check_inputs(self, inputs: Any, puzzle_identifiers: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """(inputs [B, seq_len] int64, identifiers [B] int64); UnsupportedError for the wrong size or range."""
        x = np.asarray(inputs)
        if x.dtype.kind not in "iu":
            raise UnsupportedError(f"puzzles must be integer token ids, got dtype {x.dtype}")
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] != self.seq_len:
            raise UnsupportedError(
                f"puzzles must be [batch, {self.seq_len}] token ids (one puzzle per row), got shape {np.shape(inputs)}"
            )
        if x.min() < 0 or x.max() >= self.vocab_size:
            raise UnsupportedError(
                f"token ids must lie in [0, {self.vocab_size - 1}]; got values from {x.min()} to {x.max()}"
            )
        if puzzle_identifiers is None:
            ids = np.zeros(x.shape[0], dtype=np.int64)
        else:
            ids = np.asarray(puzzle_identifiers).reshape(-1)
            if ids.dtype.kind not in "iu" or ids.shape[0] != x.shape[0]:
                raise UnsupportedError(f"give one integer puzzle identifier per puzzle ({x.shape[0]})")
            if ids.min() < 0 or ids.max() >= self.num_puzzle_identifiers:
                raise UnsupportedError(f"puzzle identifiers must lie in [0, {self.num_puzzle_identifiers - 1}]")
        return x.astype(np.int64), ids.astype(np.int64)

    # -- solving ------------------------------------------------------------------------------------------------
    def solve(
        self,
        inputs: Any,
        puzzle_identifiers: Any = None,
        max_steps: int | None = None,
        halt: bool = True,
        keep_steps: bool = False,
    ) -> Solution:
        """Solve a batch of puzzles (official dataset token ids, one per row; a single row may be 1-D).

        ``max_steps`` defaults to the model's ``halt_max_steps``; ``halt=False`` runs every step for every row,
        as the official evaluation does."""
        cap = self.halt_max_steps if max_steps is None else max_steps
        if isinstance(cap, bool) or not isinstance(cap, (int, np.integer)) or cap < 1:
            raise UnsupportedError(f"max_steps must be a positive integer, got {max_steps!r}")
        x, ids = self.check_inputs(inputs, puzzle_identifiers)
        b = x.shape[0]
        shape = (b, self.total_len, self._h_init.shape[-1])
        z_h = np.ascontiguousarray(np.broadcast_to(self._h_init, shape))
        z_l = np.ascontiguousarray(np.broadcast_to(self._l_init, shape))
        done = np.zeros(b, dtype=bool)
        steps = np.zeros(b, dtype=np.int64)
        loop = _Loop()
        seconds: list[float] = []
        for i in range(int(cap)):
            t0 = time.perf_counter()
            z_h, z_l, logits, qh, qc = self.step(z_h, z_l, x, ids)
            seconds.append(time.perf_counter() - t0)
            logits = logits.astype(np.float32, copy=False)
            stop = np.full(b, i + 1 >= cap)
            if halt:
                stop |= (qh > qc) if self.halt_on_continue else (qh > 0)
            if loop.logits is None:
                loop.logits, loop.qh, loop.qc = logits.copy(), qh.copy(), qc.copy()
            else:  # rows still running take this step's outputs; rows that stopped keep theirs
                live = ~done
                loop.logits[live], loop.qh[live], loop.qc[live] = logits[live], qh[live], qc[live]
            steps[~done] += 1
            done |= stop
            if keep_steps:
                loop.per_step.append((logits, qh, qc))
            if done.all():
                break
        per = [np.stack(a) for a in zip(*loop.per_step)] if keep_steps else [None, None, None]
        return Solution(
            answers=loop.logits.argmax(-1), logits=loop.logits, q_halt_logits=loop.qh, q_continue_logits=loop.qc,
            steps=steps, step_seconds=seconds, logits_per_step=per[0], q_halt_per_step=per[1],
            q_continue_per_step=per[2],
        )

    def close(self) -> None:
        pass


class OnnxSolverSession(SolverSession):
    engine = "onnxruntime"

    def __init__(self, root: Path, manifest: Mapping[str, Any], n_threads: int | None = None) -> None:
        super().__init__(root, manifest)
        ort = require("onnxruntime", "onnx")
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if n_threads:
            so.intra_op_num_threads = int(n_threads)
        path = self.root / manifest["artifact"]["file"]
        try:
            self._session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise BundleError(f"{path}: onnxruntime could not load the model ({exc})") from None
        # a model without a puzzle embedding never reads puzzle_identifiers, and the exporter drops the input
        self._inputs = [i.name for i in self._session.get_inputs()]
        if not set(STEP_INPUTS[:3]) <= set(self._inputs) <= set(STEP_INPUTS):
            raise BundleError(f"{path}: inputs {self._inputs}, expected {list(STEP_INPUTS)}; re-export the bundle")

    def step(self, z_h, z_l, inputs, ids):  # type: ignore[no-untyped-def]
        feeds = dict(zip(STEP_INPUTS, (z_h, z_l, inputs, ids)))
        try:
            out = self._session.run(list(STEP_OUTPUTS), {k: feeds[k] for k in self._inputs})
        except Exception as exc:  # onnxruntime's own types (Fail, InvalidArgument, RuntimeException)
            first = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
            raise EngineError(f"onnxruntime failed to run the solver step ({first}); check the puzzles' shape and "
                              "token ids, or re-export the bundle") from None
        return tuple(out)  # type: ignore[return-value]

    def close(self) -> None:
        self._session = None


class ExecuTorchSolverSession(SolverSession):
    """The step program through ExecuTorch's Python runtime (which links libtorch: tensors cross as torch)."""

    engine = "executorch"

    def __init__(self, root: Path, manifest: Mapping[str, Any], n_threads: int | None = None) -> None:
        super().__init__(root, manifest)
        self._torch = require("torch", "executorch")
        require("executorch.kernels.quantized", "executorch")
        runtime = require("executorch.runtime", "executorch")
        path = self.root / manifest["artifact"]["file"]
        try:
            program = runtime.Runtime.get().load_program(str(path))
            self._method = program.load_method("forward")
        except Exception as exc:  # the binding raises RuntimeError/ValueError with the runtime's status
            raise BundleError(f"{path}: ExecuTorch could not load the program ({exc}); re-export the bundle") from None
        self.max_batch = int(manifest["artifact"].get("max_batch", 1))

    def step(self, z_h, z_l, inputs, ids):  # type: ignore[no-untyped-def]
        torch = self._torch
        outs: list[list[np.ndarray]] = [[], [], [], [], []]
        for s in range(0, inputs.shape[0], self.max_batch):  # the program's batch dimension is bounded
            part = slice(s, s + self.max_batch)
            res = self._method.execute([torch.from_numpy(np.ascontiguousarray(a[part])) for a in (z_h, z_l, inputs, ids)])
            for k, r in enumerate(res):
                outs[k].append(r.numpy())
        return tuple(np.concatenate(o) for o in outs)  # type: ignore[return-value]

    def close(self) -> None:
        self._method = None


__all__: Sequence[str] = ("ExecuTorchSolverSession", "OnnxSolverSession", "Solution", "SolverSession")
