"""The options every BitNet recipe has, whatever the format (mixed into each format's BitNet options class)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

from ...errors import UnsupportedError
from ...plan import Options, QuantSpec, option


@dataclass(frozen=True)
class BitNetOptions(Options):
    bitnet_activations: str = option("a8", "BitNet: activation quantisation of the reference (a8 = W1.58A8; a4.8 = "
                                           "BitNet a4.8's 4-bit attention/FFN inputs)", ("a8", "a4.8"))
    accept_reternarisation: bool = option(False, "BitNet: allow merging a LoRA adapter into a packed-only checkpoint "
                                                 "(its ternary codes are all there is to merge into; the "
                                                 "re-ternarised error is reported in the manifest)")

    # whether the format can express a4.8's quantise/dequantise numerics in its graph (GGUF cannot: llama.cpp's
    # bitnet graph has no place for them and its ternary kernels quantise activations to 8 bits themselves)
    A48_IN_GRAPH: ClassVar[bool] = True

    def thresholds(self, base: Any) -> Any:
        """a4.8 float exports: one 4-bit activation code rounding the other way in the engine moves a logit by up
        to ~0.05 (measured, built-in + LoRA, 2,048 tokens: ONNX fp32 mean KL 1.5e-7, max |Δlogit| 5.4e-2;
        ExecuTorch fp32 3.6e-7), far above the a8 float bars (1e-9, 1e-4); the a4.8 float bars are set ~3x those
        (mean KL 1e-6, max |Δlogit| 0.15).  Quantised a4.8 exports keep their bars (ONNX int2 a4.8 measured 0.9917 /
        5.1e-5 against them)."""
        if self.bitnet_activations != "a4.8" or base.max_abs_logit is None:
            return base
        return replace(base, max_mean_kl=max(base.max_mean_kl, 1e-6), max_abs_logit=max(base.max_abs_logit, 0.15))

    def validate(self, quant: QuantSpec, given: set[str]) -> None:
        super().validate(quant, given)
        if self.bitnet_activations != "a8" and not self.A48_IN_GRAPH:
            raise UnsupportedError(
                f"{self.FORMAT_NAME} --bitnet-activations a4.8: llama.cpp's bitnet graph cannot express 4-bit "
                "activations (its ternary kernels quantise them to 8 bits); export a4.8 to onnx or executorch "
                "(quantise/dequantise numerics in the graph; no engine has 4-bit activation kernels), or use a8"
            )
