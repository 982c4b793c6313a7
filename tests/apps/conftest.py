from __future__ import annotations

from pathlib import Path

import pytest

from conftest import exported


@pytest.fixture(scope="session")
def lfm2_gguf(export_cache) -> Path:
    """The built-in LFM2 + its LoRA as a Q8_0 GGUF bundle (the same export as tests/runtimes/test_llamacpp.py)."""
    return exported(export_cache, "builtin:lfm2-tiny", "gguf", "q8_0", adapter="builtin:lfm2-tiny-lora")


@pytest.fixture(scope="session")
def trm_onnx(export_cache) -> Path:
    """The built-in TRM (Sudoku) as an fp32 ONNX bundle."""
    return exported(export_cache, "builtin:trm-sudoku", "onnx", "fp32", verify=False)
