"""Greedy text generation through ExecuTorch's own C++ ``TextLLMRunner``: the decode loop runs in C++ and the
wrapper adds one callback per token, so ``edgekit.load`` decodes as fast as the bare runner (bench/RESULTS.md).

Two things in the runner's Python binding need working around:

* it hands each token to Python as *text*, and a byte-level token that ends inside a UTF-8 character is not
  valid text (the binding raises and generation dies).  The runner therefore gets a copy of the bundle's
  tokenizer without its decoder: every piece is then the token's byte-level spelling — always valid UTF-8 —
  which maps back to the token id, whose exact bytes the caller reassembles into characters;
* ``generate`` blocks until the last token (it releases the GIL), so streaming runs it in a thread and hands the
  tokens over through a queue; a caller that wants the whole text at once runs it in its own thread instead, so
  that no Python work per token competes with the runner's decode threads for the cores.  ``warming=True`` keeps it from printing every piece to the process's stdout
  (it changes nothing else: callbacks and stats still run).

Only byte-level BPE tokenizers qualify (their pieces name the token uniquely); other bundles decode through the
Method API loop in ``runtimes/executorch.py``.
"""

from __future__ import annotations

import json
import queue
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..errors import EdgekitError

_DONE = object()


@dataclass(frozen=True)
class RunnerStats:
    """Wall-clock times seen by the callback (more precise than the runner's millisecond stats)."""

    prompt_tokens: int
    prefill_s: float  # call -> first token
    decode_s: float  # first token -> last token
    steps: int  # forward calls after prefill


class RunnerUnsuitable(EdgekitError):
    """This bundle's tokenizer cannot be streamed through the runner; the Method API loop is used instead."""


def _raw_tokenizer(tokenizer_json: Path) -> tuple[dict[str, Any], dict[str, int]]:
    """(tokenizer.json without its decoder, piece -> id) for a byte-level BPE tokenizer."""
    tok = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    decoder = tok.get("decoder") or {}
    model = tok.get("model") or {}
    if decoder.get("type") != "ByteLevel" or model.get("type") != "BPE":
        raise RunnerUnsuitable(f"{tokenizer_json}: not a byte-level BPE tokenizer")
    if tok.get("normalizer") is not None:  # the runner's C++ tokenizer is not known to apply it: `tokenizers` does
        raise RunnerUnsuitable(f"{tokenizer_json}: has a normalizer")
    ids = dict(model.get("vocab") or {})
    ids.update({t["content"]: int(t["id"]) for t in tok.get("added_tokens") or []})
    return {**tok, "decoder": None}, ids


class TextRunner:
    """One ``TextLLMRunner`` over a bundle's program; ``tokens`` streams greedy token ids for a text prompt."""

    def __init__(self, pte: Path, data: Path | None, tokenizer_json: Path) -> None:
        from executorch.extension.llm.runner import GenerationConfig, TextLLMRunner

        raw, self._ids = _raw_tokenizer(tokenizer_json)
        self._dir = tempfile.TemporaryDirectory(prefix="edgekit-et-runner-")
        path = Path(self._dir.name) / "tokenizer.json"
        path.write_text(json.dumps(raw), encoding="utf-8")
        config = tokenizer_json.with_name("tokenizer_config.json")  # where the runner's tokenizer reads BOS / EOS
        if config.is_file():
            shutil.copy(config, path.with_name(config.name))
        self._runner = TextLLMRunner(str(pte), str(path), str(data) if data else None)
        # the runner loads its program on first use: do it now, so a generation's prefill time is only prefill
        try:
            self._runner.prefill("a", GenerationConfig(num_bos=0, warming=True))
        except RuntimeError as exc:
            self._dir.cleanup()
            raise EdgekitError(f"{pte}: ExecuTorch's runner could not load the program: {exc}") from None
        self._runner.reset()
        self.stats: RunnerStats | None = None

    def tokens(self, text: str, num_bos: int, max_tokens: int, eos_ids: set[int], live: bool = True) -> Iterator[int]:
        """Greedy ids after ``num_bos`` BOS tokens + ``text`` (the runner does not apply tokenizer.json's
        post-processor); stops at EOS, which is not yielded; ``stats`` is set when it ends.  ``live``: yield each
        id as the runner makes it (runner in a thread), else only once the runner has finished."""
        from executorch.extension.llm.runner import GenerationConfig

        handoff: queue.SimpleQueue = queue.SimpleQueue()
        config = GenerationConfig(
            max_new_tokens=max_tokens, temperature=0.0, echo=False, warming=True, num_bos=num_bos
        )
        prompt_tokens = []
        start = time.perf_counter()

        def work() -> None:
            try:
                self._runner.generate(
                    text, config, lambda piece: handoff.put((time.perf_counter(), piece)),
                    lambda s: prompt_tokens.append(s.num_prompt_tokens),
                )
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                handoff.put((None, exc))
            finally:
                handoff.put((None, _DONE))

        self._runner.reset()
        worker = threading.Thread(target=work, name="edgekit-et-runner", daemon=True) if live else None
        if worker is None:
            work()
        else:
            worker.start()
        times: list[float] = []
        done = False
        try:
            while True:
                when, item = handoff.get()
                if item is _DONE:
                    done = True
                    break
                if isinstance(item, BaseException):
                    raise EdgekitError(f"ExecuTorch's runner failed: {item}") from None
                token = self._ids.get(item)
                if token is None:
                    raise EdgekitError(f"ExecuTorch's runner produced a piece {item!r} the tokenizer does not know")
                times.append(when)
                if token in eos_ids:
                    # ExecuTorch 1.5's TextLLMRunner checks EOS only on decode steps: a prompt whose prefill
                    # predicts EOS goes on generating (a new-user trial: the text path ran past an EOS the token-id
                    # path stopped at), so the wrapper stops here (the finally block stops the runner)
                    return
                yield token
        finally:
            if not done:  # the consumer stopped early: stop the runner and wait for it
                self._runner.stop()
                while handoff.get()[1] is not _DONE:
                    pass
            if worker is not None:
                worker.join()
            first, last = (times[0], times[-1]) if times else (start, start)
            self.stats = RunnerStats(
                prompt_tokens=prompt_tokens[0] if prompt_tokens else 0,
                prefill_s=first - start, decode_s=last - first, steps=max(len(times) - 1, 0),
            )

    def close(self) -> None:
        self._runner = None
        self._dir.cleanup()
