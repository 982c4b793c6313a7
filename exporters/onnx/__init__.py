"""ONNX: graphs for ONNX Runtime's CPU kernels, quantised with ONNX Runtime's own tools.

``builder`` writes graphs op by op; ``quantize`` applies ONNX Runtime's quantisers (float16 conversion,
block-wise ``MatMulNBits``, a tied embedding served by the LM head's quantised blocks); ``check`` records the
file's I/O signature and fails an export whose graph ONNX Runtime does not map onto the fused kernels the family
file asks for.  Family files (``<family>.py``) build the float32 graph and say which kernels it must use.
``mixed`` gives int4's MatMul weights (the tied head included) their own bits and block size under a byte budget
(``--mixed-precision``, a sensitivity scan on the calibration text: ``edgekit.mixed``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ...calibration import CalibrationOptions
from ...errors import UnsupportedError
from ...mixed import MixedOptions
from ...plan import Options, QuantSpec, WeightKind, option

ARTIFACT = "model.onnx"
DATA = "model.onnx.data"
BLOCKWISE = ("int8", "int4", "int2")

QUANTS: dict[str, QuantSpec] = {
    q.name: q
    for q in (
        QuantSpec("fp32", WeightKind.FLOAT, 32, description="float32, lossless"),
        QuantSpec("fp16", WeightKind.FLOAT, 16, description="float16 weights, activations and state; float32 logits"),
        QuantSpec(
            "int8", WeightKind.INT, 8, 32, activation_bits=8, method="round-to-nearest, symmetric",
            description="8-bit block-wise weights (MatMulNBits, block 32), int8 dynamic activations per block "
            "(accuracy level 4); tied embedding / LM head at 8 bits",
        ),
        QuantSpec(
            "int2", WeightKind.INT, 2, 128, activation_bits=8, method="exact ternary codes",
            description="2-bit block-wise weights (MatMulNBits bits=2, block 128), int8 activations per block: "
            "ternary weights stored exactly",
        ),
        QuantSpec(
            "int4", WeightKind.INT, 4, 32, activation_bits=8, method="round-to-nearest, symmetric",
            description="4-bit block-wise weights (MatMulNBits, block 32 by default), int8 activations per block "
            "(accuracy level 4); tied embedding / LM head at 4 bits (head_bits=8 for 8)",
        ),
    )
}



@dataclass(frozen=True)
class OnnxOptions(CalibrationOptions, MixedOptions):
    """Options of the language-model recipes.

    ``--mixed-precision`` / ``--byte-budget`` (int4): a sensitivity scan on the calibration text gives each
    MatMul weight, the tied embedding / LM head included, its own bits and block size within the byte budget
    (``mixed``); ``--calibration`` names that text.  They are LFM2's (the recipe that uses this class itself): a
    subclass — another family's options — has no calibrated or mixed quant unless it names ``CALIBRATED`` /
    ``MIXED`` in its own body."""

    FORMAT_NAME = "onnx"
    # the calibration text feeds the mixed-precision scan and GPTQ's input Hessians (--weight-algorithm gptq, the
    # default with mixed precision: exporters/onnx/gptq.py)
    CALIBRATED: ClassVar[tuple[str, ...]] = ("int4",)
    MIXED: ClassVar[tuple[str, ...]] = ("int4",)
    # the default for int4 (--mixed-precision false, --no-calibration or --weight-algorithm hqq: every weight at
    # --block-size, the head at --head-bits): at the default's 0.625 bytes per weight it measured 0.8599 / 2.78e-2
    # -> 0.8755 / 2.37e-2 (top-1 / mean KL vs float, built-in + LoRA, bench/calibration_quality.py), still short of
    # issue 15's 0.92 / 9e-3, which needs ~0.75 bytes per weight (--byte-budget 0.75: 0.9253 / 8.4e-3); with GPTQ's
    # codes (the default now) the export's own verification measured 0.8760 / 2.36e-2 -> 0.8936 / 1.75e-2
    MIXED_DEFAULT: ClassVar[tuple[str, ...]] = ("int4",)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in ("CALIBRATED", "MIXED", "MIXED_DEFAULT"):
            if name not in cls.__dict__:
                setattr(cls, name, ())

    block_size: int = option(32, "ONNX integer quants: weights per scale in MatMulNBits (int4 with mixed "
                                 "precision, the default: the plain assignment whose bytes are the budget)",
                             (16, 32, 64, 128, 256))
    accuracy_level: int = option(4, "ONNX int8/int4: MatMulNBits compute type (0 default, 1 fp32, 2 fp16, 3 bf16, "
                                    "4 int8 activations)", (0, 1, 2, 3, 4))
    head_bits: int | None = option(None, "ONNX int4: bits of the tied embedding / LM head (default 4; with mixed "
                                         "precision, part of the budget's plain assignment)", (4, 8))
    weight_algorithm: str | None = option(None, "ONNX int4: affine (symmetric round-to-nearest), gptq (GPTQ codes "
                                                "on the calibration text, round-to-nearest's scales and bytes; the "
                                                "default with mixed precision) or hqq (onnxruntime's HQQ: float zero "
                                                "point per block, +1 bit per weight, float compute; LM head stays "
                                                "affine)", ("affine", "gptq", "hqq"))
    lora_mode: str = option("merged", "ONNX: fold the adapter in (merged) or give the graph LoRA inputs and keep each "
                                      "--adapter NAME=PATH as an ONNX Runtime adapter file (separate)",
                            ("merged", "separate"))

    def mixes(self, quant: QuantSpec) -> bool:
        """As ``MixedOptions.mixes``; ``--weight-algorithm hqq`` (asymmetric blocks, which the scan does not
        assign) turns the default scan off."""
        if self.mixed_precision is None and self.byte_budget is None and self.weight_algorithm == "hqq":
            return False
        return super().mixes(quant)

    def algorithm(self, quant: QuantSpec) -> str:
        """The int4 weight algorithm: ``--weight-algorithm`` where given, else GPTQ with the calibrated mixed
        precision default and round-to-nearest ("affine") without it.  GPTQ, with round-to-nearest's scales,
        measured (bench/gptq_probe.py, built-in + LoRA, mixed types at 0.625 bytes per weight, PyTorch on 2,048
        held-out tokens) top-1 0.8770 -> 0.8931, mean KL 2.29e-2 -> 1.67e-2 (-27 %)."""
        if quant.name != "int4":
            return "affine"
        if self.weight_algorithm is not None:
            return self.weight_algorithm
        return "gptq" if self.mixes(quant) else "affine"

    def validate(self, quant: QuantSpec, given: set[str]) -> None:
        if quant.name != "int4" and "weight_algorithm" in given and self.weight_algorithm not in (None, "affine"):
            raise UnsupportedError(f"onnx --weight-algorithm {self.weight_algorithm} applies to --quant int4 only")
        self.check_calibration(quant, given)
        self.check_mixed(quant, given)
        if self.weight_algorithm == "gptq" and quant.name == "int4" and self.no_calibration:
            raise UnsupportedError("onnx --weight-algorithm gptq reads the calibration text; drop --no-calibration")
        if (quant.name in self.CALIBRATED and not self.mixes(quant) and self.calibration is not None
                and self.weight_algorithm != "gptq"):
            raise UnsupportedError("onnx --calibration is read by the mixed-precision scan only; add "
                                   "--mixed-precision true (or drop --calibration)")
        if self.mixes(quant):
            if self.weight_algorithm == "hqq":
                raise UnsupportedError(f"onnx --weight-algorithm {self.weight_algorithm}: mixed precision assigns "
                                       "symmetric round-to-nearest types; drop one of the two")
        blockwise = sorted(k for k in ("block_size", "accuracy_level") if k in given)
        if quant.name not in BLOCKWISE and blockwise:
            flags = ", ".join("--" + k.replace("_", "-") for k in blockwise)
            raise UnsupportedError(f"onnx {flags} apply to block-wise quants ({', '.join(BLOCKWISE)}) only, not {quant.name}")
        if not (quant.weight_bits <= 4 and not quant.is_float) and "head_bits" in given:
            raise UnsupportedError(f"onnx --head-bits applies to --quant int4 / int2 only, not {quant.name}")


@dataclass(frozen=True)
class SolverOptions(Options):
    """Options of the solver recipes (step graphs of recursive reasoners)."""

    FORMAT_NAME = "onnx"

    seq_len: int | None = option(None, "solvers: puzzle length the step graph is built for, when the checkpoint does "
                                       "not fix it (no dataset.json beside it)")
    block_size: int = option(32, "ONNX integer quants: weights per scale in MatMulNBits", (16, 32, 64, 128, 256))
    accuracy_level: int = option(4, "ONNX int8/int4: MatMulNBits compute type (0 default, 1 fp32, 2 fp16, 3 bf16, "
                                    "4 int8 activations)", (0, 1, 2, 3, 4))

    def validate(self, quant: QuantSpec, given: set[str]) -> None:
        blockwise = sorted(k for k in ("block_size", "accuracy_level") if k in given)
        if quant.name not in BLOCKWISE and blockwise:
            flags = ", ".join("--" + k.replace("_", "-") for k in blockwise)
            raise UnsupportedError(f"onnx {flags} apply to --quant int8 / int4 only, not {quant.name}")

    @property
    def head_bits(self) -> None:
        return None  # no tied LM head in a solver
