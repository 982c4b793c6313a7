"""What the chat and the server share: the bundle's chat template, and a stream that stops at stop tokens and
stop strings.  No torch; jinja2 only when a template is rendered."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from edgekit.errors import EdgekitError, UnsupportedError


class TemplateError(EdgekitError):
    """The bundle's chat template failed to render the conversation."""


@dataclass(frozen=True)
class ChatTemplate:
    """A bundle's chat template (Jinja2, the Hugging Face convention: ``messages``, ``bos_token``, ``eos_token``,
    ``add_generation_prompt``), rendered in jinja2's immutable sandbox as transformers does.

    ``stop_texts``: special tokens that end an assistant turn (``<|im_end|>`` for ChatML templates); a chat stops
    generating at them even when the model's EOS id is another token (EOS itself is the session's business:
    ``SamplingParams.stop_at_eos``)."""

    source: str | None
    bos_token: str = ""
    eos_token: str = ""
    stop_texts: tuple[str, ...] = ()

    @classmethod
    def from_bundle(cls, root: Path, manifest: Mapping[str, Any]) -> "ChatTemplate":
        """Template from the manifest (``model.chat_template``), else ``chat_template.jinja``, else
        ``tokenizer_config.json``; special tokens from ``tokenizer_config.json``.  ``source`` is None when the
        bundle has none (``render`` then writes a plain ``User:``/``Assistant:`` transcript)."""
        config: dict[str, Any] = {}
        path = Path(root) / "tokenizer_config.json"
        if path.is_file():
            try:
                config = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                config = {}
        source = (manifest.get("model") or {}).get("chat_template")
        jinja = Path(root) / "chat_template.jinja"
        if not source and jinja.is_file():
            source = jinja.read_text(encoding="utf-8")
        if not source:
            source = config.get("chat_template") if isinstance(config.get("chat_template"), str) else None

        def token(name: str) -> str:
            value = config.get(name)
            if isinstance(value, Mapping):  # older tokenizer_config files store AddedToken dicts
                value = value.get("content")
            return value if isinstance(value, str) else ""

        eos = token("eos_token")
        stops = [t for t in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>") if source and t in source]
        return cls(source=source, bos_token=token("bos_token"), eos_token=eos, stop_texts=tuple(stops))

    def render(self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True) -> str:
        """The prompt text for ``messages`` (each {"role", "content"}).  Raises TemplateError in one line."""
        if self.source is None:
            text = "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages)
            return self.bos_token + text + ("Assistant:" if add_generation_prompt else "")
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise TemplateError(f"the chat template refused the conversation: {message}")

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        try:
            return env.from_string(self.source).render(
                messages=list(messages), bos_token=self.bos_token, eos_token=self.eos_token,
                add_generation_prompt=add_generation_prompt,
            )
        except jinja2.TemplateError as exc:
            raise TemplateError(f"the bundle's chat template failed: {exc}") from None


def stop_token_ids(session: Any, texts: Sequence[str]) -> frozenset[int]:
    """Ids of the special tokens named in ``texts`` that the tokenizer knows as one token (not the EOS ids: the
    session stops at those unless asked not to)."""
    ids: set[int] = set()
    for text in texts:
        toks = session.tokenize(text, add_special=False)
        if len(toks) == 1:
            ids.add(int(toks[0]))
    return frozenset(ids)


@dataclass
class Outcome:
    """Filled in by ``stream_text`` when its iterator ends.  finish_reason: "stop" (a stop token or string, or
    EOS), "length" (max_tokens), "cancelled" (the caller's cancel event)."""

    prompt_tokens: int = 0
    tokens: list[int] = field(default_factory=list)
    finish_reason: str = "stop"
    timing: Any = None


class _StopStrings:
    """Holds back text that may be the start of a stop string, so that no part of a stop string is emitted."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.buffer = ""

    def feed(self, text: str) -> tuple[str, bool]:
        self.buffer += text
        cut = min((i for i in (self.buffer.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            out, self.buffer = self.buffer[:cut], ""
            return out, True
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.buffer)), 0, -1):
                if self.buffer.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        out = self.buffer[: len(self.buffer) - hold]
        self.buffer = self.buffer[len(out):]
        return out, False

    def flush(self) -> str:
        out, self.buffer = self.buffer, ""
        return out


def stream_text(
    session: Any,
    prompt_ids: Sequence[int],
    params: Any,
    outcome: Outcome,
    stop_ids: frozenset[int] = frozenset(),
    stop_strings: Sequence[str] = (),
    cancel: threading.Event | None = None,
) -> Iterator[str]:
    """Text pieces of one generation from token ids, ending at a stop token (not emitted), a stop string (cut
    before it), max_tokens, or when ``cancel`` is set (checked between pieces).  The session's own generator is
    closed on every exit, so the session is free when this iterator is closed or exhausted."""
    from edgekit.runtimes import StreamResult

    if not prompt_ids:
        raise UnsupportedError("empty prompt")
    outcome.prompt_tokens = len(prompt_ids)
    result = StreamResult()
    stops = _StopStrings(stop_strings)
    seen = 0
    gen = session.stream(list(prompt_ids), params, result)
    try:
        for piece in gen:
            new = result.tokens[seen:]
            hit = next((k for k, t in enumerate(new) if t in stop_ids), None)
            if hit is not None:
                # a special token's own text is empty; the piece came from the tokens after it: drop both
                del result.tokens[seen + hit:]
                outcome.finish_reason = "stop"
                break
            seen = len(result.tokens)
            text, stopped = stops.feed(piece)
            if text:
                yield text
            if stopped:
                outcome.finish_reason = "stop"
                break
            if cancel is not None and cancel.is_set():
                outcome.finish_reason = "cancelled"
                break
        else:
            hit = next((k for k, t in enumerate(result.tokens[seen:]) if t in stop_ids), None)
            if hit is not None:
                del result.tokens[seen + hit:]
            tail = stops.flush()
            if tail:
                yield tail
            outcome.finish_reason = "length" if len(result.tokens) >= params.max_tokens else "stop"
    finally:
        gen.close()
        outcome.tokens = list(result.tokens)
        outcome.timing = result.timing
