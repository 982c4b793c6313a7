"""GGUF: the file format of llama.cpp.  Quantisation names are llama.cpp's (``q4_k_m``), case-insensitive.

``writer`` writes a file from GGUF-named tensors and a metadata callback (F32/F16/BF16/Q8_0 and the ternary
TQ types through the ``gguf`` package; Q4_0 and K-quants written as F32 and converted by llama.cpp's own
``llama_model_quantize``); ``vocab`` writes the tokenizer section.  Family files (``<family>.py``) map a family's
tensors and hyperparameters onto llama.cpp's architecture.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from edgekit.calibration import CalibrationOptions
from edgekit.mixed import MixedOptions
from ...plan import QuantSpec, WeightKind, option

ARTIFACT = "model.gguf"

QUANTS: dict[str, QuantSpec] = {
    q.name: q
    for q in (
        QuantSpec("f32", WeightKind.FLOAT, 32, description="float32, lossless"),
        QuantSpec("f16", WeightKind.FLOAT, 16, description="float16"),
        QuantSpec("bf16", WeightKind.FLOAT, 16, description="bfloat16"),
        QuantSpec("q8_0", WeightKind.INT, 8, 32, description="8-bit, blocks of 32, one f16 scale"),
        QuantSpec("q6_k", WeightKind.INT, 6, 16, method="k-quant", description="6-bit k-quant"),
        QuantSpec("q5_k_m", WeightKind.INT, 5, 32, method="k-quant", description="5-bit k-quant, mixed"),
        QuantSpec("q4_k_m", WeightKind.INT, 4, 32, method="k-quant", description="4-bit k-quant, mixed"),
        QuantSpec("q4_0", WeightKind.INT, 4, 32, description="4-bit, blocks of 32, one f16 scale"),
        QuantSpec("tq1_0", WeightKind.INT, 1.6875, 256, method="ternary, exact",
                  description="ternary weights, 1.69 bits each (base-3 packed), per-tensor scale kept apart"),
        QuantSpec("tq2_0", WeightKind.INT, 2.0625, 256, method="ternary, exact",
                  description="ternary weights, 2.06 bits each (2-bit fields), per-tensor scale kept apart"),
    )
}



@dataclass(frozen=True)
class GgufOptions(CalibrationOptions, MixedOptions):
    FORMAT_NAME = "gguf"
    # llama.cpp's quantiser weighs each column's rounding error by the importance matrix for these types
    # (bench/calibration_quality.py measured a gain for each; Q6_K gained nothing, so it stays plain)
    CALIBRATED = ("q4_0", "q4_k_m", "q5_k_m")
    # a sensitivity scan re-assigns ggml types per tensor under a byte budget (exporters/gguf/mixed.py)
    MIXED = ("q4_0", "q4_k_m", "q5_k_m")
    # the default for q4_k_m and q4_0 (--mixed-precision false for llama.cpp's own assignment): at the default's
    # bytes per weight it measured q4_k_m 0.9136 / 1.15e-2 -> 0.9370 / 6.9e-3 and q4_0 0.8950 / 1.47e-2 ->
    # 0.9160 / 1.02e-2 (cost vs float, built-in model, bench/RESULTS.md); the estimated scan on 512 tokens adds
    # ~6 s to the built-in's export (one forward pass per matrix; bench/mixed_scan.py)
    MIXED_DEFAULT: ClassVar[tuple[str, ...]] = ("q4_0", "q4_k_m")

    pretokenizer: str | None = option(None, "GGUF: llama.cpp pre-tokenizer name, when it cannot be derived from "
                                            "tokenizer.json")
    lora_mode: str = option("merged", "GGUF: fold the adapter in (merged) or keep each --adapter NAME=PATH as a "
                                      "llama.cpp LoRA adapter file, applied at run time (separate)", ("merged", "separate"))

    def validate(self, quant: QuantSpec, given: set[str]) -> None:
        self.check_calibration(quant, given)
        self.check_mixed(quant, given)
        if self.pretokenizer is not None:
            from .vocab import check_pretokenizer_name

            check_pretokenizer_name(self.pretokenizer)
