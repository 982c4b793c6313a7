"""What every exporter of a TRM/HRM step needs, whatever the format: the sequence length the graph is built for,
example inputs, and the reset carry that travels with the bundle (``carry_init.npz``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekit.errors import UnsupportedError

CARRY_FILE = "carry_init.npz"


def seq_len(config: Any, requested: int | None) -> int:
    """The puzzle length the step graph is built for: the checkpoint's (from ``dataset.json`` or the tensors)
    or ``--seq-len``; UnsupportedError when neither says it, or when they disagree."""
    known = config.seq_len
    if requested is not None and known is not None and requested != known:
        raise UnsupportedError(f"--seq-len {requested} disagrees with the checkpoint's sequence length {known}")
    if requested is None and known is None:
        raise UnsupportedError(
            "this checkpoint does not fix the puzzle length: pass --seq-len N (e.g. 81 for 9x9 Sudoku), or copy the "
            "dataset's train/dataset.json beside the checkpoint"
        )
    value = requested if requested is not None else known
    if value < 1:
        raise UnsupportedError(f"--seq-len must be positive, got {value}")
    return int(value)


def check_plan(config: Any, quant: Any, options: Any) -> None:
    """The recipe rows' plan-time check: ``--seq-len`` is checked against the checkpoint (or required) when the
    plan is made, before the model loads (the same rule as ``seq_len``, which the exporters call again)."""
    seq_len(config, getattr(options, "seq_len", None))


def example_inputs(model: Any, length: int, batch: int = 2) -> tuple[Any, Any, Any, Any]:
    """(z_H, z_L, inputs, puzzle_identifiers) for tracing: the reset carry, blank-ish tokens, identifier 0."""
    import torch

    z_h, z_l = model.initial_state(batch, length)
    inputs = torch.ones((batch, length), dtype=torch.int64)
    return z_h, z_l, inputs, torch.zeros(batch, dtype=torch.int64)


def write_carry(model: Any, out_dir: Path) -> str:
    """``carry_init.npz`` (H_init, L_init float32 [hidden]) into the bundle; the session broadcasts them."""
    import numpy as np

    np.savez(out_dir / CARRY_FILE, H_init=model.H_init.float().numpy(), L_init=model.L_init.float().numpy())
    return CARRY_FILE
