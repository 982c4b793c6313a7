"""The PyTorch reference: the source checkpoint with its adapter merged, in float32.

Every export is verified against this model, and every exporter reads its weights from it, so the file and
the reference can never disagree about what was merged.
"""

from __future__ import annotations

import weakref
from typing import Any, Sequence

import numpy as np

from .checkpoint import Checkpoint
from .lora import Adapter, merge


def load_reference(checkpoint: Checkpoint, adapter: Adapter | None, options: Any = None) -> Any:
    """The family's reference (built with the recipe's ``options`` where the family reads any) with ``adapter``
    merged: by the family's own merge where it has one (BitNet: on master weights, re-ternarised; its error
    report lands on ``model.edgekit_merge_report``), else by peft."""
    model = checkpoint.family.build_reference(checkpoint, options)
    if adapter is not None:
        if checkpoint.family.merge_adapter:
            model, report = checkpoint.family.merge(model, checkpoint, adapter, options)
            model.edgekit_merge_report = report
        else:
            model = merge(model, adapter)
    from .crosscheck import cross_check

    cross_check(checkpoint, adapter, model)  # the same weights, loaded another way from the original files
    _CHECKPOINTS[model] = checkpoint
    return model


# reference -> the checkpoint it was built from (the metadata check compares a file's constants with it); weak,
# and outside the module, so that copies of a reference do not copy the checkpoint
_CHECKPOINTS: "weakref.WeakKeyDictionary[Any, Checkpoint]" = weakref.WeakKeyDictionary()


def checkpoint_of(model: Any) -> Checkpoint | None:
    """The checkpoint ``load_reference`` built ``model`` from (None for any other model)."""
    try:
        return _CHECKPOINTS.get(model)
    except TypeError:  # not weakly referenceable
        return None


def state_dict(model: Any) -> dict[str, np.ndarray]:
    """Float32 numpy copies of the merged weights, keyed by Hugging Face names."""
    return {k: v.detach().to("cpu").float().numpy() for k, v in model.state_dict().items()}


def logits(model: Any, tokens: Sequence[int]) -> np.ndarray:
    """Teacher-forced logits [len(tokens), vocab] in float32."""
    import torch

    with torch.inference_mode():
        ids = torch.tensor([list(tokens)], dtype=torch.long)
        return model(input_ids=ids).logits[0].float().numpy()


def float64_copy(model: Any) -> Any | None:
    """A float64 copy of a reference (its parameters and buffers), or None when the family's forward cannot run in
    float64.  Parity measures the float32 reference's own rounding error with it (``parity.reference_noise``)."""
    import copy

    import torch

    twin = copy.deepcopy(model).double()
    try:
        with torch.inference_mode():
            twin(input_ids=torch.tensor([[0, 0]], dtype=torch.long))
    except (RuntimeError, TypeError):  # a forward that fixes float32 somewhere: no float64 twin
        return None
    return twin


def logits64(model: Any, tokens: Sequence[int]) -> np.ndarray:
    """Teacher-forced logits [len(tokens), vocab] in float64 of a ``float64_copy``."""
    import torch

    with torch.inference_mode():
        return model(input_ids=torch.tensor([list(tokens)], dtype=torch.long)).logits[0].double().numpy()


def greedy(model: Any, prompt: Sequence[int], n: int) -> list[int]:
    """``n`` greedy tokens after ``prompt``, decoded with the model's cache; no stop at eos, so that runs
    compare token by token."""
    import torch

    out_tokens: list[int] = []
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([list(prompt)], dtype=torch.long), use_cache=True)
        for _ in range(n):
            nxt = int(out.logits[0, -1].argmax())
            out_tokens.append(nxt)
            out = model(input_ids=torch.tensor([[nxt]], dtype=torch.long), cache=out.cache, use_cache=True)
    return out_tokens
