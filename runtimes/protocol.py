"""The session protocol every engine implements, and the plain values it returns.

``edgekit.load(bundle)`` returns a ``LanguageSession`` for language models (LFM2, BitNet) whatever the engine;
solver families (TRM/HRM) get a ``SolverSession``.  Nothing here imports torch.
"""

from __future__ import annotations

import codecs
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 40
    top_p: float = 0.95
    seed: int | None = None
    stop_at_eos: bool = True

    def __post_init__(self) -> None:
        from ..errors import UnsupportedError

        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise UnsupportedError(f"max_tokens must be a positive integer, got {self.max_tokens!r}")
        if not self.temperature >= 0:
            raise UnsupportedError(f"temperature must be >= 0 (0 = greedy), got {self.temperature!r}")
        if self.top_k < 0:
            raise UnsupportedError(f"top_k must be >= 0 (0 = no limit), got {self.top_k!r}")
        if not 0 < self.top_p <= 1:
            raise UnsupportedError(f"top_p must lie in (0, 1], got {self.top_p!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass(frozen=True)
class Timing:
    """Engine-side timings of one generation (seconds)."""

    prompt_tokens: int = 0
    prefill_s: float = 0.0
    generated_tokens: int = 0
    decode_s: float = 0.0
    ttft_s: float = 0.0  # wall time from the call to the first generated token

    @property
    def prefill_tps(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def decode_tps(self) -> float:
        return self.generated_tokens / self.decode_s if self.decode_s > 0 else 0.0

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "prefill_tps": self.prefill_tps, "decode_tps": self.decode_tps}


@dataclass(frozen=True)
class Generation:
    text: str
    tokens: list[int]
    timing: Timing
    stopped_at_eos: bool = False


@dataclass
class StreamResult:
    """Filled in by ``stream()`` when the iterator is exhausted."""

    tokens: list[int] = field(default_factory=list)
    timing: Timing = field(default_factory=Timing)


Prompt = str | Sequence[int]


def utf8_text(pieces: Iterable[bytes]) -> Iterator[str]:
    """Text from per-token byte pieces.  A byte-level token may end inside a multi-byte character; its bytes
    are held back until the character is complete instead of raising or printing replacement characters."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for piece in pieces:
        text = decoder.decode(piece)
        if text:
            yield text
    tail = decoder.decode(b"", final=True)
    if tail:
        yield tail


def generate_via_stream(
    session: "LanguageSession", prompt: Prompt, params: SamplingParams,
    stream: Callable[[Prompt, SamplingParams, StreamResult], Iterator[str]] | None = None,
) -> Generation:
    """``generate`` for any session that implements ``stream`` (or a variant of it passed as ``stream``)."""
    result = StreamResult()
    text = "".join((stream or session.stream)(prompt, params, result))
    eos = params.stop_at_eos and len(result.tokens) < params.max_tokens
    return Generation(text=text, tokens=result.tokens, timing=result.timing, stopped_at_eos=eos)


@runtime_checkable
class LanguageSession(Protocol):
    engine: str
    manifest: Mapping[str, Any]
    vocab_size: int  # rows of the logits
    n_ctx: int  # tokens the session's state holds

    def tokenize(self, text: str, add_special: bool = True) -> list[int]: ...

    def detokenize(self, tokens: Sequence[int]) -> str: ...

    def generate(self, prompt: Prompt, params: SamplingParams = SamplingParams()) -> Generation: ...

    def stream(
        self, prompt: Prompt, params: SamplingParams = SamplingParams(), result: StreamResult | None = None
    ) -> Iterator[str]: ...

    def logits(self, tokens: Sequence[int], decode_from: int | None = None) -> np.ndarray:
        """Teacher-forced logits, float32 [len(tokens), vocab], from a fresh state.  ``decode_from``: positions from
        there on are fed one token per call on the path generation decodes with (the state carried between calls),
        earlier ones in one prefill; None: the engine's own scoring path."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class SteppableSession(Protocol):
    """Optional extension used by ``edgekit profile`` for llama-bench's method (random tokens, no sampling,
    prefill with N tokens already in the cache).  Engines without it are profiled through ``generate``, which
    cannot measure depth (``-d``).

    ``reset`` drops all sequence state (KV cache and any recurrent state).  ``feed`` runs the model over
    ``tokens`` appended to the current state, in the engine's prefill batches, without sampling, and returns
    the engine's own time for that work in seconds (its timers where it has them, else wall time around the
    engine call), so that Python overhead is not counted as model time.
    """

    def reset(self) -> None: ...

    def feed(self, tokens: Sequence[int]) -> float: ...


@runtime_checkable
class AdapterSession(Protocol):
    """Sessions over a bundle exported with ``--lora-mode separate`` (all three language engines implement it).

    ``adapters`` names the bundle's adapters (sorted); ``active_adapter`` is the one applied (None: the
    base alone, the state after loading unless ``load(bundle, adapter=NAME)``).  ``use_adapter(name | None,
    scale=1.0)`` switches in place — the base stays loaded; the sequence state is dropped — and returns the
    switch time in seconds; ``scale`` multiplies the adapter's update (1.0: as trained).  An unknown name raises
    AdapterError listing the known ones."""

    adapters: tuple[str, ...]
    active_adapter: str | None

    def use_adapter(self, name: str | None, scale: float = 1.0) -> float: ...


def adapter_entry(manifest: Mapping[str, Any], name: str | None, scale: float = 1.0) -> Mapping[str, Any] | None:
    """The manifest entry of adapter ``name`` (None for None); AdapterError for an unknown name or a bad scale."""
    from ..errors import AdapterError

    items = (manifest.get("adapters") or {}).get("items") or {}
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not np.isfinite(scale):
        raise AdapterError(f"adapter scale must be a finite number, got {scale!r}")
    if name is None:
        return None
    if name not in items:
        known = ", ".join(items) or "none (export with --lora-mode separate --adapter NAME=PATH)"
        raise AdapterError(f"no adapter {name!r} in this bundle; its adapters: {known}")
    return items[name]


@runtime_checkable
class SolverSession(Protocol):
    engine: str
    manifest: Mapping[str, Any]

    def solve(self, inputs: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...
