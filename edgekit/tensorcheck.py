"""The tensor check, the first verification gate: every weight read back from the written file, dequantised,
against the merged float32 weight it came from.

A format's read-back (``exporters/<format>/readback.py``) turns the file into ``ReadTensor`` values: the
dequantised float32 array under the checkpoint's own (Hugging Face) tensor name, the row range of that tensor it
holds (a fused q|k|v matrix is split back into its parts), the storage type, the quantisation block along the
input axis and the number of levels of one value, the modules that multiply by it (so a reference built from the
file's weights can quantise their inputs as the engine does) and that activation quantisation (``ActQuant``).
The family pair file (``exporters/<format>/<family>.py``) owns the name mapping and exposes
``file_weights(root, manifest, weights, model) -> (list[ReadTensor], aliases) | None`` (``weights``: the merged
float32 weights by checkpoint name; ``model``: the float reference, for a read-back that re-derives codes from its
activations, as ExecuTorch's GPTQ does; None: nothing to read back for this bundle).

``check(read, weights)`` then asks, per tensor:

* the right name and shape (every float weight of the reference must be covered, none may be foreign);
* per block, the largest |error| against the block's own quantisation step, estimated from the float block as
  ``2 * max|w| / (levels - 1)`` (the step of a symmetric round-to-nearest quantiser; an asymmetric one's step is
  never larger), so round-to-nearest gives <= 0.5 and a wrong scale, a transposed or a swapped block gives
  several steps;
* the relative RMS error ``||w_file - w|| / ||w||`` within a bound per storage type (``REL_RMS_BOUND``).

The bounds were measured on the built-in LFM2 (+ LoRA) with ``python -m edgekit.tensorcheck builtin:lfm2-tiny
--adapter builtin:lfm2-tiny-lora`` (prints the worst value per type for every format x quant) and set at
about twice the worst measurement; calibrated quantisers (GPTQ-style error feedback) move weights by more than
half a step by design, so ``BLOCK_STEP_BOUND`` leaves room for that.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

# Worst measured value per type (see the module docstring for the command) -> the bound, about 2x above.
# Float storage: relative RMS only (F16 rounding is 2^-11 relative, BF16 2^-8).
REL_RMS_BOUND: Mapping[str, float] = {
    "F32": 1e-6,  # measured 0
    "F16": 1e-3,  # measured 2.1e-4
    "BF16": 6e-3,  # measured 1.7e-3
    "Q8_0": 1.5e-2,  # measured 5.5e-3
    "Q6_K": 4e-2,  # measured 1.8e-2 (importance-weighted by llama.cpp's quantiser)
    "Q5_K": 8e-2,  # measured 3.7e-2
    "Q5_0": 8e-2,
    "Q4_K": 0.15,  # measured 7.4e-2
    "Q4_0": 0.17,  # measured 8.4e-2
    "TQ1_0": 1e-2,  # ternary: exact up to the fp16 scale
    "TQ2_0": 1e-2,
    "INT8": 1.5e-2,  # measured 6.5e-3 (ExecuTorch per-channel LM head)
    "INT4": 0.17,  # measured 9.8e-2 (ExecuTorch 8da4w group 32)
    "INT2": 1e-2,
    # ONNX MatMulNBits whose codes GPTQ wrote (--weight-algorithm gptq, exporters/onnx/gptq.py): round-to-nearest's
    # scales, codes moved by GPTQ's error compensation, so a storage type of its own (INT4 / INT8 keep their bounds).
    # Measured on the built-in + LoRA default export (mixed types): worst 0.153 (INT4: 0.114 in the same export with
    # --weight-algorithm affine) and 9.0e-3 (INT8: 7.0e-3); GPTQ trades weight error for output error
    "INT4_GPTQ": 0.3,
    "INT8_GPTQ": 1.8e-2,
    # GGUF Q4_0 / Q4_K whose codes GPTQ wrote under llama.cpp's block scales (exporters/gguf/gptq.py, the calibrated
    # q4_0 / q4_k_m default): measured worst 0.127 over the 23 Q4_0 matrices and 0.114 over the 19 Q4_K matrices of
    # the built-in + LoRA default exports (llama.cpp's own codes in the same files: 0.084 / 0.074); Q4_0 and Q4_K
    # keep their bounds for llama.cpp's codes
    "Q4_0_GPTQ": 0.25,
    "Q4_K_GPTQ": 0.23,
}
# The error's component along the weight, g = <w_file - w, w> / <w, w> (a tensor scaled by 1 + e has g ~ e): a
# quantiser whose scales are least-squares fits leaves an error orthogonal to what it stores, so g = -rel^2;
# round-to-nearest gives g ~ 0 +- sigma, sigma = rel / sqrt(n).  Bounds: -(GAIN_DOWN * rel^2 + 6 sigma) <= g <=
# GAIN_UP * rel^2 + 6 sigma.  Measured max of (g - 6 sigma) / rel^2 over every tensor, per type: -0.17 at most
# (no correct export stores a tensor larger along itself); of (-g - 6 sigma) / rel^2: GGUF Q4_K 0.55, Q4_0 0.42,
# Q5_0 0.43, Q5_K 0.80, Q6_K 1.21, Q8_0 -0.73; ONNX INT4 0.27 (hqq 0.35), INT8 -0.52; ExecuTorch INT4 0.28, INT8
# 0.97, BitNet's INT8 table 1.32 (built-in LFM2 + LoRA GGUF q4_0 / q4_k_m, ONNX int4 hqq, ExecuTorch 8da4w; a
# random LFM2 of another shape with a rank-1 adapter: GGUF q4_k_m / q8_0, ONNX int4 / int8; BitNet ExecuTorch).
# An eighth new-user trial scaled every Q5_0 block of a q4_k_m GGUF by 1.06 (g = +5.9e-2) and every int4
# MatMulNBits scale of an ONNX export by 1.05 (g = +4.8e-2): inside the relative RMS bounds, and fidelity, built
# from the file's own weights, cannot see it.
GAIN_UP = 0.5
GAIN_DOWN = 3.0
GAIN_SIGMAS = 6.0
# per row (``row_gain_failure``): measured max (-g - 6 sigma) / rel^2 -0.63 over 253,000 rows; 1.5 is above every
# per-tensor measurement too (BitNet's INT8 table 1.32)
ROW_GAIN_DOWN = 1.5
# per block: largest |error| / the block's step.  Round-to-nearest gives <= 0.5 (Q8_0 measured 0.56: the step
# estimate is from the float block, the scale from an fp16); llama.cpp's importance-weighted K-quant / Q4_0
# search trades a larger error on unimportant columns for a smaller one on important ones: measured Q6_K 1.75,
# Q5_K 1.39, Q4_K 1.15, Q4_0 1.61 steps.  A wrong, swapped or transposed block is off by about half the levels
# (4-bit: ~7 steps, 8-bit: ~127).
BLOCK_STEP_BOUND: Mapping[str, float] = {
    "Q8_0": 1.0,
    "Q6_K": 3.0,
    "Q5_K": 3.0,
    "Q5_0": 3.0,
    "Q4_K": 3.0,
    "Q4_0": 3.0,
    "TQ1_0": 0.1,
    "TQ2_0": 0.1,
    # measured 0.50 (LFM2: ONNX MatMulNBits, ExecuTorch per channel), 0.996 on BitNet's ONNX int8 head (an
    # asymmetric block: the rounded zero point shifts the block by up to half a step, the value by another half)
    "INT8": 1.5,
    "INT4": 3.0,  # measured 0.50 with round to nearest; HQQ (--weight-algorithm hqq) optimises scale and zero
    "INT2": 0.1,  # point for the whole block's error, so one weight may sit further from its float value
    # GPTQ (ONNX, exporters/onnx/gptq.py): each column's rounding error is pushed onto the columns after it, so a weight
    # moves by more than half a step; measured 2.56 (INT4) and 2.89 (INT8) steps on the built-in + LoRA default
    # export (round-to-nearest in that export: 0.94 / 1.00), bounds 2x; a wrong 4-bit block is ~7 steps off
    "INT4_GPTQ": 5.0,
    "INT8_GPTQ": 6.0,
    # GPTQ (GGUF, exporters/gguf/gptq.py): measured 2.91 (Q4_0) and 2.45 (Q4_K) steps on the built-in + LoRA q4_0 /
    # q4_k_m default exports (llama.cpp's own codes in the same files: 1.50 / 1.15), bounds 2x
    "Q4_0_GPTQ": 5.8,
    "Q4_K_GPTQ": 4.9,
}


# storage type prefix of a ternary weight (codes x one scale; BitNet): exact, bound 0 steps and 0 relative error
TERNARY_PREFIX = "ternary/"


# While set (``activation_jitter``), every ``ActQuant.apply`` first moves each input by about one float32 ulp: the
# reference against itself under that jitter measures how much a quantised model's output depends on where its
# activations happen to round (``parity``: ``act_noise_kl``), which any engine's accumulation order also decides.
_JITTER: Any = None
# relative size of the jitter: one float32 ulp (2**-23) times a standard normal draw per value
JITTER_ULP = 2.0 ** -23


@contextlib.contextmanager
def activation_jitter(seed: int) -> Any:
    """Within the block, every activation an ``ActQuant`` rounds is first multiplied by ``1 + JITTER_ULP * z``
    (``z`` standard normal, from a generator seeded with ``seed``, so the measurement repeats exactly)."""
    import torch

    global _JITTER
    previous, _JITTER = _JITTER, torch.Generator().manual_seed(seed)
    try:
        yield
    finally:
        _JITTER = previous


@dataclass(frozen=True)
class ActQuant:
    """How an engine quantises the *inputs* of a matmul with this weight (simulated in the fidelity reference).

    ``kind``: ``"none"``; ``"f16"`` / ``"bf16"`` (rounded to that float type); ``"sym_block"`` (symmetric int8,
    scale = max|x| / 127 per ``block`` values along the last axis: llama.cpp's Q8_0 (block 32) and Q8_K (block
    256), ONNX Runtime's MatMulNBits at accuracy level 4 (block = the weight block)); ``"asym_token"`` (int8
    asymmetric per token, scale = (max - min) / 255 with 0 representable: torchao's / XNNPACK's dynamic
    activations of 8da*).  ``scale_f16``: the scale is stored as float16 (Q8_0)."""

    kind: str = "none"
    block: int = 0
    scale_f16: bool = False

    def apply(self, x: Any) -> Any:
        """Fake-quantise torch tensor ``x`` (any shape, float32; last axis = the matmul's input features)."""
        import torch

        if self.kind == "none":
            return x
        if _JITTER is not None:
            x = x * (1.0 + JITTER_ULP * torch.randn(x.shape, generator=_JITTER, dtype=x.dtype))
        if self.kind == "f16":
            return x.to(torch.float16).to(x.dtype)
        if self.kind == "bf16":
            return x.to(torch.bfloat16).to(x.dtype)
        if self.kind == "sym_block":
            k = x.shape[-1]
            b = self.block if self.block and k % self.block == 0 else k
            xb = x.reshape(*x.shape[:-1], k // b, b)
            scale = xb.abs().amax(-1, keepdim=True) / 127.0
            inv = torch.where(scale > 0, 1.0 / scale, torch.zeros_like(scale))
            q = torch.clamp(torch.round(xb * inv), -127, 127)
            if self.scale_f16:
                scale = scale.to(torch.float16).to(x.dtype)
            return (q * scale).reshape(x.shape)
        if self.kind == "asym_token":
            lo = torch.clamp(x.amin(-1, keepdim=True), max=0.0)
            hi = torch.clamp(x.amax(-1, keepdim=True), min=0.0)
            scale = torch.clamp((hi - lo) / 255.0, min=torch.finfo(torch.float32).eps)
            zero = torch.clamp(-128 - torch.round(lo / scale), -128, 127)
            q = torch.clamp(torch.round(x / scale) + zero, -128, 127)
            return (q - zero) * scale
        raise ValueError(f"unknown activation quantisation {self.kind!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "block": self.block, "scale_f16": self.scale_f16}


@dataclass(frozen=True)
class ReadTensor:
    """One weight as the file holds it, dequantised to float32 and oriented like the checkpoint's tensor.

    ``name``: the tensor's name in the file; ``source``: the checkpoint (HF) name it came from; ``rows``: the
    [start, stop) rows of ``source`` it holds (None: all); ``qtype``: storage type (``REL_RMS_BOUND`` keys);
    ``block``: values per quantisation block along the last axis (0: float / per tensor); ``levels``: values one
    weight can take (2**bits; 3 for ternary; 0 for float); ``modules``: the reference's linear modules that
    multiply by this weight; ``act``: how the engine quantises their inputs."""

    name: str
    source: str
    values: np.ndarray
    qtype: str
    block: int = 0
    levels: int = 0
    rows: tuple[int, int] | None = None
    modules: tuple[str, ...] = ()
    act: ActQuant = field(default_factory=ActQuant)


@dataclass(frozen=True)
class TensorRow:
    name: str
    source: str
    qtype: str
    rel_rms: float
    block_steps: float  # worst block's max |error| in units of its step (NaN for float types)
    failure: str | None = None


@dataclass(frozen=True)
class TensorCheck:
    """The tensor check's result: one row per file tensor and the failures (one line each)."""

    rows: tuple[TensorRow, ...]
    failures: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.failures

    def worst(self) -> dict[str, dict[str, float]]:
        """Per storage type: the worst relative RMS error and block error (in steps), and how many tensors."""
        out: dict[str, dict[str, float]] = {}
        for r in self.rows:
            w = out.setdefault(r.qtype, {"tensors": 0, "rel_rms": 0.0, "block_steps": 0.0})
            w["tensors"] += 1
            w["rel_rms"] = max(w["rel_rms"], r.rel_rms)
            if r.block_steps == r.block_steps:
                w["block_steps"] = max(w["block_steps"], r.block_steps)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "failures": list(self.failures), "tensors": len(self.rows),
                "worst": self.worst()}


def block_steps(got: np.ndarray, ref: np.ndarray, block: int, levels: int) -> float:
    """Largest |got - ref| of any block, in units of that block's step ``2 max|ref| / (levels - 1)``."""
    k = ref.shape[-1]
    b = block if block and k % block == 0 else k
    r = ref.reshape(-1, b).astype(np.float64)
    e = np.abs(got.reshape(-1, b).astype(np.float64) - r).max(-1)
    step = 2.0 * np.abs(r).max(-1) / max(levels - 1, 1)
    tiny = step <= 1e-30
    ratio = np.where(tiny, np.where(e <= 1e-30, 0.0, np.inf), e / np.where(tiny, 1.0, step))
    return float(ratio.max()) if ratio.size else 0.0


def row_gain_failure(t: ReadTensor, diff: np.ndarray, ref: np.ndarray) -> str | None:
    """The gain bound of ``check`` applied to every row (output channel) of a 2-D tensor on its own, with the row's
    relative RMS error and ``sigma = rel_row / sqrt(row length)``: a new-user trial scaled half the rows of a
    matrix by 1 + e and the other half by 1 - e (a Q5_K ``ffn_down`` by 1.08 / 0.92, a GPTQ-written Q4_K one by
    1.25 / 0.75, ONNX int4 rows by 1.2 / 0.8), which leaves the tensor's gain near 0 and its relative error and
    block steps under their bounds — and fidelity, built from the file's weights, cannot see it.  Measured over
    every row of 15 correct GGUF / ONNX bundles (q8_0, q6_k, q5_k_m, q4_k_m, q4_0, ONNX int8, int4 with GPTQ; the
    built-in and three random LFM2s, 253,000 rows): max (g - 6 sigma) / rel^2 = -0.99 and max (-g - 6 sigma) /
    rel^2 = -0.63, so ``GAIN_UP`` holds each row with room, and the downward bound can be tighter than the
    tensor's (``ROW_GAIN_DOWN``: a shrunk row inflates its own rel, so ``GAIN_DOWN`` let rows x0.75 of a 4-bit
    tensor through).  None, or one failure line naming the first row outside and how many are."""
    norms = np.sum(ref.astype(np.float64) ** 2, axis=1)
    live = np.flatnonzero(norms > 0)
    if live.size == 0:
        return None
    gain = np.sum(diff[live] * ref[live], axis=1) / norms[live]
    rel = np.sqrt(np.sum(diff[live] ** 2, axis=1) / norms[live])
    sigma = GAIN_SIGMAS * rel / np.sqrt(ref.shape[1])
    low, high = -(ROW_GAIN_DOWN * rel**2 + sigma), GAIN_UP * rel**2 + sigma
    bad = np.flatnonzero(~((low <= gain) & (gain <= high)))
    if bad.size == 0:
        return None
    i = bad[0]
    return (f"tensor check: {t.name} ({t.qtype}) row {live[i]} is {1 + gain[i]:.4f}x that row of {t.source} along "
            f"itself (error component {gain[i]:+.2e}, outside [{low[i]:.1e}, {high[i]:.1e}] for its relative RMS error "
            f"{rel[i]:.2e}; {bad.size} of {live.size} rows outside): rescaled rows, not rounding")


def check(read: Sequence[ReadTensor], weights: Mapping[str, np.ndarray], aliases: Mapping[str, str] | None = None) -> TensorCheck:
    """Compare every read-back tensor with ``weights`` (float32, checkpoint names); ``aliases`` maps a weight
    that needs no tensor of its own to the one that serves it (a tied LM head -> the embedding)."""
    aliases = dict(aliases or {})
    rows: list[TensorRow] = []
    fails: list[str] = []
    covered: dict[str, int] = {}
    for t in read:
        if t.source not in weights:
            fails.append(f"tensor check: {t.name} claims to hold {t.source!r}, which the model does not have")
            continue
        ref = np.asarray(weights[t.source], dtype=np.float32)
        if t.rows is not None:
            ref = ref[t.rows[0] : t.rows[1]]
        covered[t.source] = covered.get(t.source, 0) + int(np.prod(ref.shape))
        got = np.asarray(t.values, dtype=np.float32)
        if got.shape != ref.shape:
            fails.append(f"tensor check: {t.name} has shape {list(got.shape)}, {t.source} is {list(ref.shape)}")
            continue
        diff = got.astype(np.float64) - ref
        norm = float(np.sqrt(np.sum(ref.astype(np.float64) ** 2)))
        rel = float(np.sqrt(np.sum(diff**2)) / norm) if norm > 0 else float(np.sqrt(np.sum(diff**2)))
        if not np.all(np.isfinite(got)):
            rel = float("inf")
        steps = block_steps(got, ref, t.block, t.levels) if t.levels else float("nan")
        why = None
        if t.qtype.startswith(TERNARY_PREFIX):  # ternary codes x scale: stored exactly, or the file is wrong
            rel_bound, step_bound = 0.0, 0.0
        else:
            rel_bound, step_bound = REL_RMS_BOUND.get(t.qtype), BLOCK_STEP_BOUND.get(t.qtype)
        if rel_bound is None:
            why = f"tensor check: {t.name} has storage type {t.qtype}, which has no recorded error bound"
        elif step_bound is not None and t.levels and not steps <= step_bound:
            why = (f"tensor check: {t.name} ({t.qtype}) has a block off by {steps:.2f} quantisation steps "
                   f"(bound {step_bound}; relative RMS error {rel:.2e}) against {t.source}")
        elif not rel <= rel_bound:
            why = f"tensor check: {t.name} ({t.qtype}) relative RMS error {rel:.2e} > {rel_bound:.1e} against {t.source}"
        if why is None and not t.qtype.startswith(TERNARY_PREFIX) and norm > 0:
            gain = float(np.sum(diff * ref) / norm**2)
            sigma = GAIN_SIGMAS * rel / np.sqrt(ref.size)
            low, high = -(GAIN_DOWN * rel**2 + sigma), GAIN_UP * rel**2 + sigma
            if not low <= gain <= high:
                why = (f"tensor check: {t.name} ({t.qtype}) is {1 + gain:.4f}x {t.source} along the weight (error "
                       f"component {gain:+.2e}, outside [{low:.1e}, {high:.1e}] for relative RMS error {rel:.2e}): a "
                       "rescaled tensor, not rounding")
        if why is None and t.levels and not t.qtype.startswith(TERNARY_PREFIX) and ref.ndim == 2:
            why = row_gain_failure(t, diff, ref)
        if why:
            fails.append(why)
        rows.append(TensorRow(t.name, t.source, t.qtype, rel, steps, why))
    for name, w in weights.items():
        if name in aliases or w.ndim == 0:
            continue
        if covered.get(name, 0) != int(np.prod(w.shape)):
            got = covered.get(name, 0)
            fails.append(f"tensor check: the file holds {got} of the {int(np.prod(w.shape))} values of {name}")
    return TensorCheck(tuple(rows), tuple(fails))


def fidelity_reference(model: Any, read: Sequence[ReadTensor]) -> Any:
    """A copy of the float reference ``model`` whose weights are the file's (dequantised) and whose linear
    modules quantise their inputs as the engine does (forward pre-hooks with each tensor's ``ActQuant``)."""
    import copy

    import torch

    ref = copy.deepcopy(model)
    params = dict(ref.named_parameters(remove_duplicate=False))
    # a tied pair (embedding / LM head) that the file stores twice, differently quantised: untie the copy
    sources = {t.source for t in read}
    for name in sorted(sources):
        p = params.get(name)
        if p is not None and any(o is p and n != name and n in sources for n, o in params.items()):
            owner, _, attr = name.rpartition(".")
            clone = torch.nn.Parameter(p.detach().clone(), requires_grad=False)
            setattr(ref.get_submodule(owner), attr, clone)
            params[name] = clone
    buffers = dict(ref.named_buffers())
    with torch.no_grad():
        for t in read:
            p = params.get(t.source, buffers.get(t.source))
            if p is None:
                continue
            v = torch.from_numpy(np.array(t.values, dtype=np.float32, copy=True)).to(p.dtype)
            if t.rows is None:
                p.copy_(v.reshape(p.shape))
            else:
                p[t.rows[0] : t.rows[1]].copy_(v.reshape(p[t.rows[0] : t.rows[1]].shape))
    modules = {k: m for k, m in ref.named_modules() if isinstance(m, torch.nn.Linear)}
    hooked: dict[str, ActQuant] = {}
    for t in read:
        for m in t.modules:
            if t.act.kind != "none":
                hooked[m] = t.act
    for name, act in hooked.items():
        if name in modules:
            modules[name].register_forward_pre_hook(lambda mod, args, act=act: (act.apply(args[0]), *args[1:]))
    ref.edgekit_act_quant = {k: v.to_dict() for k, v in hooked.items()}
    return ref


def _measure(argv: Sequence[str] | None = None) -> None:
    """Print the worst tensor-check values per type for every quant of a family's recipes (bounds measurement)."""
    import argparse
    import tempfile

    from .export import export, make_plan
    from .plan import Format
    from .recipes import RECIPES

    ap = argparse.ArgumentParser(prog="python -m edgekit.tensorcheck")
    ap.add_argument("source")
    ap.add_argument("--adapter")
    ap.add_argument("--format", action="append")
    args = ap.parse_args(argv)
    for fmt in args.format or [f.value for f in Format]:
        prep0 = make_plan(args.source, fmt, adapter=args.adapter)
        for q in prep0.recipe.quants:
            prep = make_plan(args.source, fmt, q, adapter=args.adapter)
            with tempfile.TemporaryDirectory() as tmp:
                out = export(prep, f"{tmp}/b", verify=False, progress=lambda s: None)
                from .bundle import read_manifest
                from . import reference

                model = reference.load_reference(prep.checkpoint, prep.adapter, prep.plan.options)
                res = run_check(out, read_manifest(out), model)
                print(fmt, q, "PASS" if res.passed else res.failures[:2], res.worst())


def read_back(root: Any, manifest: Mapping[str, Any], model: Any) -> tuple[list[ReadTensor], dict[str, str]] | None:
    """The bundle's weights read back by its recipe's pair file (None where the pair has no read-back yet), and
    the aliases (weights served by another tensor)."""
    from pathlib import Path

    from .checkpoint import open_checkpoint  # noqa: F401  (import order: recipes need the families)
    from .families import Family
    from .plan import Format
    from .recipes import RECIPES

    recipe = RECIPES.get(Family(manifest["family"]), Format.parse(manifest["format"]))
    pair = recipe.exporter()
    fn = getattr(pair, "file_weights", None)
    if fn is None:
        return None
    return fn(Path(root), manifest, reference_weights(manifest, model), model)


def _family_hook(manifest: Mapping[str, Any], hook: str) -> Any:
    """The family row's verification hook ``hook`` (``FamilySpec.reference_weights`` / ``file_reference``) as a
    function, or None where the family uses the defaults."""
    from .families import _resolve, get

    target = getattr(get(manifest["family"]), hook)
    return _resolve(target) if target else None


def keeps_adapter_hooks(manifest: Mapping[str, Any]) -> bool:
    """Whether the file-weights reference of this family keeps a separate adapter applied unmerged: the default
    ``fidelity_reference`` copies the model with its forward hooks (``adapters.with_lora_hooks``; the branch reads
    the input before the engine's activation quantisation, as the engines' branches do).  A family with its own
    ``file_reference`` (BitNet: projections rebuilt from the file) does not."""
    return _family_hook(manifest, "file_reference") is None


def reference_weights(manifest: Mapping[str, Any], model: Any) -> dict[str, np.ndarray]:
    """The weights the bundle's file must hold, float32 by checkpoint name: the family's hook where it has one
    (BitNet: ternary codes x scale), else the reference's parameters (``reference.state_dict``)."""
    from . import reference

    fn = _family_hook(manifest, "reference_weights")
    return fn(model) if fn is not None else reference.state_dict(model)


def engine_reference(manifest: Mapping[str, Any], model: Any, read: Sequence[ReadTensor]) -> Any:
    """The reference built from the file's weights ``read`` with the engine's activation quantisation: the
    family's hook where it has one, else ``fidelity_reference``."""
    fn = _family_hook(manifest, "file_reference")
    return fn(model, read) if fn is not None else fidelity_reference(model, read)


def constants_failures(root: Any, manifest: Mapping[str, Any], model: Any) -> tuple[str, ...]:
    """The checks of what is not a weight, against the checkpoint the reference ``model`` was built from: the files
    copied from it (``copied_file_failures``); the pair's ``file_structure(root, manifest, checkpoint, model)``
    where it has one (the file's graph against the one its exporter builds from ``model``: ONNX); and its
    ``file_constants(root, manifest, checkpoint)`` — every non-weight value its exporter writes (RoPE base, norm
    epsilon, head counts, vocabulary, bos/eos, kernel attributes), read back from the file.  One failure line per
    difference.  Such a change alters what the engine computes without touching a weight, and a sensitive model's
    widened fidelity bar can hide it (a new-user trial: a q8_0 GGUF with its RoPE base x0.9 passed fidelity)."""
    from pathlib import Path

    from .families import Family
    from .plan import Format
    from .recipes import RECIPES
    from .reference import checkpoint_of

    checkpoint = checkpoint_of(model)
    if checkpoint is None:
        return ()
    exporter = RECIPES.get(Family(manifest["family"]), Format.parse(manifest["format"])).exporter()
    structure = getattr(exporter, "file_structure", None)
    constants = getattr(exporter, "file_constants", None)
    return (manifest_failures(manifest, checkpoint) + copied_file_failures(Path(root), checkpoint)
            + (tuple(structure(Path(root), manifest, checkpoint, model))
               if structure else ())
            + (tuple(constants(Path(root), manifest, checkpoint)) if constants else ()))


def manifest_failures(manifest: Mapping[str, Any], checkpoint: Any) -> tuple[str, ...]:
    """The manifest's ``model`` and ``io`` sections against what the export writes for ``checkpoint`` (the
    kind's ``metadata`` and ``io``): eos / bos ids, context length, chat template, model config.  One failure
    line per differing section."""
    from . import kinds
    from .exporters import sidecars

    kind = kinds.behaviour(checkpoint.family.kind)
    expected = {"model": kind.metadata(checkpoint, manifest.get("artifact")), "io": kind.io(checkpoint)}
    return tuple(sidecars.check_manifest(manifest, expected, f"the checkpoint {checkpoint.path}"))


def copied_file_failures(root: Any, checkpoint: Any) -> tuple[str, ...]:
    """The files an export copies from the checkpoint into the bundle (``checkpoint.bundle_files``: tokenizer.json,
    tokenizer_config.json, generation_config.json, the chat template) compared byte for byte with the checkpoint's:
    engines and apps read them (merges, bos/eos, sampling defaults, the template), and verification tokenizes with
    the bundle's own copy, so an edited copy would otherwise be checked against itself (a new-user trial: a
    tokenizer.json without its first merge passed).  A file by one of those names (``checkpoint.TOKENIZER_FILES``)
    that the checkpoint lacks is refused too.  One failure line per missing, differing or extra file."""
    from .checkpoint import TOKENIZER_FILES
    from .hashing import sha256_file

    fails = []
    copied = {src.name for src in checkpoint.bundle_files}
    # a file by a name the export copies, which this checkpoint does not have: apps read it all the same (a
    # trial added a chat_template.jinja to a bundle of a template-less checkpoint)
    for name in sorted(set(TOKENIZER_FILES) - copied):
        if (root / name).exists():
            fails.append(f"tensor check: the bundle has a {name} that the checkpoint {checkpoint.path} does not "
                         f"have (the export copies only the checkpoint's); remove it or re-export")
    for src in checkpoint.bundle_files:
        copy = root / src.name
        if not copy.is_file():
            fails.append(f"tensor check: the bundle has no {src.name} (the export copies it from {checkpoint.path})")
        elif (a := sha256_file(copy)) != (b := sha256_file(src)):
            fails.append(f"tensor check: {src.name} in the bundle differs from the checkpoint's (sha256 {a[:12]}… vs "
                         f"{b[:12]}… in {checkpoint.path}); re-export, or edit the checkpoint's file and re-export")
    return tuple(fails)


def storage_bits(qtype: str) -> float | None:
    """Bits per stored value of a storage type by its name (``Q4_K`` 4, ``Q8_0`` 8, ``INT4`` 4, ``F16`` 16,
    ``BF16`` 16, ``F32`` 32); None for a ternary or unknown type."""
    import re

    if qtype.startswith(TERNARY_PREFIX):
        return None
    m = re.fullmatch(r"(?:Q|INT|B?F)(\d+)(?:_\w+)?", qtype)
    return float(m.group(1)) if m else None


def quant_failures(manifest: Mapping[str, Any], read: Sequence[ReadTensor]) -> tuple[str, ...]:
    """The plan's quant (``plan.quant.name``: the row whose bars verification applies) against the file: a linear
    weight stored with fewer bits than the quant's weights (under a float quant: in an integer type) is refused.
    Mixed precision and llama.cpp's K-quant fallbacks only ever store more bits.  An eighth new-user trial renamed
    a q4_k_m GGUF's quant to q8_0 in its manifest: q8_0's bars, widened by the 4-bit file's cost, passed a
    rescaled file."""
    from .errors import EdgekitError
    from .families import Family
    from .plan import Format
    from .recipes import RECIPES

    name = ((manifest.get("plan") or {}).get("quant") or {}).get("name")
    try:
        spec = RECIPES.get(Family(manifest["family"]), Format.parse(manifest["format"])).quant(name)
    except (EdgekitError, ValueError, KeyError):  # an unknown family / format / quant
        return (f"tensor check: the manifest's quant {name!r} is not one of its recipe's",)
    # a float quant: any float storage (BitNet's f32 GGUF keeps its F16 head), no integer type
    floor = min(spec.weight_bits, 16) if spec.is_float else spec.weight_bits
    low = sorted({(b, t.qtype) for t in read if t.modules and (b := storage_bits(t.qtype)) is not None
                  and b < floor})
    return tuple(f"tensor check: the file stores linear weights as {q} ({b:g} bits), below the plan's quant "
                 f"{spec.name} ({floor:g} bits); the manifest's plan does not describe this file"
                 for b, q in low)


def _checked(root: Any, manifest: Mapping[str, Any], model: Any, read: Sequence[ReadTensor],
             aliases: Mapping[str, str]) -> TensorCheck:
    tc = check(read, reference_weights(manifest, model), aliases)
    extra = quant_failures(manifest, read) + constants_failures(root, manifest, model)
    return TensorCheck(tc.rows, tc.failures + extra) if extra else tc


def run_check(root: Any, manifest: Mapping[str, Any], model: Any) -> TensorCheck | None:
    """Read the bundle at ``root`` back and check it against the float reference ``model`` (None: no read-back)."""
    got = read_back(root, manifest, model)
    if got is None:
        return None
    read, aliases = got
    return _checked(root, manifest, model, read, aliases)


def file_reference(root: Any, manifest: Mapping[str, Any], reference: Any) -> tuple[TensorCheck | None, Any]:
    """(tensor check or None, the reference built from the file's weights with the engine's activation numerics —
    ``reference`` itself where the pair has no read-back): what every kind's verification compares against."""
    got = read_back(root, manifest, reference)
    if got is None:
        return None, reference
    read, aliases = got
    return _checked(root, manifest, reference, read, aliases), engine_reference(manifest, reference, read)


if __name__ == "__main__":
    _measure()
