"""A deliberately small throwaway family, added the way README "Adding a family" says, without touching any
generic edgekit file: a bigram MLP language model (token -> embedding -> MLP -> next-token logits).

It lives in the test tree as a real family would live in ``edgekit/families/<name>/`` plus
``exporters/<format>/<name>.py``: this ``__init__`` (config + family row + recipe row), ``reference.py`` (the
torch model) and ``onnx.py`` (the ONNX pair).  ``register()`` adds both rows; ``unregister()`` removes them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

from edgekit.errors import CheckpointError
from edgekit.exporters import onnx
from edgekit.families import FAMILIES, Family, FamilySpec, ModelKind
from edgekit.kinds.language import Thresholds
from edgekit.plan import Format, NoOptions, pick
from edgekit.recipes import RECIPES, Recipe

FAMILY = Family("toymlp")


@dataclass(frozen=True)
class ToyConfig:
    vocab_size: int
    hidden_size: int
    max_position_embeddings: int
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]
    pad_token_id: int | None

    @classmethod
    def from_hf(cls, c: Mapping[str, Any]) -> "ToyConfig":
        try:
            eos = c.get("eos_token_id")
            return cls(int(c["vocab_size"]), int(c["hidden_size"]), int(c.get("max_position_embeddings", 2048)),
                       c.get("bos_token_id"), tuple(eos if isinstance(eos, list) else [eos] if eos is not None else []),
                       c.get("pad_token_id"))
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"config.json: not a toymlp config ({exc})") from None

    def kv_values_per_position(self) -> int:
        return 0  # no attention, no cache

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


SPEC = FamilySpec(
    family=FAMILY,
    kind=ModelKind.LANGUAGE,
    architectures=("ToyMlpForCausalLM",),
    model_types=("toymlp",),
    lora_targets=frozenset({"up", "down"}),
    read_config=ToyConfig.from_hf,
    reference="toy_family.reference:build",
)

RECIPE = Recipe(
    FAMILY, Format.ONNX, pick(onnx.QUANTS, "fp32"), default_quant="fp32",
    thresholds={"fp32": Thresholds(min_top1=0.999, max_mean_kl=1e-6, max_abs_logit=1e-3, min_greedy_prefix=32)},
    options=NoOptions, module="toy_family.onnx",
)


def register() -> None:
    FAMILIES.register(SPEC)
    RECIPES.register(RECIPE)


def unregister() -> None:
    RECIPES.unregister(FAMILY)
    FAMILIES.unregister(FAMILY)
