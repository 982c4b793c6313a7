"""The tensor check's gain bound per row (``tensorcheck.row_gain_failure``): a new-user trial scaled half the rows
of a 4/5-bit matrix up and the other half down, which left the tensor's gain, relative error and block steps
inside their bounds."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.tensorcheck import ReadTensor, check


def _int4(w: np.ndarray, block: int = 32) -> np.ndarray:
    """Symmetric round-to-nearest int4 per block of ``block`` inputs (onnxruntime's rule: the block's largest
    magnitude at code -8)."""
    b = w.reshape(w.shape[0], -1, block)
    big = np.take_along_axis(b, np.abs(b).argmax(-1)[..., None], -1)
    scale = np.where(big != 0, big / -8.0, 1.0)
    return (np.clip(np.round(b / scale), -8, 7) * scale).reshape(w.shape).astype(np.float32)


def _check(w: np.ndarray, got: np.ndarray) -> list[str]:
    t = ReadTensor("w", "w", got, "INT4", 32, 16)
    return list(check([t], {"w": w}).failures)


@pytest.fixture(scope="module")
def weight() -> np.ndarray:
    return np.random.default_rng(0).normal(0, 0.05, (256, 512)).astype(np.float32)


def test_round_to_nearest_passes(weight):
    assert _check(weight, _int4(weight)) == []


@pytest.mark.parametrize("e", [0.08, 0.05])
def test_half_the_rows_up_and_half_down_refused(weight, e):
    rows = np.where(np.arange(weight.shape[0]) % 2 == 0, 1 + e, 1 - e).astype(np.float32)[:, None]
    got = _int4(weight) * rows
    (fail,) = _check(weight, got)
    assert "row 0 is" in fail and "rows outside): rescaled rows, not rounding" in fail, fail
    assert "256 of 256 rows outside" in fail or "128 of 256 rows outside" in fail, fail
