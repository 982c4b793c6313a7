"""Reproducible training of the built-in TRM Sudoku solver (``builtin:trm-sudoku``).

    python -m edgekit.builtin.train_trm --out edgekit/builtin       # ~20 min on 2 CPU threads

It writes ``OUT/trm-sudoku/`` in the official TinyRecursiveModels checkpoint format, so it loads exactly like a
checkpoint from the official training code: ``step_N`` (``torch.save`` of the state dict with torch.compile's
``_orig_mod.model.inner.`` prefix), ``all_config.yaml`` (the official config layout, ``arch:`` = the model),
plus ``dataset.json`` (the official dataset metadata: seq_len, vocab_size, num_puzzle_identifiers),
``held_out.npz`` (held-out puzzles: ``inputs``, ``labels`` int32 [count, 16], ``puzzle_identifiers`` int32 [count]) and
``TRAINING.json`` (seed, steps, time, measured held-out exact accuracy with and without halting).

Task: 4x4 Sudoku (2x2 boxes) with 4-10 of 16 cells blank, in the official Sudoku dataset's encoding
(``dataset/build_sudoku_dataset.py``): 0 pad, 1 blank cell, 2.. the digits 1..4 (vocab 6, seq_len 16, one puzzle
identifier 0).  Puzzles are made deterministically from the seed: all 288 valid grids are enumerated and
shuffled; 48 of them are the held-out
solutions and never appear in training; a puzzle clears random cells of a grid and is kept only if naked singles
alone solve it (so its solution is unique).  9x9 was measured first: one optimizer step of this model at batch
128 took ~3.5 s on the shared 2 cores, far too slow to train within the ~20 minute budget.

Model: TRM's Sudoku variant (MLP over the sequence axis, no position encoding, puzzle-embedding prefix), trained
the official way — ACT deep supervision with the carry kept across optimizer steps, halted rows replaced by new
puzzles, the halting head trained with BCE on "the whole grid is right" (``no_ACT_continue``), gradients only
through the last H cycle — with AdamW and softmax cross-entropy (the official code's ``softmax_cross_entropy``
loss; its AdamATan2 and sign-SGD puzzle-embedding optimiser are not needed at this size).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

NAME = "trm-sudoku"
SEED = 0
N = 4  # grid side
BOX = 2
VOCAB = N + 2  # 0 pad, 1 blank, 2..N+1 digits
BLANKS = (4, 10)  # inclusive range of cleared cells per puzzle (of 16)
HELD_OUT = 1000
HELD_OUT_GRIDS = 48  # of the 288 valid 4x4 grids, never seen in training

ARCH: dict[str, Any] = {
    "name": "recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1",
    "loss": {"name": "losses@ACTLossHead", "loss_type": "softmax_cross_entropy"},
    "H_cycles": 2,
    "L_cycles": 2,
    "H_layers": 0,
    "L_layers": 2,
    "hidden_size": 64,
    "num_heads": 4,  # unused by mlp_t, kept as the official config carries it
    "expansion": 2,
    "puzzle_emb_ndim": 64,
    "puzzle_emb_len": 1,
    "pos_encodings": "none",
    "mlp_t": True,
    "no_ACT_continue": True,
    "halt_max_steps": 4,
    # Higher than the official 0.1: this task is mostly solved in one step, so with 0.1 the later steps were
    # hardly ever trained and running all steps (the official evaluation) lost accuracy (0.91 vs 0.97 halted).
    "halt_exploration_prob": 0.5,
    "forward_dtype": "float32",
}
TRAIN: dict[str, Any] = {
    "global_batch_size": 128,
    "lr": 2e-3,
    "lr_min_ratio": 0.05,
    "lr_warmup_steps": 50,
    "weight_decay": 0.1,
    "beta1": 0.9,
    "beta2": 0.95,
}


# ---------------------------------------------------------------------------------------------------------------
# Puzzles


PEERS = [
    sorted(
        {(r, j) for j in range(N)}
        | {(i, c) for i in range(N)}
        | {(BOX * (r // BOX) + i, BOX * (c // BOX) + j) for i in range(BOX) for j in range(BOX)}
        - {(r, c)}
    )
    for r in range(N)
    for c in range(N)
]


def solves_by_singles(puzzle: np.ndarray) -> bool:
    """True when repeatedly filling cells that have exactly one candidate completes the grid (=> unique)."""
    g = puzzle.copy()
    while True:
        blanks = list(zip(*np.nonzero(g == 0)))
        if not blanks:
            return True
        progress = False
        for r, c in blanks:
            used = {g[i, j] for i, j in PEERS[r * N + c]}
            cand = [d for d in range(1, N + 1) if d not in used]
            if len(cand) == 1:
                g[r, c] = cand[0]
                progress = True
        if not progress:
            return False


def all_grids(seed: int) -> list[np.ndarray]:
    """Every valid N x N grid (288 for 4x4, by backtracking in cell order), in a seeded random order."""
    grids: list[np.ndarray] = []
    g = np.zeros((N, N), dtype=np.int64)

    def fill(cell: int) -> None:
        if cell == N * N:
            grids.append(g.copy())
            return
        r, c = divmod(cell, N)
        used = {g[i, j] for i, j in PEERS[cell]}
        for d in range(1, N + 1):
            if d not in used:
                g[r, c] = d
                fill(cell + 1)
                g[r, c] = 0

    fill(0)
    order = np.random.default_rng(seed).permutation(len(grids))
    return [grids[i] for i in order]


def make_puzzles(count: int, seed: int, grids: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``count`` (inputs, labels) int32 [count, N*N] in the official encoding, solutions drawn from ``grids``."""
    rng = np.random.default_rng(seed)
    inputs, labels = [], []
    while len(inputs) < count:
        grid = grids[int(rng.integers(len(grids)))]
        k = int(rng.integers(BLANKS[0], BLANKS[1] + 1))
        puzzle = grid.copy()
        puzzle.reshape(-1)[rng.choice(N * N, size=k, replace=False)] = 0
        if not solves_by_singles(puzzle):
            continue
        inputs.append(puzzle.reshape(-1) + 1)  # official encoding: blank 0 -> 1, digit d -> d + 1
        labels.append(grid.reshape(-1) + 1)
    return np.asarray(inputs, dtype=np.int32), np.asarray(labels, dtype=np.int32)


