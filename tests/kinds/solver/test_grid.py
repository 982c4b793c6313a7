"""edgekit/kinds/solver/grid.py: Sudoku text grids <-> the official token encoding."""

import numpy as np
import pytest

from edgekit.errors import UnsupportedError
from edgekit.kinds.solver import grid

LINE = "53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79"


def test_parse_and_render_round_trip():
    x = grid.parse_lines(LINE + "\n\n" + LINE.replace(".", "0"), 81)
    assert x.shape == (2, 81) and x.dtype == np.int64
    assert (x[0] == x[1]).all() and x[0, 0] == 6 and x[0, 2] == 1  # digit 5 -> 6, blank -> 1
    text = grid.render(x[0])
    assert text.splitlines()[0] == "5 3 . | . 7 . | . . ." and len(text.splitlines()) == 11


@pytest.mark.parametrize("text, match", [("123", "3 cells, this model takes 81"), ("x" * 81, "'x' is not a digit"),
                                         ("", "no puzzles")])
def test_bad_lines_are_named(text, match):
    with pytest.raises(UnsupportedError, match=match):
        grid.parse_lines(text, 81)


def test_non_square_renders_as_a_line():
    assert grid.render(np.array([2, 3, 1])) == "12."
