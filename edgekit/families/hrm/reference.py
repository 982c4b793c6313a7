"""HRM's PyTorch reference: TRM's ``RecursiveReasoningModel`` with a separate ``H_level`` network.

sapientinc/HRM ``hrm_act_v1.py`` and TRM share every piece (embeddings, post-norm blocks, RoPE, heads, ACT);
the only difference in a step is that z_H is updated by ``H_level`` (its own ``H_layers`` blocks) instead of
the z_L network, and that HRM halts on ``q_halt > q_continue``.  The shared code, with its shapes and dtypes,
is documented in ``edgekit.families.trm.reference``.
"""

from __future__ import annotations

from typing import Any

from edgekit.families.hrm.config import HrmConfig
from edgekit.families.trm.reference import RecursiveReasoningModel, RunResult, check_inputs, run

__all__ = ["RecursiveReasoningModel", "RunResult", "build", "check_inputs", "run"]


def build(config: HrmConfig) -> Any:
    """An HRM with zero weights for ``config`` (complete: vocab_size and num_puzzle_identifiers set)."""
    return RecursiveReasoningModel(config)
