"""llama-bench's method against any LanguageSession (DESIGN.md §8).  Runs on the device; no torch.

Per test: random prompt tokens, one untimed warm-up run, then ``repetitions`` runs, each from a cleared state
(and, for depth d, d random tokens fed untimed first).  Sessions implementing ``SteppableSession`` are stepped
directly: prefill feeds n tokens in the engine's batches, decode feeds n single tokens without sampling, as
llama-bench does.  Other sessions go through ``generate`` (prefill = its prompt phase; decode = greedy
generation after a one-token prompt) and cannot measure depth.
"""

from __future__ import annotations

import random
import time
from typing import Any, Callable, Mapping, Sequence

from ..errors import UnsupportedError
from ..runtimes.protocol import SamplingParams, SteppableSession
from .values import PP, STEP, Case, CaseResult, Sample


def random_tokens(rng: random.Random, vocab: int, n: int) -> list[int]:
    return [rng.randrange(vocab) for _ in range(n)]


def _stepped(session: SteppableSession, case: Case, tokens: list[int], depth_tokens: list[int]) -> Sample:
    session.reset()
    if depth_tokens:
        session.feed(depth_tokens)
    t0 = time.perf_counter()
    if case.kind == PP:
        engine = session.feed(tokens)
    else:
        engine = sum(session.feed([t]) for t in tokens)
    return Sample(engine_s=engine, wall_s=time.perf_counter() - t0)


def _generated(session: Any, case: Case, tokens: list[int]) -> Sample:
    if case.depth:
        raise UnsupportedError(
            f"engine {session.engine} cannot measure depth (-d): it lacks reset/feed (protocol.SteppableSession)"
        )
    if case.kind == PP:
        t0 = time.perf_counter()
        g = session.generate(tokens, SamplingParams(max_tokens=1, stop_at_eos=False))
        wall = time.perf_counter() - t0
        return Sample(engine_s=g.timing.prefill_s or wall, wall_s=g.timing.ttft_s or wall)
    # one prompt token, then n decode steps: the first generated token comes from the prompt's logits
    t0 = time.perf_counter()
    g = session.generate(tokens[:1], SamplingParams(max_tokens=case.n + 1, stop_at_eos=False))
    wall = time.perf_counter() - t0
    t = g.timing
    steps = max(t.generated_tokens, 1)
    # rescale to exactly n steps so tokens/s is n / time, whatever the engine counted
    return Sample(engine_s=t.decode_s * case.n / steps if t.decode_s else wall, wall_s=wall - t.prefill_s)


def run_case(
    session: Any,
    case: Case,
    repetitions: int,
    warmup: bool,
    rng: random.Random,
    threads: int | None,
    extras: Mapping[str, Any] | None = None,
) -> CaseResult:
    vocab = session.vocab_size
    steppable = isinstance(session, SteppableSession)

    def once() -> Sample:
        depth = random_tokens(rng, vocab, case.depth)
        tokens = random_tokens(rng, vocab, case.n)
        return _stepped(session, case, tokens, depth) if steppable else _generated(session, case, tokens)

    if warmup:
        once()
    samples = tuple(once() for _ in range(repetitions))
    return CaseResult(case=case, threads=threads, samples=samples, **dict(extras or {}))


def run_cases(
    session: Any,
    cases: Sequence[Case],
    repetitions: int,
    warmup: bool,
    seed: int,
    threads: int | None,
    extras_for: Callable[[Case], Mapping[str, Any]],
    emit: Callable[[CaseResult], None],
) -> None:
    rng = random.Random(seed)
    for case in cases:
        emit(run_case(session, case, repetitions, warmup, rng, threads, extras_for(case)))


def run_solver_case(
    session: Any, case: Case, repetitions: int, warmup: bool, rng: random.Random, threads: int | None
) -> CaseResult:
    """A solver test: ``step`` times one supervision step of ``case.n`` random puzzles from the reset carry;
    ``solve`` times ``session.solve`` with early halting (its engine time; the steps it took are recorded)."""
    import numpy as np

    gen = np.random.default_rng(rng.randrange(2**32))
    steps: list[float] = []

    def once() -> Sample:
        x = gen.integers(1, session.vocab_size, size=(case.n, session.seq_len), dtype=np.int64)
        ids = np.zeros(case.n, dtype=np.int64)
        t0 = time.perf_counter()
        if case.kind == STEP:
            sol = session.solve(x, ids, max_steps=1, halt=False)
        else:
            sol = session.solve(x, ids, halt=True)
            steps.append(float(sol.steps.max()))
        return Sample(engine_s=sol.seconds, wall_s=time.perf_counter() - t0)

    if warmup:
        once()
        steps.clear()
    samples = tuple(once() for _ in range(repetitions))
    return CaseResult(case=case, threads=threads, samples=samples,
                      steps_mean=(sum(steps) / len(steps)) if steps else None)
