"""Sudoku grids as text, in the official dataset encoding (TinyRecursiveModels ``build_sudoku_dataset.py``):
token 0 = padding, 1 = blank cell, 2..n+1 = digits 1..n.  A puzzle of n*n cells prints as an n x n grid."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ...errors import UnsupportedError

BLANK = 1
BLANK_CHARS = ".0_"


def side(cells: int) -> int | None:
    """n for a puzzle of n*n cells, else None (not a square grid)."""
    n = math.isqrt(cells)
    return n if n * n == cells else None


def parse_lines(text: str, cells: int) -> np.ndarray:
    """Puzzles written one per line as ``cells`` characters (digits 1-9, '.', '0' or '_' for a blank; spaces and
    '|' ignored) -> token ids int64 [N, cells].  UnsupportedError names the first bad line."""
    rows = []
    for k, line in enumerate(text.splitlines(), 1):
        chars = [c for c in line if c not in " |\t"]
        if not chars:
            continue
        if len(chars) != cells:
            raise UnsupportedError(f"line {k}: {len(chars)} cells, this model takes {cells}")
        row = []
        for c in chars:
            if c in BLANK_CHARS:
                row.append(BLANK)
            elif c.isdigit():
                row.append(int(c) + 1)
            else:
                raise UnsupportedError(f"line {k}: {c!r} is not a digit or a blank ('.', '0', '_')")
        rows.append(row)
    if not rows:
        raise UnsupportedError("no puzzles in the input")
    return np.asarray(rows, dtype=np.int64)


def read_puzzles(path: Path, cells: int) -> np.ndarray:
    """A ``.npy`` of token ids [N, cells] (or [cells]) or a text file of grids (``parse_lines``)."""
    if not path.is_file():
        raise UnsupportedError(f"{path}: no such file")
    if path.suffix == ".npy":
        try:
            data = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise UnsupportedError(f"{path}: not a numpy array file ({exc})") from None
        return data[None] if data.ndim == 1 else data
    return parse_lines(path.read_text(encoding="utf-8", errors="replace"), cells)


def render(tokens: np.ndarray) -> str:
    """One puzzle's token ids as a grid (n x n with box rules when n is a square), or one line of digits."""
    chars = ["." if t <= BLANK else str(int(t) - 1) for t in np.asarray(tokens).reshape(-1)]
    n = side(len(chars))
    if n is None:
        return "".join(chars)
    box = math.isqrt(n) if math.isqrt(n) ** 2 == n else n
    lines = []
    for r in range(n):
        if r and r % box == 0:
            lines.append("-" * (2 * n + 2 * (n // box - 1) - 1))
        cells = chars[r * n : (r + 1) * n]
        lines.append(" | ".join(" ".join(cells[c : c + box]) for c in range(0, n, box)))
    return "\n".join(lines)
