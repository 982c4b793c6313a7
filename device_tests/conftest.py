"""Options and shared fixtures of the device suite: the bundle, its manifest and golden outputs, a session."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pytest

# the line the host looks for in the output to bring the measured metrics back
RESULT_PREFIX = "EDGEKIT_DEVICE_RESULT "
_results: dict[str, Any] = {}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--bundle", required=True, help="bundle directory on this device")
    parser.addoption("--threads", type=int, default=None, help="engine threads (default: all cores)")


def record(key: str, value: Any) -> None:
    _results[key] = value


@pytest.fixture(scope="session")
def bundle(request: pytest.FixtureRequest) -> Path:
    return Path(request.config.getoption("--bundle")).expanduser()


@pytest.fixture(scope="session")
def manifest(bundle: Path) -> dict[str, Any]:
    from edgekit.bundle import read_manifest

    return read_manifest(bundle)


@pytest.fixture(scope="session")
def golden(bundle: Path) -> dict[str, Any]:
    from edgekit.golden import read_golden

    return read_golden(bundle)


@pytest.fixture(scope="session")
def session(bundle: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    import edgekit

    threads = request.config.getoption("--threads")
    s = edgekit.load(bundle, **({"n_threads": threads} if threads else {}))
    yield s
    s.close()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _results:
        terminalreporter.write_line(RESULT_PREFIX + json.dumps(_results, default=str))
