"""TRM step latency: every exported format x quant of a TRM checkpoint against the eager PyTorch reference, in
one process, one run (DESIGN.md §8: ratios measured side by side).

Per variant: one supervision step at batch 1 and at batch 16 (mean ± sample stddev of per-call milliseconds over
``-r`` repetitions after a warm-up), the solve time with early halting at batch 1, and the ratio eager / exported.
The engines and torch run with ``--threads`` threads (2 by default, as on a Pi 4 that leaves cores for the app).

    .venv/bin/python bench/trm_bench.py [--source builtin:trm-sudoku] [-r 50] [--write]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from common import cpu_name, git_commit  # noqa: E402  (bench/ is on sys.path)

VARIANTS = [("onnx", "fp32"), ("onnx", "int8"), ("onnx", "int4"),
            ("executorch", "fp32"), ("executorch", "8da8w"), ("executorch", "8da4w")]


def timed(fn, reps: int) -> tuple[float, float]:
    fn()
    ms = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ms.append((time.perf_counter() - t0) * 1e3)
    return statistics.fmean(ms), statistics.stdev(ms) if len(ms) > 1 else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--source", default="builtin:trm-sudoku")
    ap.add_argument("-r", "--repetitions", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--write", action="store_true", help="append the table to bench/RESULTS.md")
    args = ap.parse_args()

    import torch

    import edgekit
    from edgekit.checkpoint import open_checkpoint
    from edgekit.export import export, make_plan
    from edgekit.reference import load_reference

    torch.set_num_threads(args.threads)
    ckpt = open_checkpoint(args.source)
    model = load_reference(ckpt, None)
    seq = ckpt.model_config.seq_len
    rng = np.random.default_rng(0)

    def batch(b: int) -> tuple[np.ndarray, np.ndarray]:
        return rng.integers(1, ckpt.model_config.vocab_size, size=(b, seq), dtype=np.int64), np.zeros(b, np.int64)

    rows = []
    for b in (1, 16):
        x, ids = batch(b)
        zh, zl = model.initial_state(b, seq)
        tx, tids = torch.from_numpy(x), torch.from_numpy(ids)

        def eager_step() -> None:
            with torch.inference_mode():
                model(zh, zl, tx, tids)

        rows.append(("PyTorch eager", "fp32", b, *timed(eager_step, args.repetitions), None))
    eager_ms = {r[2]: r[3] for r in rows}
    with tempfile.TemporaryDirectory() as tmp:
        for fmt, quant in VARIANTS:
            out = export(make_plan(args.source, fmt, quant), Path(tmp) / f"{fmt}-{quant}", progress=lambda _m: None)
            session = edgekit.load(out, n_threads=args.threads)
            try:
                for b in (1, 16):
                    x, ids = batch(b)
                    mean, std = timed(lambda: session.solve(x, ids, max_steps=1, halt=False), args.repetitions)
                    rows.append((fmt, quant, b, mean, std, eager_ms[b] / mean))
            finally:
                session.close()
    lines = [
        f"\n### TRM step latency — {args.source} (seq_len {seq}), {args.threads} threads\n",
        f"CPU: {cpu_name()}; commit {git_commit()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"{args.repetitions} repetitions after a warm-up, mean ± sample stddev; command: "
        f"`.venv/bin/python bench/trm_bench.py -r {args.repetitions} --write`\n",
        "| engine | quant | batch | step ms | eager / exported |",
        "|---|---|---:|---:|---:|",
    ]
    lines += [f"| {e} | {q} | {b} | {m:.3f} ± {s:.3f} | {'-' if r is None else f'{r:.2f}x'} |" for e, q, b, m, s, r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        with (Path(__file__).parent / "RESULTS.md").open("a", encoding="utf-8") as f:
            f.write(text)


if __name__ == "__main__":
    main()
