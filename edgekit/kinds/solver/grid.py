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


def sudoku_side(cells: int, vocab_size: int) -> int | None:
    """n when a model of ``cells`` cells and ``vocab_size`` tokens reads n x n Sudoku in the official encoding
    (pad, blank, digits 1..n: vocab n + 2, e.g. 11 for 9x9), else None (a maze, ARC, another task)."""
    n = side(cells)
    return n if n is not None and vocab_size == n + 2 else None


def _units(n: int) -> list[tuple[str, np.ndarray]]:
    """(name, flat cell indices) of every row, column and box (boxes of sqrt(n) when n is a square)."""
    idx = np.arange(n * n).reshape(n, n)
    units = [(f"row {r + 1}", idx[r]) for r in range(n)] + [(f"column {c + 1}", idx[:, c]) for c in range(n)]
    b = math.isqrt(n)
    if b * b == n:
        units += [(f"box {k + 1}", idx[r:r + b, c:c + b].reshape(-1))
                  for k, (r, c) in enumerate((r, c) for r in range(0, n, b) for c in range(0, n, b))]
    return units


def sudoku_conflict(puzzle: np.ndarray, n: int) -> str | None:
    """Why an n x n Sudoku's givens (token ids [n*n]) can have no solution — a digit above n or a digit twice in
    one row, column or box — or None when they are consistent (it may still have no or several solutions)."""
    digits = np.asarray(puzzle).reshape(-1) - 1  # 0 = blank (token 1); padding (token 0) counts as blank
    if (digits > n).any():
        k = int(np.argmax(digits > n))
        return f"row {k // n + 1}, column {k % n + 1}: {digits[k]} is not a digit of a {n}x{n} Sudoku (1-{n})"
    for name, cells in _units(n):
        given = digits[cells][digits[cells] > 0]
        values, counts = np.unique(given, return_counts=True)
        if (counts > 1).any():
            return f"{int(values[counts > 1][0])} appears twice in {name}"
    return None


def is_sudoku_solution(puzzle: np.ndarray, answer: np.ndarray) -> bool:
    """``answer`` (token ids) fills every cell with 1..n, keeps ``puzzle``'s givens, and has each digit once per
    row, column and box."""
    n = side(np.asarray(answer).size)
    if n is None:
        return False
    a, p = np.asarray(answer).reshape(-1) - 1, np.asarray(puzzle).reshape(-1) - 1
    if (a < 1).any() or (a > n).any() or (a[p > 0] != p[p > 0]).any():
        return False
    return all(np.array_equal(np.sort(a[cells]), np.arange(1, n + 1)) for _name, cells in _units(n))

