"""The independent check of the reference's weights against the original files (issue 17, kind 1): it passes on
the built-ins and names the tensor when the reference was built from something else."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from edgekit import reference
from edgekit.checkpoint import open_checkpoint
from edgekit.crosscheck import cross_check
from edgekit.errors import CheckpointError
from edgekit.lora import open_adapter

torch = pytest.importorskip("torch")


def test_lfm2_reference_matches_the_files_and_catches_a_wrong_merge():
    ckpt = open_checkpoint("builtin:lfm2-tiny")
    lora = open_adapter("builtin:lfm2-tiny-lora", ckpt)
    model = reference.load_reference(ckpt, lora)  # runs cross_check itself
    # a loader that read use_rslora wrongly would merge with alpha/sqrt(r) instead of alpha/r
    wrong = replace(lora, config={**lora.config, "use_rslora": True})
    with pytest.raises(CheckpointError, match=r"differs from an independent load .*max \|Δ\|") as e:
        cross_check(ckpt, wrong, model)
    assert "\n" not in str(e.value)
    # a tensor that is not the file's (e.g. a random initialisation)
    with torch.no_grad():
        model.model.layers[1].conv.out_proj.weight.normal_()
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\.conv\.out_proj\.weight"):
        cross_check(ckpt, lora, model)


def test_bitnet_reference_matches_transformers_and_peft():
    ckpt = open_checkpoint("builtin:bitnet-tiny")
    lora = open_adapter("builtin:bitnet-tiny-lora", ckpt)
    model = reference.load_reference(ckpt, lora)  # runs cross_check itself
    name = "model.layers.2.mlp.gate_proj.weight"
    t = model.weights.ternary[name]
    flipped = t.codes.copy()
    flipped[0, :4] = -flipped[0, :4] + np.where(flipped[0, :4] == 0, 1, 0)
    model.weights.ternary[name] = replace(t, codes=flipped)
    with pytest.raises(CheckpointError, match=rf"{name}: \d+ ternary codes differ from transformers \+ peft"):
        cross_check(ckpt, lora, model)
