"""The options every BitNet recipe has, whatever the format (mixed into each format's BitNet options class)."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import UnsupportedError
from ...plan import Options, QuantSpec, option


@dataclass(frozen=True)
class BitNetOptions(Options):
    bitnet_activations: str = option("a8", "BitNet: activation quantisation of the reference (a8 = W1.58A8; a4.8 = "
                                           "BitNet a4.8's 4-bit attention/FFN inputs)", ("a8", "a4.8"))
    accept_reternarisation: bool = option(False, "BitNet: allow merging a LoRA adapter into a packed-only checkpoint "
                                                 "(its ternary codes are all there is to merge into; the "
                                                 "re-ternarised error is reported in the manifest)")

    def validate(self, quant: QuantSpec, given: set[str]) -> None:
        super().validate(quant, given)
        if self.bitnet_activations != "a8":
            # none of the three engines has 4-bit activation kernels (llama.cpp quantises to 8 bits inside its
            # ternary kernels; XNNPACK and MatMulNBits take int8 activations at most)
            raise UnsupportedError(
                f"{self.FORMAT_NAME} --bitnet-activations a4.8: no engine edgekit exports to has 4-bit activation "
                "kernels; export with a8 (a4.8 is a reference mode: edgekit.families.bitnet.reference)"
            )
