"""The toy family's PyTorch reference: logits(t) = down(relu(up(embed(t)))); no context, so no cache."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
from torch import nn


class ToyMlp(nn.Module):
    def __init__(self, vocab: int, hidden: int) -> None:
        super().__init__()
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(vocab, hidden)
        self.up = nn.Linear(hidden, 4 * hidden, bias=False)
        self.down = nn.Linear(4 * hidden, vocab, bias=False)

    def forward(self, input_ids: torch.Tensor, use_cache: bool = False, cache: Any = None) -> SimpleNamespace:
        """input_ids int64 [batch, n] -> SimpleNamespace(logits float32 [batch, n, vocab], cache None)."""
        h = torch.relu(self.up(self.model.embed_tokens(input_ids)))
        return SimpleNamespace(logits=self.down(h), cache=None)


def build(checkpoint: Any, options: Any = None) -> ToyMlp:
    from safetensors.torch import load_file

    cfg = checkpoint.model_config
    model = ToyMlp(cfg.vocab_size, cfg.hidden_size)
    model.load_state_dict(load_file(str(checkpoint.files[0])), strict=True)
    return model.float().eval()


def save_random(out: Any, vocab: int, hidden: int = 64, seed: int = 0) -> None:
    """Write a random checkpoint (config.json + model.safetensors) to the directory ``out``."""
    import json

    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = ToyMlp(vocab, hidden)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(
        {"architectures": ["ToyMlpForCausalLM"], "model_type": "toymlp", "vocab_size": vocab, "hidden_size": hidden}
    ))
