"""Built-in checkpoints shipped with edgekit (``builtin:NAME``): a trained tiny LFM2 and a LoRA adapter for it,
and a trained TRM for 4x4 Sudoku (official checkpoint format).

They are made by ``python -m edgekit.builtin.train`` (see that module and README.md).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError

PREFIX = "builtin:"
ROOT = Path(__file__).parent
NAMES = ("lfm2-tiny", "lfm2-tiny-lora", "lfm2-tiny-lora2", "bitnet-tiny", "bitnet-tiny-lora", "trm-sudoku")


def resolve(source: str | Path) -> Path:
    """Map ``builtin:NAME`` to its directory; other values are returned as paths."""
    text = str(source)
    if not text.startswith(PREFIX):
        return Path(source).expanduser()
    name = text[len(PREFIX) :]
    if name not in NAMES:
        raise CheckpointError(f"unknown built-in {name!r}; built-ins: {', '.join(PREFIX + n for n in NAMES)}")
    return ROOT / name
