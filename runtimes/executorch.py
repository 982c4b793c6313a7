"""ExecuTorch engine for ``.pte`` bundles, through ``executorch.runtime`` (Program -> Method).

ExecuTorch's Python runtime links libtorch, so torch is imported here (DESIGN §5: the one engine that needs it).
The decode loop runs here rather than in ``TextLLMRunner``: that runner takes text only (verification needs
token prompts) and its per-token text callback raises on a byte-level token that splits a UTF-8 character.
A step is one ``Method.execute`` plus an argmax over the logits; bench/executorch_speed.py measures this loop
against the bare C++ runner on the same .pte.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from ..errors import BundleError, ContextLengthError, require
from .decoding import TextCodec, check_fits, decode
from .protocol import Generation, Prompt, SamplingParams, StreamResult, generate_via_stream, utf8_text

_METADATA = ("get_max_seq_len", "get_max_context_len", "get_vocab_size")


def _kernels() -> Any:
    """Import the runtime and register the kernels edgekit's programs call outside XNNPACK (custom SDPA / KV
    cache update, quantized embedding); without them loading fails with 'Missing operator'."""
    torch = require("torch", "executorch")
    require("executorch.extension.llm.custom_ops.custom_ops", "executorch")
    require("executorch.kernels.quantized", "executorch")
    return torch, require("executorch.runtime", "executorch")


def _constant(program: Any, name: str) -> Any:
    method = program.load_method(name)
    value = method.execute([])
    return value[0] if isinstance(value, (list, tuple)) else value


class ExecuTorchSession:
    engine = "executorch"

    def __init__(
        self, root: Path, manifest: Mapping[str, Any], n_threads: int | None = None, n_ctx: int | None = None
    ) -> None:
        self._torch, runtime = _kernels()
        self.root = Path(root)
        self.manifest = manifest
        self.model = manifest.get("model", {})
        art = manifest.get("artifact", {})
        self.path = self.root / art.get("artifact", "model.pte")
        data = [self.root / f for f in art.get("data_files", [])]
        if len(data) > 1:
            raise BundleError(f"{self.root}: more than one .ptd file ({', '.join(map(str, data))}); expected at most one")
        if n_threads:
            from executorch.extension.pybindings import portable_lib

            portable_lib._unsafe_reset_threadpool(int(n_threads))
        t0 = time.perf_counter()
        self._program, self._forward = self._open(runtime, data[0] if data else None)
        self.load_s = time.perf_counter() - t0
        self._check_metadata()
        self.n_ctx = min(self._max_context, int(n_ctx)) if n_ctx else self._max_context
        self.eos_ids = set(self.model.get("eos_ids") or [])
        self._codec = TextCodec(self.root / "tokenizer.json")
        self._pos = 0

    def _open(self, runtime: Any, data: Path | None) -> tuple[Any, Any]:
        what = f"{self.path}" + (f" with {data.name}" if data else "")
        try:
            program = runtime.Runtime.get().load_program(self.path, data_path=data)
            if "forward" not in program.method_names:
                raise BundleError(f"{self.path}: the program has no 'forward' method; it is not an LLM export")
            method = program.load_method("forward")
        except BundleError:
            raise
        except (RuntimeError, ValueError, OSError) as exc:
            raise BundleError(f"{what}: ExecuTorch could not load the program ({exc}); re-export the bundle") from None
        return program, method

    def _check_metadata(self) -> None:
        """The program must be the one the manifest describes (a .pte swapped in from another model fails here)."""
        names = self._program.method_names
        missing = [n for n in _METADATA if n not in names]
        if missing:
            raise BundleError(f"{self.path}: no {', '.join(missing)} method; not an ExecuTorch LLM program")
        vocab = int(_constant(self._program, "get_vocab_size"))
        self._max_context = int(_constant(self._program, "get_max_context_len"))
        self._max_seq = int(_constant(self._program, "get_max_seq_len"))
        want = self.model.get("vocab_size")
        art = self.manifest.get("artifact", {})
        if want is not None and vocab != int(want):
            raise BundleError(f"{self.path}: program vocabulary {vocab} != the manifest's {want}; the .pte is from another model")
        if art.get("max_context") is not None and self._max_context != int(art["max_context"]):
            raise BundleError(
                f"{self.path}: program context {self._max_context} != the manifest's {art['max_context']}; "
                "the .pte is from another export"
            )

    # -- text ---------------------------------------------------------------------------------------------
    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        return self._codec.encode(text, add_special)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self._codec.decode(tokens)

    # -- stepping (also protocol.SteppableSession, used by the profiler) -----------------------------------
    def reset(self) -> None:
        # position 0 zeroes the conv state inside the program; KV entries past the position are masked
        self._pos = 0

    def _run(self, tokens: Sequence[int]) -> Any:
        torch = self._torch
        n = len(tokens)
        if self._pos + n > self.n_ctx:
            raise ContextLengthError(f"{self._pos} cached + {n} new tokens exceed the context of {self.n_ctx}")
        out = None
        for start in range(0, n, self._max_seq):  # prompts longer than one call's bound go in chunks
            chunk = torch.tensor([list(tokens[start : start + self._max_seq])], dtype=torch.long)
            out = self._forward.execute([chunk, torch.tensor([self._pos], dtype=torch.long)])[0]
            self._pos += chunk.shape[1]
        return out

    def feed(self, tokens: Sequence[int]) -> float:
        t0 = time.perf_counter()
        self._run([int(t) for t in tokens])
        return time.perf_counter() - t0

    # -- generation ---------------------------------------------------------------------------------------
    def _tokens(self, prompt: Prompt, params: SamplingParams, result: StreamResult) -> Iterator[int]:
        tokens = self._codec.prompt(prompt)
        check_fits(len(tokens), params, self.n_ctx)
        execute = self._forward.execute
        # one token and one position tensor reused for every step: the loop allocates nothing per token
        tok, pos = self._torch.zeros((1, 1), dtype=self._torch.long), self._torch.zeros((1,), dtype=self._torch.long)

        def prefill(ids: Sequence[int]) -> Any:
            self.reset()
            return self._run(ids)

        def step(token: int) -> Any:
            tok[0, 0], pos[0] = token, self._pos
            self._pos += 1
            return execute([tok, pos])[0]

        return decode(prefill, step, tokens, params, result, self.eos_ids)

    def stream(
        self, prompt: Prompt, params: SamplingParams = SamplingParams(), result: StreamResult | None = None
    ) -> Iterator[str]:
        """Yield text as it is generated; bytes of a character split across tokens are held back until whole."""
        result = result if result is not None else StreamResult()
        yield from utf8_text(self._codec.piece(t) for t in self._tokens(prompt, params, result))

    def generate(self, prompt: Prompt, params: SamplingParams = SamplingParams()) -> Generation:
        return generate_via_stream(self, prompt, params)

    # -- scoring ------------------------------------------------------------------------------------------
    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        """Teacher-forced logits from a fresh state.  The program returns the last position's logits only (what
        a runner needs), so each position is one decode step: this checks the same path generation uses."""
        tokens = [int(t) for t in tokens]
        if len(tokens) > self.n_ctx:
            raise ContextLengthError(f"{len(tokens)} tokens exceed the context of {self.n_ctx}")
        self.reset()
        out = np.empty((len(tokens), int(self.model.get("vocab_size") or 0) or 1), dtype=np.float32)
        for i, t in enumerate(tokens):
            row = self._run([t]).numpy().reshape(-1)
            if out.shape[1] != row.shape[0]:
                out = np.empty((len(tokens), row.shape[0]), dtype=np.float32)
            out[i] = row
        return out

    def close(self) -> None:
        self._forward = self._program = None
