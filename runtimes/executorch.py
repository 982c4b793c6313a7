"""ExecuTorch engine for ``.pte`` bundles, through ``executorch.runtime`` (Program -> Method).

ExecuTorch's Python runtime links libtorch, so torch is imported here (DESIGN §5: the one engine that needs it).
Greedy generation from a text prompt runs in ExecuTorch's own C++ ``TextLLMRunner`` (``executorch_runner.py``):
no Python per token beyond a callback.  Everything else — token-id prompts, sampling, ``feed`` / ``reset`` for the
profiler, teacher-forced ``logits`` for verification — runs the Method API: one ``Method.execute`` per token plus
an argmax or a sample.  bench/executorch_bench.py measures both against the bare runner on the same .pte.
Only one of the two holds the program's weights at a time (each packs its own XNNPACK copy).
"""

from __future__ import annotations

import time
import warnings
from functools import partial
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from ..errors import BundleError, ContextLengthError, require
from .decoding import TextCodec, check_fits, decode
from .protocol import (
    Generation, Prompt, SamplingParams, StreamResult, Timing, adapter_entry, generate_via_stream, utf8_text,
)

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
        self, root: Path, manifest: Mapping[str, Any], n_threads: int | None = None, n_ctx: int | None = None,
        use_runner: bool = True, adapter: str | None = None,
    ) -> None:
        self._torch, runtime = _kernels()
        self.root = Path(root)
        self.manifest = manifest
        self.model = manifest.get("model", {})
        art = manifest.get("artifact", {})
        self.path = self.root / art.get("file", "model.pte")
        data = [self.root / f for f in art.get("data_files", [])]
        if len(data) > 1:
            raise BundleError(f"{self.root}: more than one .ptd file ({', '.join(map(str, data))}); expected at most one")
        # separate LoRA adapters (protocol.AdapterSession): the factors and the scale are inputs of forward,
        # passed on every call (exporters/executorch/adapters.py); ExecuTorch's runner passes tokens only
        self.adapters = tuple((manifest.get("adapters") or {}).get("items") or {})
        self.active_adapter: str | None = None
        self._lora_slots: tuple[Any, ...] = ()
        self._lora_args: list[Any] = []  # (scale, factors...) of the active adapter, appended to every call
        self._held: dict[str | None, list[Any]] = {}  # adapter -> its factor tensors, read once
        if self.adapters:
            from ..exporters.executorch.adapters import check_layout

            self._lora_slots = check_layout(self.root, art)
            use_runner = False
        elif adapter is not None:
            adapter_entry(manifest, adapter)  # raises: the bundle has no adapters
        self._runtime, self._data = runtime, (data[0] if data else None)
        self._use_runner = use_runner
        self._runner: Any = None
        if n_threads:
            from executorch.extension.pybindings import portable_lib

            portable_lib._unsafe_reset_threadpool(int(n_threads))
        t0 = time.perf_counter()
        self._program, self._forward = self._open(runtime, self._data)
        self.load_s = time.perf_counter() - t0
        self.n_ctx = min(self._max_context, int(n_ctx)) if n_ctx else self._max_context
        self.eos_ids = set(self.model.get("eos_ids") or [])
        self._codec = TextCodec(self.root / "tokenizer.json")
        self._pos = 0
        if self.adapters:
            self.use_adapter(adapter)

    def _open(self, runtime: Any, data: Path | None) -> tuple[Any, Any]:
        what = f"{self.path}" + (f" with {data.name}" if data else "")
        try:
            program = runtime.Runtime.get().load_program(self.path, data_path=data)
            if "forward" not in program.method_names:
                raise BundleError(f"{self.path}: the program has no 'forward' method; it is not an LLM export")
            self._program = program
            self._check_metadata()  # before forward loads: a foreign .pte is named as such, not as a data mismatch
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
        vocab = self.vocab_size = int(_constant(self._program, "get_vocab_size"))
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

    def _method(self) -> Any:
        """The forward Method (loaded again if the runner took over; the runner goes: one XNNPACK copy of the
        weights at a time)."""
        if self._forward is None:
            self.close_runner()
            self._program, self._forward = self._open(self._runtime, self._data)
        return self._forward

    def _text_runner(self) -> Any:
        """ExecuTorch's C++ runner over the same files, or None where it does not fit this bundle."""
        if self._runner is None and self._use_runner:
            from .executorch_runner import RunnerUnsuitable, TextRunner

            try:
                self._runner = TextRunner(self.path, self._data, self.root / "tokenizer.json")
            except RunnerUnsuitable:
                self._use_runner = False
                return None
            self._forward = None  # one XNNPACK copy of the weights at a time
        return self._runner

    # -- adapters (protocol.AdapterSession) ---------------------------------------------------------------
    def use_adapter(self, name: str | None, scale: float = 1.0) -> float:
        """Make adapter ``name`` (None: the base alone) at ``scale`` the LoRA inputs of every later call: no
        program reload (an adapter's file is read the first time it is used and held).  Resets the sequence.
        Returns seconds."""
        torch = self._torch
        entry = adapter_entry(self.manifest, name, scale)
        t0 = time.perf_counter()
        if not self.adapters:  # a merged (or adapter-free) program has no LoRA inputs: None is the only state
            self.reset()
            return time.perf_counter() - t0
        held = self._held.get(name)
        if held is None:
            if entry is None:
                held = [torch.zeros(s.shape, dtype=torch.float32) for s in self._lora_slots]
            else:
                from ..exporters.executorch.adapters import read_file

                held = [torch.from_numpy(a) for a in read_file(self.root / entry["file"], self._lora_slots)]
            self._held[name] = held
        self._lora_args = [torch.tensor([float(scale) if name is not None else 0.0], dtype=torch.float32), *held]
        self.active_adapter = name
        self.reset()
        return time.perf_counter() - t0

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
            out = self._method().execute([chunk, torch.tensor([self._pos], dtype=torch.long), *self._lora_args])[0]
            self._pos += chunk.shape[1]
        return out

    def feed(self, tokens: Sequence[int]) -> float:
        self._method()  # a reload after the runner is not engine time
        t0 = time.perf_counter()
        self._run([int(t) for t in tokens])
        return time.perf_counter() - t0

    # -- generation ---------------------------------------------------------------------------------------
    def _tokens(self, prompt: Prompt, params: SamplingParams, result: StreamResult, live: bool) -> Iterator[int]:
        tokens = self._codec.prompt(prompt)
        check_fits(len(tokens), params, self.n_ctx)
        if isinstance(prompt, str) and params.greedy and params.stop_at_eos:
            num_bos = self._leading_specials(prompt, tokens)
            if num_bos is not None and self._text_runner() is not None:
                return self._runner_tokens(prompt, tokens, num_bos, params, result, live)
        execute = self._method().execute
        # one token and one position tensor reused for every step: the loop allocates nothing per token
        tok, pos = self._torch.zeros((1, 1), dtype=self._torch.long), self._torch.zeros((1,), dtype=self._torch.long)

        def prefill(ids: Sequence[int]) -> Any:
            self.reset()
            return self._run(ids)

        lora = self._lora_args

        def step(token: int) -> Any:
            tok[0, 0], pos[0] = token, self._pos
            self._pos += 1
            return execute([tok, pos, *lora])[0]

        return decode(prefill, step, tokens, params, result, self.eos_ids)

    def _leading_specials(self, prompt: str, tokens: Sequence[int]) -> int | None:
        """How many BOS tokens the tokenizer's post-processor puts before ``prompt`` (0 or 1), or None when it
        adds anything else (the runner could not reproduce the prompt)."""
        plain = self.tokenize(prompt, add_special=False)
        bos = self.model.get("bos_id")
        if list(tokens) == plain:
            return 0
        if bos is not None and list(tokens) == [int(bos), *plain]:
            return 1
        return None

    def _runner_tokens(
        self, prompt: str, tokens: Sequence[int], num_bos: int, params: SamplingParams, result: StreamResult,
        live: bool,
    ) -> Iterator[int]:
        runner = self._runner
        try:
            for token in runner.tokens(prompt, num_bos, params.max_tokens, self.eos_ids, live):
                result.tokens.append(token)
                yield token
        finally:
            st = runner.stats
            result.timing = Timing(
                prompt_tokens=len(tokens), prefill_s=st.prefill_s, generated_tokens=st.steps, decode_s=st.decode_s,
                ttft_s=st.prefill_s,
            )
            if st.prompt_tokens and st.prompt_tokens != len(tokens):
                warnings.warn(
                    f"{self.root}: ExecuTorch's runner tokenised the prompt into {st.prompt_tokens} tokens, edgekit "
                    f"into {len(tokens)}; later generations use the Method API loop", RuntimeWarning, stacklevel=2,
                )
                self._use_runner = False
                self.close_runner()

    def close_runner(self) -> None:
        if self._runner is not None:
            self._runner.close()
            self._runner = None

    def stream(
        self, prompt: Prompt, params: SamplingParams = SamplingParams(), result: StreamResult | None = None,
        live: bool = True,
    ) -> Iterator[str]:
        """Yield text as it is generated; bytes of a character split across tokens are held back until whole.
        ``live=False`` (what ``generate`` uses) lets the runner finish before the first piece is handled, so no
        Python work competes with its decode threads."""
        result = result if result is not None else StreamResult()
        yield from utf8_text(self._codec.piece(t) for t in self._tokens(prompt, params, result, live))

    def generate(self, prompt: Prompt, params: SamplingParams = SamplingParams()) -> Generation:
        return generate_via_stream(self, prompt, params, partial(self.stream, live=False))

    # -- scoring ------------------------------------------------------------------------------------------
    def logits(self, tokens: Sequence[int], decode_from: int | None = None) -> np.ndarray:
        """Teacher-forced logits from a fresh state.  The program returns the last position's logits only (what
        a runner needs), so each position is one decode step: this checks the same path generation uses, whatever
        ``decode_from`` says."""
        tokens = [int(t) for t in tokens]
        if len(tokens) > self.n_ctx:
            raise ContextLengthError(f"{len(tokens)} tokens exceed the context of {self.n_ctx}")
        self.reset()
        out = np.empty((len(tokens), self.vocab_size), dtype=np.float32)
        for i, t in enumerate(tokens):
            row = self._run([t]).numpy().reshape(-1)
            if out.shape[1] != row.shape[0]:
                out = np.empty((len(tokens), row.shape[0]), dtype=np.float32)
            out[i] = row
        return out

    def close(self) -> None:
        self.close_runner()
        self._forward = self._program = None
