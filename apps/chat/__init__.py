"""A terminal chat over any edgekit language bundle (GGUF, ONNX or ExecuTorch): ``edgekit chat BUNDLE`` or
``python -m edgekit.apps.chat BUNDLE``.

Streams the answer as it is generated, renders the conversation with the bundle's own chat template, drops the
oldest turns when the conversation no longer fits the context window (and says so), prints a tokens/s line
after each answer; Ctrl-C stops the answer being generated and keeps the chat; ``/reset`` starts over,
``/quit`` (or Ctrl-D) leaves.  Needs only the bundle's runtime extra (no torch for GGUF/ONNX bundles).
"""

from __future__ import annotations

import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TextIO

from edgekit.errors import EdgekitError, UnsupportedError

from ..textgen import ChatTemplate, Outcome, stop_token_ids, stream_text

HELP = "commands: /reset (forget the conversation), /quit (or Ctrl-D); Ctrl-C stops an answer"


@dataclass
class Conversation:
    """The turns of one chat and how they are fitted into the context window.

    ``fit`` renders the conversation (system message first, if any) and drops the oldest user/assistant turns
    until prompt + ``max_tokens`` fits ``n_ctx`` tokens; it returns the prompt's token ids and how many turns
    were dropped.  A single message that cannot fit even alone raises UnsupportedError (the chat reports it and
    goes on)."""

    template: ChatTemplate
    tokenize: Callable[[str], list[int]]
    n_ctx: int
    system: str | None = None
    turns: list[dict[str, str]] = field(default_factory=list)

    def messages(self) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.turns

    def fit(self, max_tokens: int) -> tuple[list[int], int]:
        dropped = 0
        while True:
            ids = self.tokenize(self.template.render(self.messages()))
            if len(ids) + max_tokens <= self.n_ctx:
                return ids, dropped
            if len(self.turns) <= 1:
                self.turns.clear()
                raise UnsupportedError(
                    f"that message is {len(ids)} tokens; with --max-tokens {max_tokens} the context of {self.n_ctx} "
                    "tokens cannot hold it: send a shorter one (or lower --max-tokens)"
                )
            # drop the oldest exchange (a user turn and the answer after it), never the newest user turn
            del self.turns[: 2 if len(self.turns) > 2 and self.turns[1]["role"] == "assistant" else 1]
            dropped += 1


def run_chat(
    session: Any,
    root: Path,
    params: Any,
    system: str | None = None,
    stdin: TextIO = sys.stdin,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    """The read-generate-print loop; returns the exit code (0).  Ctrl-C during an answer stops it (the partial
    answer stays in the conversation); Ctrl-C at the prompt only reminds how to leave."""
    if not hasattr(session, "stream"):
        raise EdgekitError(
            f"{root} is a {session.manifest.get('kind')} model, not a language model: chat needs a language bundle "
            "(use `edgekit solve` or `edgekit serve` for a solver bundle)"
        )
    if threading.current_thread() is threading.main_thread():
        # Ctrl-C must reach the loop even when the process started with SIGINT ignored (a job started in the
        # background by a non-interactive shell inherits SIG_IGN, and Python then installs no KeyboardInterrupt
        # handler: CI's chat test saw a whole answer run through Ctrl-C)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    template = ChatTemplate.from_bundle(root, session.manifest)
    stops = stop_token_ids(session, template.stop_texts)
    conv = Conversation(template, lambda text: session.tokenize(text, add_special=False), session.n_ctx, system)
    how = "the bundle's chat template" if template.source else "a plain User:/Assistant: transcript (no template)"
    print(f"{root} on {session.engine}, context {session.n_ctx} tokens, {how}. {HELP}", file=err, flush=True)
    while True:
        try:
            out.write("> ")
            out.flush()
            line = stdin.readline()
        except KeyboardInterrupt:
            print("\n(/quit or Ctrl-D to leave)", file=err, flush=True)
            continue
        if not line:  # EOF
            out.write("\n")
            return 0
        text = line.rstrip("\n")
        if not text.strip():
            continue
        if text.strip() in ("/quit", "/exit"):
            return 0
        if text.strip() == "/reset":
            conv.turns.clear()
            print("[conversation reset]", file=err, flush=True)
            continue
        if text.strip() == "/help":
            print(HELP, file=err, flush=True)
            continue
        conv.turns.append({"role": "user", "content": text})
        try:
            ids, dropped = conv.fit(params.max_tokens)
        except EdgekitError as exc:
            print(f"[{exc}]", file=err, flush=True)
            continue
        if dropped:
            print(f"[context full: dropped the {dropped} oldest turn(s)]", file=err, flush=True)
        outcome = Outcome()
        answer: list[str] = []
        interrupted = False
        try:
            for piece in stream_text(session, ids, params, outcome, stop_ids=stops):
                answer.append(piece)
                out.write(piece)
                out.flush()
        except KeyboardInterrupt:
            interrupted = True
        conv.turns.append({"role": "assistant", "content": "".join(answer)})
        t = outcome.timing
        tps = t.decode_tps if t is not None else 0.0
        ttft = t.ttft_s * 1e3 if t is not None else 0.0
        note = " [stopped]" if interrupted else ""
        out.write("\n")
        out.flush()
        print(f"[{len(outcome.tokens)} tokens, {tps:.1f} tok/s, first token {ttft:.0f} ms, prompt "
              f"{outcome.prompt_tokens} tokens]{note}", file=err, flush=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m edgekit.apps.chat``: the same as ``edgekit chat``."""
    from edgekit.cli import main as cli_main

    return cli_main(["chat", *(sys.argv[1:] if argv is None else argv)])
