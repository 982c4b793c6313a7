"""edgekit/plan.py: format names and typed options."""

from dataclasses import dataclass

import pytest

from edgekit.errors import UnsupportedError
from edgekit.plan import Format, Options, QuantSpec, WeightKind, option

Q4 = QuantSpec("q4", WeightKind.INT, 4, 32)


def test_format_parse_names_known_formats():
    assert Format.parse("GGUF") is Format.GGUF
    with pytest.raises(UnsupportedError, match="known formats: gguf, executorch, onnx"):
        Format.parse("tflite")


@dataclass(frozen=True)
class ToyOptions(Options):
    FORMAT_NAME = "toy"

    size: int = option(32, "a size", (16, 32))
    mode: str = option("a", "a mode", ("a", "b"))
    limit: int | None = option(None, "an optional limit")
    fast: bool = option(False, "a switch")


def test_options_parse_converts_and_defaults():
    opts = ToyOptions.parse({"size": "16", "mode": "B", "limit": 7, "fast": "on", "unused": None}, Q4)
    assert opts == ToyOptions(size=16, mode="b", limit=7, fast=True)
    assert ToyOptions.parse({}, Q4) == ToyOptions()


@pytest.mark.parametrize(
    "raw, match",
    [
        ({"size": 48}, r"toy --size 48 is not valid; valid: 16, 32"),
        ({"size": "big"}, r"toy --size 'big' is not valid: expected int"),
        ({"limit": 2.5}, r"expected int"),
        ({"fast": "maybe"}, r"expected bool"),
        ({"colour": "red"}, r"toy export has no option --colour; its options: --size, --mode, --limit, --fast"),
    ],
)
def test_options_parse_refuses_bad_values_in_one_line(raw, match):
    with pytest.raises(UnsupportedError, match=match) as e:
        ToyOptions.parse(raw, Q4)
    assert "\n" not in str(e.value)


def test_options_are_frozen():
    with pytest.raises(Exception):
        ToyOptions().size = 16  # type: ignore[misc]
