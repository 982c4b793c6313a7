"""BitNet's verification hooks (``edgekit.tensorcheck``, issue 11): what the file must hold, and the reference
built from what it does hold.

* ``reference_weights(model)``: the weights every BitNet export writes, by Hugging Face name, float32: each
  ternary projection as ``codes x scale`` (``TernaryLinear.dense``), the embedding, norms and float projections
  as they are, and ``lm_head.weight`` (the embedding when tied, so a format that stores the head apart from the
  embedding — ExecuTorch without a shared table — can be checked; a format storing one table aliases it).
  A pair file labels a ternary projection's storage type ``"ternary/<type>"`` (``TERNARY_PREFIX``): those must
  be *exact* (``tensorcheck``: bound 0 steps, relative error 0): a changed scale, a flipped code or two swapped
  rows is refused.
* ``file_reference(model, read)``: the W1.58A8 reference rebuilt from the file's weights with the *engine's*
  activation numerics in place of BitNet's per-token absmax int8: each projection's input goes through the
  read tensor's ``ActQuant`` (llama.cpp TQ1_0/TQ2_0: Q8_K, symmetric int8 per 256 inputs; F16 weights: the
  input rounded to fp16; ONNX MatMulNBits at accuracy level 4: symmetric int8 per weight block; ExecuTorch 8da4w:
  asymmetric int8 per token; float formats: none), then a float matmul with the file's ``codes x scale``.
  An a4.8 export writes the reference's own quantise/dequantise (``reference.fake_quant``) into the graph in
  front of the engine's kernel, so it stays, with the engine's quantisation after it.  The LM head's input gets
  the head tensor's ``ActQuant`` (llama.cpp's F16 / Q8_0 ``token_embd``, ONNX's int8 head, ExecuTorch's int8 head).

The quantisation cost of a BitNet export is then this file reference against the W1.58A8 reference — the model as
it was trained and as its checkpoint defines it.  BitNet has no "float" model to compare with: its trained
forward *is* W1.58A8, a packed checkpoint has no master weights, and the master weights run in float are another
model that was never evaluated.  So the cost says what the format's numerics (its activation quantisation, the
embedding's and head's storage) change against the model's definition, which is what a user chooses by format.
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .reference import BitNetReference, activation_modes, fake_quant

TERNARY_PREFIX = "ternary/"
EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def reference_weights(model: BitNetReference) -> dict[str, np.ndarray]:
    """HF name -> float32 array of every weight a BitNet export stores (module docstring); ``model`` is built by
    ``reference.build_for_export`` (or merged by ``lora.merge_for_export``), which keeps ``model.weights``."""
    w = model.weights
    out = {name: t.dense() for name, t in w.ternary.items()}
    out.update({k: np.asarray(v, dtype=np.float32) for k, v in w.floats.items()})
    out.setdefault(HEAD, out[EMBED])
    return out


class EngineProjection(torch.nn.Module):
    """One projection as an engine computes it: the graph's own a4.8 quantise/dequantise (``pre``: mode, top-K;
    "float" for a8 models), then the engine's activation quantisation ``act``, then a float matmul with the file's
    weight ``[out, in]``."""

    def __init__(self, weight: np.ndarray, pre: tuple[str, float | None], act: Any) -> None:
        super().__init__()
        self.register_buffer("weight", torch.from_numpy(np.array(weight, dtype=np.float32)), persistent=False)
        self.pre, self.act = pre, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre[0] != "float":
            x = fake_quant(x, self.pre[0], self.pre[1])
        return F.linear(self.act.apply(x), self.weight)


def file_reference(model: BitNetReference, read: Sequence[Any]) -> BitNetReference:
    """A copy of ``model`` whose weights are the file's (``read``: ``tensorcheck.ReadTensor`` values under HF
    names) and whose projections quantise their inputs as the engine does (module docstring).  A weight the file
    does not hold keeps the model's (the tensor check has refused the file already)."""
    by_source = {t.source: t for t in read if t.rows is None}
    ref = copy.deepcopy(model)
    modes = activation_modes(model) if model.activations == "a4.8" else {}
    acts: dict[str, str] = {}
    with torch.no_grad():
        for i, layer in enumerate(ref.layers):
            p = f"model.layers.{i}"
            for leaf in PROJECTIONS:
                name = f"{p}.{'mlp' if leaf in ('gate_proj', 'up_proj', 'down_proj') else 'self_attn'}.{leaf}.weight"
                t = by_source.get(name)
                if t is not None:
                    setattr(layer, leaf, EngineProjection(t.values, modes.get(name, ("float", None)), t.act))
                    acts[name.removesuffix(".weight")] = str(t.act.to_dict())
            for norm, source in (("input_layernorm", f"{p}.input_layernorm.weight"),
                                 ("post_attention_layernorm", f"{p}.post_attention_layernorm.weight"),
                                 ("attn_sub_norm", f"{p}.self_attn.attn_sub_norm.weight"),
                                 ("ffn_sub_norm", f"{p}.mlp.ffn_sub_norm.weight")):
                _put(getattr(layer, norm), by_source.get(source))
        _put(ref.norm, by_source.get("model.norm.weight"))
        _put(ref.embed, by_source.get(EMBED))
        head = next((t for t in read if "lm_head" in t.modules), by_source.get(HEAD) or by_source.get(EMBED))
        if head is not None:
            ref.lm_head = torch.from_numpy(np.array(head.values, dtype=np.float32))
            if head.act.kind != "none":
                ref.head_act = head.act.apply
                acts["lm_head"] = str(head.act.to_dict())
    ref.edgekit_act_quant = acts
    return ref


def _put(buffer: torch.Tensor, t: Any) -> None:
    if t is not None:
        buffer.copy_(torch.from_numpy(np.array(t.values, dtype=np.float32)).reshape(buffer.shape))


def is_ternary(weight: np.ndarray) -> bool:
    """Whether a reference weight is ``codes x scale`` (every value 0 or +-max|w|): a pair file's test of which
    read-back tensors must be exact (``TERNARY_PREFIX``)."""
    a = np.abs(np.asarray(weight, dtype=np.float32))
    return a.ndim == 2 and bool(np.all((a == 0) | (a == a.max())))
