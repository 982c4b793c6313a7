"""Solving Sudoku with a solver bundle (the built-in TRM): ``edgekit solve`` on the command line, and a web page
served by ``edgekit serve`` of a solver bundle at ``/solver`` (page.html) over ``POST /v1/solve``.

``POST /v1/solve`` takes ``{"puzzle": "n*n characters (81 for 9x9): digits, '.' / '0' / '_' for blanks (spaces, '|' and line
breaks ignored)", "max_steps": optional int}`` and answers ``{"answer": "81 digits", "grid": text grid,
"steps": recursion (supervision) steps run, "valid": the answer obeys the Sudoku rules and keeps the givens,
"seconds": engine time}``; an invalid grid (wrong length, a character that is not a digit or blank, givens that
break the rules: a digit twice in a row, column or box) is a 400 with an OpenAI-shaped error body naming why.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import numpy as np

PAGE = Path(__file__).with_name("page.html")


def solve_text(session: Any, text: str, max_steps: int | None = None) -> dict[str, Any]:
    """One puzzle as text -> the JSON answer of ``POST /v1/solve``.  Raises UnsupportedError for a bad grid."""
    from edgekit.errors import UnsupportedError
    from edgekit.kinds.solver import grid

    if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1):
        raise UnsupportedError(f"max_steps: must be a positive integer, got {max_steps!r}")
    # a pasted grid: rows on lines, box rules ('|', '-', '+') and spaces are layout, not cells
    puzzles = grid.parse_lines("".join(c for c in text if c not in " \t\r\n|-+"), session.seq_len)
    if len(puzzles) != 1:
        raise UnsupportedError(f"one puzzle per request, got {len(puzzles)}")
    n = grid.sudoku_side(session.seq_len, session.vocab_size)
    why = grid.sudoku_conflict(puzzles[0], n) if n else None
    if why:
        raise UnsupportedError(f"not a valid Sudoku: {why}")
    sol = session.solve(puzzles, max_steps=max_steps)
    answer = sol.answers[0]
    return {
        "answer": "".join("." if t <= grid.BLANK else str(int(t) - 1) for t in answer),
        "grid": grid.render(answer),
        "steps": int(sol.steps[0]),
        "max_steps": int(max_steps or session.halt_max_steps),
        "valid": grid.is_sudoku_solution(puzzles[0], answer),
        "seconds": sol.seconds,
    }


def example(session: Any) -> str:
    """The first held-out puzzle of the bundle (``held_out.npz``, written at export) as one line, else blanks."""
    try:
        with np.load(Path(session.root) / "held_out.npz") as data:
            return "".join("." if t <= 1 else str(int(t) - 1) for t in data["inputs"][0])
    except (OSError, KeyError, ValueError, IndexError):
        return "." * session.seq_len


def routes(session: Any, worker: Any, guarded: Callable[..., Any], read_body: Callable[..., Any],
           api_error: type) -> list[Any]:
    """The page and its API, for the server (apps/server) of a solver bundle."""
    import json

    from starlette.responses import HTMLResponse, JSONResponse
    from starlette.routing import Route

    from edgekit.errors import EdgekitError

    n = math.isqrt(session.seq_len)
    page = (PAGE.read_text(encoding="utf-8").replace("{{SIDE}}", str(n)).replace("{{ENGINE}}", session.engine)
            .replace("{{EXAMPLE}}", example(session)))

    async def show(_request: Any) -> Any:
        return HTMLResponse(page)

    async def solve(request: Any) -> Any:
        body = await read_body(request)
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise api_error(400, f"the request body is not valid JSON ({exc})") from None
        if not isinstance(data, dict) or not isinstance(data.get("puzzle"), str):
            raise api_error(400, f'send {{"puzzle": "{session.seq_len} characters: digits and . for blanks"}}',
                            param="puzzle")

        def job(_cancel: Any) -> dict[str, Any]:
            return solve_text(session, data["puzzle"], data.get("max_steps"))

        try:
            return JSONResponse(await worker.call(job))
        except EdgekitError as exc:
            raise api_error(400, str(exc), param="max_steps" if str(exc).startswith("max_steps") else "puzzle") from None

    return [Route("/solver", show, methods=["GET"]), Route("/v1/solve", guarded(solve), methods=["POST"])]
