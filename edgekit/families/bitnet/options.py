"""The options every BitNet recipe has, whatever the format (mixed into each format's BitNet options class)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

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

    def validate(self, quant: QuantSpec, given: set[str]) -> None:
        super().validate(quant, given)
        if self.bitnet_activations != "a8" and not self.A48_IN_GRAPH:
            raise UnsupportedError(
                f"{self.FORMAT_NAME} --bitnet-activations a4.8: llama.cpp's bitnet graph cannot express 4-bit "
                "activations (its ternary kernels quantise them to 8 bits); export a4.8 to onnx or executorch "
                "(quantise/dequantise numerics in the graph; no engine has 4-bit activation kernels), or use a8"
            )
