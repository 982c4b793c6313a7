"""llama.cpp engine (through llama-cpp-python) for GGUF bundles.  No torch."""

from __future__ import annotations

import ctypes
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from ..errors import BundleError, EdgekitError, require
from .decoding import check_fits
from .protocol import (
    Generation, Prompt, SamplingParams, StreamResult, Timing, adapter_entry, generate_via_stream, utf8_text,
)

DEFAULT_CTX = 4096
GGML_TYPE_F32 = 0
# llama.cpp keeps the KV cache in F16 by default, which alone moves logits by ~5e-3 on the built-in model; an
# F32 bundle is asked for to be exact, so its cache is F32 too (measured: max |Δlogit| 5.6e-3 -> 4.8e-5).
KV_CACHE_TYPE = {"f32": GGML_TYPE_F32}


# Lines llama.cpp logs that are not problems: LFM2's conv layers have no V cache, so every load of an LFM2 GGUF
# says "padding V cache to 128" (at ERROR level) — noise on every `edgekit run`; the quantiser warns once per
# tensor of a mixed-precision assignment ("applying manual override"), which is the assignment edgekit asked
# for and records in the manifest; and once per matrix whose rows do not fit a k-quant's 256-weight super-blocks
# ("falling back to", "required fallback quantization"), which the export summarises in one line and records
# (``artifact.k_quant_fallbacks``).  Set EDGEKIT_LLAMA_LOG=1 for all.
_BENIGN = (b"padding V cache", b"applying manual override", b"falling back to", b"required fallback quantization")
_log_callback: Any = None


def install_log_filter(llama_cpp: Any) -> None:
    """Route llama.cpp's log through llama-cpp-python's own callback, minus the benign lines above."""
    global _log_callback
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # llama.cpp logs every tensor and layer otherwise
    if _log_callback is not None or os.environ.get("EDGEKIT_LLAMA_LOG"):
        return
    import ctypes

    from llama_cpp import _logger

    pending: list[tuple[int, bytes]] = []  # llama.cpp logs some lines in pieces: judge the whole line

    @llama_cpp.llama_log_callback
    def callback(level: int, text: bytes, user_data: Any) -> None:
        pending.append((level, text or b""))
        if not (text or b"").endswith(b"\n"):
            return
        line = b"".join(t for _l, t in pending)
        first = pending[0][0]
        pending.clear()
        if not any(b in line for b in _BENIGN):
            _logger.llama_log_callback(first, line, user_data)

    _log_callback = callback  # ctypes keeps no reference: the callback must outlive every model
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))


