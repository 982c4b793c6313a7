"""ExecuTorch: ``.pte`` programs for the XNNPACK backend.

``quant`` quantises an eager module by a module-name -> config map (torchao configs; packed embedding tables);
``lower`` runs torch.export, lowers to XNNPACK, adds constant methods and serialises, optionally moving tagged
constants to ``.ptd`` data files.  Family files (``<family>.py``) build the eager module and choose what to quantise.
Options are validated here, at plan time, without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from edgekit.calibration import CalibrationOptions
from edgekit.mixed import MixedOptions

from ...errors import UnsupportedError
from ...plan import Options, QuantSpec, WeightKind, option

ARTIFACT = "model.pte"
GROUP_SIZES = (32, 64, 128, 256)  # XNNPACK's blockwise int4 GEMM; 0 = one scale per output channel
ALGORITHMS = ("affine", "gptq", "hqq")

QUANTS: dict[str, QuantSpec] = {
    q.name: q
    for q in (
        QuantSpec("fp32", WeightKind.FLOAT, 32, description="float32 weights and activations"),
        QuantSpec(
            "8da8w", WeightKind.INT, 8, None, activation_bits=8,
            description="int8 per-channel weights, dynamic per-token int8 activations",
        ),
        QuantSpec(
            "8da4w", WeightKind.INT, 4, 32, activation_bits=8,
            description="int4 grouped weights (group 32 by default), dynamic per-token int8 activations",
        ),
    )
}



@dataclass(frozen=True)
class LinearOptions(Options):
    """Options of every ExecuTorch recipe: how the linear layers are quantised."""

    FORMAT_NAME = "executorch"

    group_size: int | None = option(None, "ExecuTorch 8da4w: weights per scale (32/64/128/256, 0 = per channel; "
                                          "default 32, and the mixed-precision scan picks each linear's group "
                                          "within the byte budget; 8da8w is always per channel)")
    weight_algorithm: str | None = option(None, "ExecuTorch: affine (round-to-nearest), gptq (8da4w of a "
                                                "language model: GPTQ codes under affine's scales, from the "
                                                "calibration text) or hqq (torchao's HQQ scale search; slower); "
                                                "default gptq with the calibrated mixed precision, else affine",
                                          ALGORITHMS)

    def algorithm(self, quant: QuantSpec) -> str:
        """The weight algorithm: ``--weight-algorithm`` where given, else affine (a recipe with calibration
        overrides this)."""
        return self.weight_algorithm or "affine"

    def validate(self, quant: QuantSpec, given: set[str]) -> None:
        why = self.gptq_refusal(quant) if self.weight_algorithm == "gptq" else None
        if why is not None:
            raise UnsupportedError(f"executorch --weight-algorithm gptq cannot apply: {why}; pass affine or hqq")
        group = self.group_size
        if quant.is_float and group is not None:
            raise UnsupportedError("executorch --group-size applies to 8da4w only (fp32 has no weight groups)")
        if quant.weight_bits == 8 and group not in (None, 0):
            # XNNPACK's int8-weight GEMM takes one scale per output channel; grouped int8 cannot be lowered
            raise UnsupportedError("executorch 8da8w is per-channel only; drop --group-size (or pass 0)")
        if quant.weight_bits == 4 and group is not None and group != 0 and group not in GROUP_SIZES:
            raise UnsupportedError(
                f"executorch 8da4w --group-size {group} cannot be lowered to XNNPACK; valid: "
                f"{', '.join(map(str, GROUP_SIZES))}, or 0 for per-channel"
            )

    def gptq_refusal(self, quant: QuantSpec) -> str | None:
        """Why GPTQ codes cannot be written for ``quant`` (None: they can).  Only a language recipe reads a
        calibration text."""
        return "GPTQ needs a language model's calibration text (LFM2 8da4w)"

    def gptq_applies(self, quant: QuantSpec) -> bool:
        return self.gptq_refusal(quant) is None

    def group(self, quant: QuantSpec) -> int | None:
        """Weights per scale for ``quant`` (None: per output channel)."""
        if quant.weight_bits == 8:
            return None
        group = quant.group_size if self.group_size is None else self.group_size
        return group or None


@dataclass(frozen=True)
class LanguageOptions(CalibrationOptions, MixedOptions, LinearOptions):
    """Options of the language-model recipes (a tied embedding / LM head, a KV cache, LoRA).

    ``--mixed-precision`` / ``--byte-budget`` (8da4w): a sensitivity scan on the calibration text gives each linear
    its own int4 group size or int8 per channel within the byte budget (``mixed``); ``--calibration`` names that
    text.  They are LFM2's (the recipe that uses this class itself): a subclass — another family's options —
    has no calibrated or mixed quant unless it names ``CALIBRATED`` / ``MIXED`` in its own body."""

    # the calibration text feeds the mixed-precision scan and GPTQ's input Hessians (gptq.py)
    CALIBRATED: ClassVar[tuple[str, ...]] = ("8da4w",)
    MIXED: ClassVar[tuple[str, ...]] = ("8da4w",)
    # the default for 8da4w (--mixed-precision false or --no-calibration: every linear at --group-size): at the
    # default's 0.5625 bytes per weight it measured 0.8755 / 2.06e-2 -> 0.8887 / 1.74e-2 (top-1 / mean KL vs float,
    # built-in + LoRA, bench/calibration_quality.py); the estimated scan adds ~35 s to the built-in's export.
    # With --weight-algorithm hqq 0.9009 / 1.54e-2; --byte-budget 0.65: 0.9146 / 9.75e-3, 0.7: 0.9224 / 7.09e-3
    MIXED_DEFAULT: ClassVar[tuple[str, ...]] = ("8da4w",)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in ("CALIBRATED", "MIXED", "MIXED_DEFAULT"):
            if name not in cls.__dict__:
                setattr(cls, name, ())

    embedding_quant: str = option("none", "ExecuTorch: quantise the token embedding table (none, 8 or 4 bits)",
                                  ("none", "8", "4"))
    max_context: int | None = option(None, "ExecuTorch: KV cache length in tokens (default min(2048, the "
                                           "model's context length))")
    lora_mode: str = option("merged", "ExecuTorch: fold the adapter in (merged) or keep adapters separate "
                                      "(program inputs, one file each)", ("merged", "separate"))
    head_bits: int | None = option(None, "ExecuTorch 8da4w: bits of the tied LM head, 4 or 8 (default 8, per "
                                         "channel)", (4, 8))
    shared_embedding: str = option("auto", "ExecuTorch: store the tied embedding / LM head table once, in "
                                           "model.ptd (on; auto = on for fp32 and 8da4w) or keep one "
                                           "self-contained model.pte (off)", ("auto", "on", "off"))

    def validate(self, quant: QuantSpec, given: set[str]) -> None:
        super().validate(quant, given)
        self.check_calibration(quant, given)
        self.check_mixed(quant, given)
        if quant.name in self.CALIBRATED and not self.mixes(quant) and self.algorithm(quant) != "gptq":
            if self.calibration is not None:
                raise UnsupportedError("executorch --calibration is read by the mixed-precision scan and GPTQ only; "
                                       "add --mixed-precision true or --weight-algorithm gptq (or drop --calibration)")
        if quant.weight_bits != 4 and self.head_bits is not None:
            raise UnsupportedError("executorch --head-bits applies to 8da4w only")
        if self.max_context is not None and self.max_context < 16:
            raise UnsupportedError(f"executorch --max-context {self.max_context} is too small; pass at least 16")
        self.shares_embedding(quant)

    def gptq_refusal(self, quant: QuantSpec) -> str | None:
        if quant.name not in self.CALIBRATED:
            return f"{quant.name} is not a calibrated quant (only {', '.join(self.CALIBRATED) or 'none'})"
        if self.no_calibration:
            return "--no-calibration leaves no calibration text for its Hessians"
        if self.lora_mode != "merged":
            return "--lora-mode separate keeps the base unmerged, so there is no merged reference to calibrate"
        return None

    def algorithm(self, quant: QuantSpec) -> str:
        """``--weight-algorithm`` where given, else GPTQ with the calibrated mixed-precision default (merged
        LoRA) and affine without it.  GPTQ keeps torchao's round-to-nearest scales and replaces the codes
        (``gptq.py``); measured on the built-in + LoRA: README, "Calibrated 4-bit quantisation"."""
        if self.weight_algorithm is not None:
            return self.weight_algorithm
        return "gptq" if self.mixes(quant) and self.gptq_applies(quant) else "affine"

    def lm_head_bits(self, quant: QuantSpec) -> int:
        """Bits of the LM head's weights (32: float)."""
        if quant.is_float:
            return 32
        if quant.weight_bits == 8:
            return 8
        return self.head_bits or 8

    def shares_embedding(self, quant: QuantSpec) -> bool:
        """Whether the tied table is stored once.  Only a float32 or int8 head can serve the gather (there is
        no int4 gather kernel), and an explicit --embedding-quant asks for a table of its own.  ``auto`` shares where it costs no measurable quality:
        a float32 head (the same values), and 8da4w's int8 head (finer than every other weight); 8da8w asks for
        ``on``, because its int8 gather table cost 0.4 point of top-1 on the built-in model (0.9741 -> 0.9702,
        bar 0.97).  Raises UnsupportedError when ``on`` cannot apply."""
        if self.shared_embedding == "off":
            return False
        bits = self.lm_head_bits(quant)
        why = None
        if bits not in (32, 8):
            why = f"the LM head is int{bits} (only a float32 or int8 head can serve the gather; pass --head-bits 8)"
        elif self.embedding_quant != "none":
            why = "--embedding-quant asks for a table of its own"
        if why is not None:
            if self.shared_embedding == "on":
                raise UnsupportedError(f"executorch --shared-embedding on cannot apply: {why}")
            return False
        return self.shared_embedding == "on" or bits == 32 or quant.weight_bits == 4


@dataclass(frozen=True)
class SolverOptions(LinearOptions):
    """Options of the solver recipes (step programs of recursive reasoners)."""

    seq_len: int | None = option(None, "solvers: puzzle length the step graph is built for, when the checkpoint does "
                                       "not fix it (no dataset.json beside it)")
    max_batch: int = option(64, "ExecuTorch solvers: largest batch one step call takes (the program's dynamic batch "
                                "bound; larger batches are split)")

    def validate(self, quant: QuantSpec, given: set[str]) -> None:
        super().validate(quant, given)
        if self.max_batch < 1:
            raise UnsupportedError(f"executorch --max-batch must be at least 1, got {self.max_batch}")