class PuzzleStream:
    """An endless deterministic supply of training puzzles, generated in chunks."""

    def __init__(self, seed: int, grids: list[np.ndarray]) -> None:
        self.seed, self.grids, self.chunk = seed, grids, 0
        self.inputs = np.zeros((0, N * N), np.int32)
        self.labels = np.zeros((0, N * N), np.int32)
        self.pos = 0

    def take(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        while self.pos + n > len(self.inputs):
            x, y = make_puzzles(4096, self.seed * 100_003 + self.chunk, self.grids)
            self.chunk += 1
            self.inputs = np.concatenate([self.inputs[self.pos :], x])
            self.labels = np.concatenate([self.labels[self.pos :], y])
            self.pos = 0
        out = self.inputs[self.pos : self.pos + n], self.labels[self.pos : self.pos + n]
        self.pos += n
        return out


# ---------------------------------------------------------------------------------------------------------------
# Model and training


def init_weights(model: Any, torch: Any) -> None:
    """The official initialisation: truncated LeCun normal for linears, 1/sqrt(hidden) for embeddings, H/L_init
    truncated normal std 1, q_head zero with bias -5, puzzle embedding zero."""
    hidden = ARCH["hidden_size"]
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("embedding_weight"):
                torch.nn.init.trunc_normal_(p, std=1 / math.sqrt(hidden), a=-2 / math.sqrt(hidden), b=2 / math.sqrt(hidden))
            elif name.endswith(".weight"):
                std = 1 / math.sqrt(p.shape[1])
                torch.nn.init.trunc_normal_(p, std=std, a=-2 * std, b=2 * std)
        model.q_head.weight.zero_()
        model.q_head.bias.fill_(-5.0)
        model.puzzle_emb.weights.zero_()
        for buf in (model.H_init, model.L_init):
            torch.nn.init.trunc_normal_(buf, std=1.0, a=-2.0, b=2.0)


def train_forward(model: Any, torch: Any, z_H: Any, z_L: Any, x_ids: Any, ids: Any) -> tuple[Any, ...]:
    """One supervision step as the official training runs it: gradients only through the last H cycle."""
    cfg = model.config
    x = model.input_embeddings(x_ids, ids)
    rope = model.rope(x.shape[1])
    with torch.no_grad():
        for _ in range(cfg.H_cycles - 1):
            for _ in range(cfg.L_cycles):
                z_L = model.L_level(z_L, z_H + x, rope)
            z_H = model.L_level(z_H, z_L, rope)
    for _ in range(cfg.L_cycles):
        z_L = model.L_level(z_L, z_H + x, rope)
    z_H = model.L_level(z_H, z_L, rope)
    logits = model.lm_head(z_H)[:, model.prefix_len :]
    q = model.q_head(z_H[:, 0]).to(torch.float32)
    return z_H.detach(), z_L.detach(), logits, q[..., 0]


def evaluate(model: Any, inputs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Held-out exact accuracy, the official way (all steps) and with halting, via the edgekit reference."""
    from edgekit.families.trm.reference import run

    out: dict[str, float] = {}
    for halt in (False, True):
        correct, steps = 0, 0
        for i in range(0, len(inputs), 250):
            res = run(model, inputs[i : i + 250], None, halt=halt)
            correct += int((res.preds.numpy() == labels[i : i + 250]).all(-1).sum())
            steps += int(res.steps.sum())
        tag = "halt" if halt else "all_steps"
        out[f"exact_accuracy_{tag}"] = correct / len(inputs)
        out[f"mean_steps_{tag}"] = steps / len(inputs)
    return out


def lr_at(step: int, total: int) -> float:
    """Linear warm-up then cosine to lr_min_ratio (the official schedule's shape)."""
    base, warm, floor = TRAIN["lr"], TRAIN["lr_warmup_steps"], TRAIN["lr_min_ratio"]
    if step < warm:
        return base * step / warm
    progress = (step - warm) / max(1, total - warm)
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def write_checkpoint(model: Any, torch: Any, out: Path, step: int, meta: dict[str, Any]) -> None:
    import yaml

    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("step_*"):
        old.unlink()
    # The official file: the compiled loss head's state dict, hence '_orig_mod.model.inner.'.
    sd = {f"_orig_mod.model.inner.{k}": v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    torch.save(sd, out / f"step_{step}")
    config = {
        "arch": ARCH,
        "data_paths": ["data/builtin-sudoku-few-blanks"],
        "data_paths_test": [],
        "evaluators": [],
        "epochs": step,
        "eval_interval": step,
        "min_eval_interval": 0,
        "eval_save_outputs": [],
        "checkpoint_every_eval": True,
        "checkpoint_path": f"checkpoints/{NAME}",
        "project_name": "Builtin-sudoku ACT-torch",
        "run_name": NAME,
        "load_checkpoint": None,
        "seed": SEED,
        "ema": False,
        "ema_rate": 0.999,
        "freeze_weights": False,
        "puzzle_emb_lr": TRAIN["lr"],
        "puzzle_emb_weight_decay": TRAIN["weight_decay"],
        **TRAIN,
    }
    (out / "all_config.yaml").write_text(yaml.dump(config), encoding="utf-8")
    (out / "dataset.json").write_text(
        json.dumps(
            {
                "pad_id": 0,
                "ignore_label_id": 0,
                "blank_identifier_id": 0,
                "vocab_size": VOCAB,
                "seq_len": N * N,
                "num_puzzle_identifiers": 1,
                "total_groups": meta["puzzles_seen"],
                "mean_puzzle_examples": 1.0,
                "total_puzzles": meta["puzzles_seen"],
                "sets": ["all"],
            },
            indent=1,
        ),
        encoding="utf-8",
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent, help="folder that receives trm-sudoku/")
    ap.add_argument("--steps", type=int, default=400, help="optimizer steps (the schedule's length)")
    ap.add_argument("--minutes", type=float, default=25.0, help="safety stop (wall clock); the record says if it hit")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-every", type=int, default=500)
    args = ap.parse_args(argv)

    import torch

    from edgekit.families.trm.config import TrmConfig
    from edgekit.families.trm.reference import RecursiveReasoningModel

    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    grids = all_grids(SEED)
    held_x, held_y = make_puzzles(HELD_OUT, SEED + 1, grids[:HELD_OUT_GRIDS])
    stream = PuzzleStream(SEED + 2, grids[HELD_OUT_GRIDS:])

    cfg = TrmConfig.from_arch(
        {k: v for k, v in ARCH.items() if k != "loss"}, seq_len=N * N, vocab_size=VOCAB, num_puzzle_identifiers=1
    )
    model = RecursiveReasoningModel(cfg)
    init_weights(model, torch)
    opt = torch.optim.AdamW(
        model.parameters(), lr=0.0, weight_decay=TRAIN["weight_decay"], betas=(TRAIN["beta1"], TRAIN["beta2"])
    )
    gen = torch.Generator().manual_seed(SEED)
    B, T, H = TRAIN["global_batch_size"], cfg.total_len, cfg.hidden_size
    assert T is not None
    # The carry: every row starts halted, so the first step loads fresh puzzles (official initial_carry).
    z_H = torch.zeros(B, T, H)
    z_L = torch.zeros(B, T, H)
    halted = torch.ones(B, dtype=torch.bool)
    steps = torch.zeros(B, dtype=torch.int64)
    cur_x = torch.zeros(B, N * N, dtype=torch.int64)
    cur_y = torch.zeros(B, N * N, dtype=torch.int64)
    ids = torch.zeros(B, dtype=torch.int64)

    t0 = time.time()
    budget = args.minutes * 60
    log: list[dict[str, Any]] = []
    seen = 0
    step = 0
    model.train()
    while step < args.steps and time.time() - t0 < budget:
        n_new = int(halted.sum())
        if n_new:
            nx, ny = stream.take(n_new)
            cur_x[halted] = torch.from_numpy(nx).long()
            cur_y[halted] = torch.from_numpy(ny).long()
            z_H = torch.where(halted.view(-1, 1, 1), model.H_init.detach(), z_H)
            z_L = torch.where(halted.view(-1, 1, 1), model.L_init.detach(), z_L)
            steps = torch.where(halted, 0, steps)
            seen += n_new
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.steps)
        z_H, z_L, logits, q_halt = train_forward(model, torch, z_H, z_L, cur_x, ids)
        lm = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), cur_y.reshape(-1), reduction="none")
        lm = lm.view(B, -1).mean(-1).sum()
        correct = (logits.argmax(-1) == cur_y).all(-1)
        q_loss = torch.nn.functional.binary_cross_entropy_with_logits(q_halt, correct.float(), reduction="sum")
        loss = (lm + 0.5 * q_loss) / B
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        with torch.no_grad():
            steps = steps + 1
            halted = (steps >= cfg.halt_max_steps) | (q_halt.detach() > 0)
            explore = torch.rand(B, generator=gen) < cfg.halt_exploration_prob
            min_steps = explore * torch.randint(2, cfg.halt_max_steps + 1, (B,), generator=gen)
            halted = halted & (steps >= min_steps)
        if step % 100 == 0:
            print(
                f"step {step:6d}  {time.time() - t0:7.1f}s  loss {loss.item():.4f}  exact(batch) "
                f"{correct.float().mean().item():.3f}  puzzles {seen}",
                flush=True,
            )
        if step % args.eval_every == 0:
            model.eval()
            acc = evaluate(model, held_x[:250], held_y[:250])
            model.train()
            log.append({"step": step, "seconds": round(time.time() - t0, 1), **acc})
            print(f"  eval@{step}: {acc}", flush=True)
    train_seconds = time.time() - t0
    model.eval()
    acc = evaluate(model, held_x, held_y)
    print(f"final: {acc}", flush=True)

    out = args.out / NAME
    write_checkpoint(model, torch, out, step, {"puzzles_seen": seen})
    np.savez_compressed(
        out / "held_out.npz", inputs=held_x, labels=held_y, puzzle_identifiers=np.zeros(len(held_x), np.int32)
    )
    record = {
        "task": f"{N}x{N} Sudoku, {BLANKS[0]}-{BLANKS[1]} blanks, unique by naked singles; official encoding; "
        f"held-out solutions: {HELD_OUT_GRIDS} of {len(grids)} grids, never trained on",
        "seed": SEED,
        "optimizer_steps": step,
        "schedule_steps": args.steps,
        "stopped_by_time_limit": step < args.steps,
        "puzzles_seen": seen,
        "train_seconds": round(train_seconds, 1),
        "threads": args.threads,
        "torch": torch.__version__,
        "held_out_puzzles": len(held_x),
        **acc,
        "arch": ARCH,
        "train": TRAIN,
        "eval_log": log,
        "command": "python -m edgekit.builtin.train_trm --out edgekit/builtin",
    }
    (out / "TRAINING.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