class LlamaCppSession:
    engine = "llama.cpp"

    def __init__(
        self, root: Path, manifest: Mapping[str, Any], n_threads: int | None = None, n_ctx: int | None = None,
        adapter: str | None = None,
    ) -> None:
        self._llama_cpp = require("llama_cpp", "gguf")
        install_log_filter(self._llama_cpp)
        self.root = Path(root)
        self.manifest = manifest
        self.model = manifest.get("model", {})
        self.path = self.root / manifest["artifact"]["file"]
        self.n_ctx = n_ctx or min(int(self.model.get("context_length") or DEFAULT_CTX), DEFAULT_CTX)
        self.n_threads = n_threads or os.cpu_count() or 1  # llama-cpp-python's default is half the cores
        self.kv_type = KV_CACHE_TYPE.get(manifest.get("plan", {}).get("quant", {}).get("name", ""))
        t0 = time.perf_counter()
        self._llm = self._open(logits_all=False)
        self.load_s = time.perf_counter() - t0
        self._scorer: Any = None
        self.eos_ids = set(self.model.get("eos_ids") or [self._llm.token_eos()])
        self.vocab_size = int(self._llm.n_vocab())
        # separate LoRA adapters (protocol.AdapterSession): loaded per model on first use, applied per context
        self.adapters = tuple(((manifest.get("adapters") or {}).get("items") or {}))
        self.active_adapter: str | None = None
        self._scale = 1.0
        self._lora: dict[int, dict[str, Any]] = {}  # id(Llama) -> adapter name -> llama_adapter_lora handle
        if adapter is not None:
            self.use_adapter(adapter)

    def _open(self, logits_all: bool, n_ctx: int | None = None) -> Any:
        try:
            return self._llama_cpp.Llama(
                model_path=str(self.path),
                n_ctx=n_ctx or self.n_ctx,
                n_batch=512,
                n_threads=self.n_threads,
                n_threads_batch=self.n_threads,
                logits_all=logits_all,
                type_k=self.kv_type,
                type_v=self.kv_type,
                verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            raise BundleError(f"{self.path}: llama.cpp could not load the model ({exc})") from None

    # -- adapters (protocol.AdapterSession) ---------------------------------------------------------------
    def use_adapter(self, name: str | None, scale: float = 1.0) -> float:
        """Apply adapter ``name`` (None: the base alone) at ``scale`` on every context, in place: the base model
        stays loaded, the adapter file is read once per model; the sequence state is cleared.  Returns seconds."""
        entry = adapter_entry(self.manifest, name, scale)
        t0 = time.perf_counter()
        for llm in (self._llm, self._scorer):
            if llm is not None:
                self._apply(llm, name, entry, float(scale))
        self.active_adapter, self._scale = name, float(scale)
        self.reset()
        return time.perf_counter() - t0

    def _apply(self, llm: Any, name: str | None, entry: Mapping[str, Any] | None, scale: float) -> None:
        lc = self._llama_cpp
        ctx = llm._ctx.ctx
        if name is None:
            rc = lc.llama_set_adapters_lora(ctx, None, 0, None)
        else:
            handles = self._lora.setdefault(id(llm), {})
            if name not in handles:
                path = self.root / entry["file"]  # type: ignore[index]
                handle = lc.llama_adapter_lora_init(llm._model.model, str(path).encode())
                if not handle:
                    raise BundleError(f"{path}: llama.cpp could not load adapter {name!r}; re-add it to the bundle")
                handles[name] = handle
            adapters = (lc.llama_adapter_lora_p_ctypes * 1)(handles[name])
            scales = (ctypes.c_float * 1)(scale)
            rc = lc.llama_set_adapters_lora(ctx, adapters, 1, scales)
        if rc != 0:
            raise BundleError(f"{self.path}: llama.cpp refused adapter {name!r} (code {rc})")

    def _free_adapters(self, llm: Any) -> None:
        for handle in self._lora.pop(id(llm), {}).values():
            self._llama_cpp.llama_adapter_lora_free(handle)

    # -- text ---------------------------------------------------------------------------------------------
    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        return self._llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=True)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self._llm.detokenize(list(tokens)).decode("utf-8", errors="replace")

    def _prompt_tokens(self, prompt: Prompt) -> list[int]:
        tokens = self.tokenize(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
        if not tokens:
            raise EdgekitError("empty prompt")
        return tokens

    # -- generation ---------------------------------------------------------------------------------------
    def _tokens(self, prompt: Prompt, params: SamplingParams, result: StreamResult) -> Iterator[int]:
        tokens = self._prompt_tokens(prompt)
        check_fits(len(tokens), params, self.n_ctx)
        llm = self._llm
        llm.reset()  # fresh state: a recurrent (conv) state cannot be rolled back to a shared prefix
        if params.seed is not None:
            llm.set_seed(params.seed)
        ctx = llm._ctx.ctx  # llama-cpp-python exposes no public handle for the perf counters
        self._llama_cpp.llama_perf_context_reset(ctx)
        start = time.perf_counter()
        ttft = 0.0
        gen = llm.generate(
            tokens,
            top_k=params.top_k if not params.greedy else 1,
            top_p=params.top_p,
            min_p=0.0,
            temp=params.temperature,
            repeat_penalty=1.0,
            reset=True,
        )
        try:
            for token in gen:
                if not result.tokens:
                    ttft = time.perf_counter() - start
                if params.stop_at_eos and token in self.eos_ids:
                    break
                result.tokens.append(token)
                yield token
                if len(result.tokens) >= params.max_tokens:
                    break
        finally:
            gen.close()
            perf = self._llama_cpp.llama_perf_context(ctx)
            # llama.cpp's prompt-eval counter is the engine's time, but it reads near zero on the first call after
            # an adapter switch (0.03 ms for 3 tokens against a 7.8 ms first token, measured): then the wall time to
            # the first token stands in for it
            prefill_s = perf.t_p_eval_ms / 1e3
            result.timing = Timing(
                prompt_tokens=len(tokens),
                prefill_s=prefill_s if prefill_s >= 0.5 * ttft else ttft,
                generated_tokens=int(perf.n_eval),
                decode_s=perf.t_eval_ms / 1e3,
                ttft_s=ttft,
            )

    def stream(
        self, prompt: Prompt, params: SamplingParams = SamplingParams(), result: StreamResult | None = None
    ) -> Iterator[str]:
        """Yield text as it is generated; bytes of a character split across tokens are held back until whole."""
        result = result if result is not None else StreamResult()
        tokens = self._tokens(prompt, params, result)
        yield from utf8_text(self._llm.detokenize([t]) for t in tokens)

    def generate(self, prompt: Prompt, params: SamplingParams = SamplingParams()) -> Generation:
        return generate_via_stream(self, prompt, params)

    # -- stepping: the profiler's optional extension (protocol.SteppableSession) ---------------------------
    def reset(self) -> None:
        self._llm.reset()
        mem = self._llama_cpp.llama_get_memory(self._llm._ctx.ctx)
        if mem is not None:  # Llama.reset clears memory only for recurrent/hybrid models; clear it always
            self._llama_cpp.llama_memory_clear(mem, True)

    def feed(self, tokens: Sequence[int]) -> float:
        tokens = [int(t) for t in tokens]
        if self._llm.n_tokens + len(tokens) > self.n_ctx:
            raise EdgekitError(
                f"{self._llm.n_tokens} cached + {len(tokens)} new tokens exceed the context of {self.n_ctx}"
            )
        ctx = self._llm._ctx.ctx
        before = self._llama_cpp.llama_perf_context(ctx)
        self._llm.eval(tokens)
        # llama.cpp books a decode's time into its perf counters only when the context synchronises
        self._llama_cpp.llama_synchronize(ctx)
        after = self._llama_cpp.llama_perf_context(ctx)
        return (after.t_p_eval_ms + after.t_eval_ms - before.t_p_eval_ms - before.t_eval_ms) / 1e3

    # -- scoring ------------------------------------------------------------------------------------------
    def logits(self, tokens: Sequence[int], decode_from: int | None = None) -> np.ndarray:
        """Teacher-forced logits [len(tokens), vocab] from a fresh scoring context (protocol.LanguageSession);
        from ``decode_from`` on one ``llama_decode`` per token, as generation decodes."""
        tokens = [int(t) for t in tokens]
        if len(tokens) > self.n_ctx:
            raise EdgekitError(f"{len(tokens)} tokens exceed the context of {self.n_ctx}")
        # A second context keeps every position's logits; it is sized to the request, since its logit buffer
        # is n_ctx x vocab floats (1 GB at 4K context for a 64K vocabulary).
        need = -(-len(tokens) // 512) * 512
        if self._scorer is None or self._scorer.n_ctx() < need:
            if self._scorer is not None:
                self._free_adapters(self._scorer)
                self._scorer.close()
            self._scorer = self._open(logits_all=True, n_ctx=need)
            if self.active_adapter is not None:
                self._apply(self._scorer, self.active_adapter, adapter_entry(self.manifest, self.active_adapter), self._scale)
        self._scorer.reset()
        split = len(tokens) if decode_from is None else max(1, min(int(decode_from), len(tokens)))
        self._scorer.eval(tokens[:split])
        for t in tokens[split:]:
            self._scorer.eval([t])
        return np.array(self._scorer.scores[: len(tokens)], dtype=np.float32)

    def close(self) -> None:
        for llm in (self._llm, self._scorer):
            if llm is not None:
                self._free_adapters(llm)
                llm.close()
        self._llm = self._scorer = None
