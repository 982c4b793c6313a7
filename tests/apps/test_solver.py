"""apps/solver: ``POST /v1/solve`` and the page at ``/solver`` served by ``edgekit serve`` of the built-in TRM
bundle, end to end in headless Chromium (Debian's chromium + chromedriver, driven by selenium): load the page,
enter a puzzle, click Solve, read the solved grid and the step count, take a screenshot."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")

from apps_support import edgekit_server  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def puzzle_and_label(bundle: Path, k: int = 0) -> tuple[str, str]:
    with np.load(bundle / "held_out.npz") as d:
        as_text = lambda row: "".join("." if t <= 1 else str(int(t) - 1) for t in row)  # noqa: E731
        return as_text(d["inputs"][k]), as_text(d["labels"][k])


@pytest.fixture(scope="module")
def server(trm_onnx):
    with edgekit_server(trm_onnx) as base:
        yield base


def test_solve_api_matches_the_session(server, trm_onnx):
    import edgekit
    from edgekit.kinds.solver import grid

    puzzle, _label = puzzle_and_label(trm_onnx)
    r = httpx.post(server + "/v1/solve", json={"puzzle": puzzle})
    assert r.status_code == 200, r.text
    got = r.json()
    s = edgekit.load(trm_onnx)
    try:
        sol = s.solve(grid.parse_lines(puzzle, s.seq_len))
    finally:
        s.close()
    assert got["answer"] == "".join(str(int(t) - 1) for t in sol.answers[0])
    assert got["steps"] == int(sol.steps[0]) and 1 <= got["steps"] <= got["max_steps"]
    # a pasted grid with rows on lines and box rules reads the same
    n = int(len(puzzle) ** 0.5)
    pasted = "\n".join(" | ".join(puzzle[r * n:(r + 1) * n]) for r in range(n))
    assert httpx.post(server + "/v1/solve", json={"puzzle": pasted}).json()["answer"] == got["answer"]


@pytest.mark.parametrize(
    "body, words",
    [
        ({"puzzle": "12"}, "cells, this model takes"),
        ({"puzzle": "x" * 16}, "is not a digit"),
        ({"puzzle": "9" * 16}, "9 is not a digit of a 4x4 Sudoku"),
        ({"puzzle": "11" + "." * 14}, "not a valid Sudoku: 1 appears twice in row 1"),
        ({"puzzle": "2..." "2..." + "." * 8}, "2 appears twice in column 1"),
        ({"puzzle": "3..." ".3.." + "." * 8}, "3 appears twice in box 1"),
        ({"puzzle": 5}, "16 characters"),
        ({"puzzle": "." * 16, "max_steps": -1}, "max_steps"),
    ],
)
def test_invalid_grids_are_400(server, body, words):
    r = httpx.post(server + "/v1/solve", json=body)
    assert r.status_code == 400 and words in r.json()["error"]["message"], r.text


def test_solver_server_has_no_text_routes(server):
    r = httpx.post(server + "/v1/completions", json={"model": "x", "prompt": "a"})
    assert r.status_code == 400 and "/solver" in r.json()["error"]["message"]


def test_validity_check():
    from edgekit.kinds.solver.grid import is_sudoku_solution as is_valid_sudoku
    from edgekit.kinds.solver.grid import sudoku_conflict, sudoku_side

    p = np.array([1, 1, 3, 1, 2, 3, 4, 1, 3, 5, 1, 1, 4, 2, 1, 3])
    good = np.array([5, 4, 3, 2, 2, 3, 4, 5, 3, 5, 2, 4, 4, 2, 5, 3])
    assert is_valid_sudoku(p, good)
    assert not is_valid_sudoku(p, good[[1, 0, *range(2, 16)]])  # swaps break a column
    assert not is_valid_sudoku(np.full(16, 3), good)  # the givens are not kept
    assert sudoku_conflict(p, 4) is None and sudoku_side(16, 6) == 4
    assert sudoku_side(900, 6) is None  # a 30x30 maze in 6 tokens is not a Sudoku: no Sudoku rules applied


@pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                    reason="Debian's chromium and chromium-driver are not installed "
                           "(apt-get install -y chromium chromium-driver; .ci/run does it)")
def test_page_in_headless_chromium(server, trm_onnx, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=900,700"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    try:
        driver.get(server + "/solver")
        cells = driver.find_elements(By.CSS_SELECTOR, "#puzzle input")
        assert len(cells) == 16
        puzzle, label = puzzle_and_label(trm_onnx)
        # type the first half cell by cell, paste the whole puzzle into the text box (it fills the grid)
        for k, ch in enumerate(puzzle[:8]):
            if ch != ".":
                cells[k].send_keys(ch)
        driver.find_element(By.ID, "paste").send_keys(puzzle)
        assert "".join(c.get_attribute("value") or "." for c in cells) == puzzle
        driver.find_element(By.ID, "solve").click()
        status = driver.find_element(By.ID, "status")
        WebDriverWait(driver, 30).until(lambda d: status.get_attribute("data-steps") or "error" in status.text)
        answer = "".join(td.text for td in driver.find_elements(By.CSS_SELECTOR, "#answer td"))
        expected = httpx.post(server + "/v1/solve", json={"puzzle": puzzle}).json()
        assert answer == expected["answer"] == status.get_attribute("data-answer")
        assert int(status.get_attribute("data-steps")) == expected["steps"]
        assert "recursion step" in status.text
        assert expected["valid"] and answer == label  # the built-in TRM solves this held-out puzzle
        shot = tmp_path / "solver.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 5000

        # an invalid grid: the page shows the server's message
        driver.find_element(By.ID, "clear").click()
        cells[0].send_keys("9")
        driver.find_element(By.ID, "solve").click()
        WebDriverWait(driver, 30).until(lambda d: "error" in status.text)
        assert "is not a digit of a 4x4 Sudoku" in status.text
    finally:
        driver.quit()
