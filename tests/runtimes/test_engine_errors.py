"""An engine's own run error reaches the user as one EngineError line, not onnxruntime's exception (issue 17)."""

import numpy as np
import pytest

from conftest import exported
from edgekit.errors import EngineError


def test_onnxruntime_run_error_is_an_engine_error(export_cache):
    import edgekit

    session = edgekit.load(exported(export_cache, "builtin:trm-sudoku", "onnx", "fp32", verify=False))
    try:
        bad = np.zeros((1, 3, 3), np.float32)
        with pytest.raises(EngineError, match="onnxruntime failed to run") as err:
            session.step(bad, bad, np.zeros((1, 2), np.int64), np.zeros(1, np.int64))
        assert "\n" not in str(err.value)
    finally:
        session.close()
