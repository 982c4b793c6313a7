"""ONNX Runtime engine for ONNX bundles (the graph written by ``edgekit.exporters.onnx``).  No torch.

The decoder state lives in buffers allocated once per session and bound to the graph with IOBinding, so a
decode step moves one token in and one row of logits out instead of round-tripping every cache through Python.
The manifest's ``artifact.state`` says, per state input, its present output, its shape (``"context"`` where the
context length goes) and how it is updated — so this module knows no model family:

- ``in_place``: one buffer bound as both the past input and the present output (a KV cache that
  GroupQueryAttention appends to in place);
- ``swap``: two buffers bound crosswise and swapped after each call (a rolling state such as a short convolution's inputs).

Tokenization, sampling and the prefill/decode loop are the ones shared by step-driven engines
(``runtimes.decoding``); tokenization reads the bundle's ``tokenizer.json`` through the ``tokenizers`` library.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from ..errors import BundleError, ContextLengthError, EdgekitError, EngineError, StateError, require
from .decoding import TextCodec, check_fits, decode
from .protocol import Generation, Prompt, SamplingParams, StreamResult, adapter_entry, generate_via_stream, utf8_text

DEFAULT_CTX = 4096
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64}


@dataclass
class OnnxState:
    """The decoder state of one sequence: KV buffers, conv buffers (current, next) and the tokens consumed."""

    in_place: dict[str, np.ndarray]  # in-place state input -> its buffer (a KV cache: [1, kv_heads, n_ctx, head_dim])
    swap: dict[str, list[np.ndarray]]  # swapped state input -> [current, spare] (a conv state: [1, hidden, L_cache - 1])
    position: int = 0
    _values: dict[int, Any] = field(default_factory=dict, repr=False)  # id(array) -> OrtValue over it
    _decode: dict[tuple[int, ...], Any] = field(default_factory=dict, repr=False)  # cached one-token bindings

    def reset(self) -> None:
        for buffers in self.swap.values():
            buffers[0].fill(0)  # the convolution reads its past inputs: a fresh sequence must see zeros
        self.position = 0  # KV rows past `position` are never read, so they need no clearing


class OnnxSession:
    engine = "onnxruntime"

    def __init__(
        self,
        root: Path,
        manifest: Mapping[str, Any],
        n_threads: int | None = None,
        n_ctx: int | None = None,
        providers: Sequence[str] | None = None,
        adapter: str | None = None,
    ) -> None:
        self._ort = require("onnxruntime", "onnx")
        self.root = Path(root)
        self.manifest = manifest
        self.model = manifest.get("model", {})
        art = manifest.get("artifact", {})
        self.path = self.root / art.get("file", "model.onnx")
        context = int(self.model.get("context_length") or DEFAULT_CTX)
        self.n_ctx = min(int(n_ctx), context) if n_ctx else min(context, DEFAULT_CTX)
        t0 = time.perf_counter()
        self._session = self._open(n_threads, providers, art.get("session_options", {}))
        self._inputs = {i.name: i for i in self._session.get_inputs()}
        self._check_signature(art)
        self._state_spec: Mapping[str, Any] = art.get("state", {})
        self._shapes = self._state_shapes()
        self._state_dtype = self._state_type()
        self.codec = TextCodec(self.root / "tokenizer.json")
        self._logits_dtype = _DTYPES.get(self._session.get_outputs()[0].type, np.float32)
        self.vocab_size = int(self.model.get("vocab_size") or self._session.get_outputs()[0].shape[-1])
        self.eos_ids = set(self.model.get("eos_ids") or [])
        self._mask = np.ones((1, self.n_ctx), dtype=np.int64)
        # logits_to_keep: 1 (last position) for generation, 0 (all positions) for scoring; the arrays are kept
        # because an OrtValue made from numpy shares, not owns, their memory
        self._keep_arrays = {False: np.array([1], dtype=np.int64), True: np.array([0], dtype=np.int64)}
        self._keep = {k: self._ort.OrtValue.ortvalue_from_numpy(v) for k, v in self._keep_arrays.items()}
        overridable = {i.name for i in self._session.get_overridable_initializers()}
        self._prunes_logits = art.get("logits_to_keep", {}).get("input") in overridable
        self._state = self.new_state()
        # separate LoRA adapters (protocol.AdapterSession): their tensors are bound as inputs over the graph's
        # zero-default branch initializers; a new generation invalidates cached decode bindings
        self.adapters = tuple((manifest.get("adapters") or {}).get("items") or {})
        self.active_adapter: str | None = None
        self._adapter_values: dict[str, Any] = {}
        self._adapter_params: dict[str, dict[str, Any]] = {}
        self._adapter_gen = 0
        if adapter is not None:
            self.use_adapter(adapter)
        self.load_s = time.perf_counter() - t0

    # -- adapters (protocol.AdapterSession) ---------------------------------------------------------------
    def use_adapter(self, name: str | None, scale: float = 1.0) -> float:
        """Bind adapter ``name``'s branch tensors (None: the graph's zero defaults, the base model) with
        ``scale``; the file is read once; the session's own sequence state is reset.  Returns seconds."""
        entry = adapter_entry(self.manifest, name, scale)
        t0 = time.perf_counter()
        values: dict[str, Any] = {}
        if name is not None:
            params = self._adapter_params.get(name)
            if params is None:
                path = self.root / entry["file"]  # type: ignore[index]
                try:
                    params = dict(self._ort.AdapterFormat.read_adapter(str(path)).get_parameters())
                except Exception as exc:  # onnxruntime raises its own exception types
                    raise BundleError(f"{path}: onnxruntime could not read adapter {name!r} ({exc})") from None
                self._adapter_params[name] = params
            scale_name = (self.manifest.get("adapters") or {}).get("scale_input", "lora_scale")
            self._scale_array = np.array([scale], dtype=np.float32)  # the OrtValue shares this memory
            values = {**params, scale_name: self._ort.OrtValue.ortvalue_from_numpy(self._scale_array)}
        self._adapter_values = values
        self._adapter_gen += 1
        self.active_adapter = name
        self._state.reset()
        return time.perf_counter() - t0

    def _bind_adapter(self, b: Any) -> None:
        for k, v in self._adapter_values.items():
            b.bind_ortvalue_input(k, v)

    # -- loading ------------------------------------------------------------------------------------------
    def _open(self, n_threads: int | None, providers: Sequence[str] | None, options: Mapping[str, Any]) -> Any:
        ort = self._ort
        so = ort.SessionOptions()
        so.log_severity_level = 3  # the optional logits_to_keep input draws a warning on every load
        level = options.get("graph_optimization_level", "ORT_ENABLE_ALL")
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        if n_threads:
            so.intra_op_num_threads = int(n_threads)
        so.inter_op_num_threads = 1
        try:
            return ort.InferenceSession(str(self.path), so, providers=list(providers or ["CPUExecutionProvider"]))
        except Exception as exc:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...)
            raise BundleError(f"{self.path}: onnxruntime could not load the model ({exc})") from None

    def _check_signature(self, art: Mapping[str, Any]) -> None:
        """The file must have exactly the inputs the manifest recorded at export, with the same types and sizes."""
        expected = art.get("signature", {}).get("inputs")
        if not expected:
            raise BundleError(f"{self.root}: the manifest records no ONNX signature; re-export the bundle")
        problems: list[str] = []
        missing = sorted(set(expected) - set(self._inputs))
        extra = sorted(set(self._inputs) - set(expected))
        if missing:
            problems.append(f"missing inputs {missing}")
        if extra:
            problems.append(f"unexpected inputs {extra}")
        for name in sorted(set(expected) & set(self._inputs)):
            dtype, dims = expected[name]
            got = self._inputs[name]
            if got.type != f"tensor({dtype})":
                problems.append(f"{name} is {got.type}, manifest says tensor({dtype})")
            elif [d if isinstance(d, int) else "?" for d in got.shape] != [d if isinstance(d, int) else "?" for d in dims]:
                problems.append(f"{name} has shape {got.shape}, manifest says {dims}")
        if problems:
            raise BundleError(
                f"{self.path}: the ONNX file does not match its manifest ({'; '.join(problems)}); "
                "the file was replaced or the bundle is damaged: re-export it"
            )
        state = art.get("state", {})
        for name, entry in state.items():
            info = self._inputs.get(name)
            dims = entry.get("shape", [])
            fixed = [(k, d) for k, d in enumerate(dims) if isinstance(d, int) and k > 0]
            if info is None or entry.get("update") not in ("in_place", "swap") or len(info.shape) != len(dims) or any(
                isinstance(info.shape[k], int) and info.shape[k] != d for k, d in fixed
            ):
                raise BundleError(
                    f"{self.path}: state {name} is {getattr(info, 'shape', 'absent')} in the file, the manifest "
                    f"says {entry}; the bundle is damaged: re-export it"
                )

    def _state_type(self) -> Any:
        types = {self._inputs[n].type for n in self._state_spec}
        if len(types) > 1 or not types <= set(_DTYPES):
            raise BundleError(f"{self.path}: unsupported state types {sorted(types)}")
        return _DTYPES[types.pop()] if types else np.float32

    # -- state --------------------------------------------------------------------------------------------
    def _state_shapes(self) -> dict[str, tuple[int, ...]]:
        return {
            name: tuple(self.n_ctx if d == "context" else int(d) for d in entry["shape"])
            for name, entry in self._state_spec.items()
        }

    def new_state(self) -> OnnxState:
        """Fresh buffers for one sequence of up to ``n_ctx`` tokens."""
        kv: dict[str, np.ndarray] = {}
        conv: dict[str, list[np.ndarray]] = {}
        for name, shape in self._shapes.items():
            if self._state_spec[name]["update"] == "in_place":
                kv[name] = np.zeros(shape, dtype=self._state_dtype)
            else:
                conv[name] = [np.zeros(shape, self._state_dtype), np.zeros(shape, self._state_dtype)]
        return OnnxState(in_place=kv, swap=conv)

    def _validate_state(self, state: OnnxState) -> None:
        want = self._shapes
        got = {**{k: [v] for k, v in state.in_place.items()}, **state.swap}
        if set(got) != set(want):
            raise StateError(f"state has tensors {sorted(got)}; this model needs {sorted(want)}")
        for name, arrays in got.items():
            for a in arrays:
                if not isinstance(a, np.ndarray) or a.shape != want[name] or a.dtype != self._state_dtype:
                    desc = f"{a.shape} {a.dtype}" if isinstance(a, np.ndarray) else type(a).__name__
                    raise StateError(
                        f"state tensor {name} is {desc}; this session needs {want[name]} "
                        f"{np.dtype(self._state_dtype).name} (make states with session.new_state())"
                    )
        if not 0 <= state.position <= self.n_ctx:
            raise StateError(f"state position {state.position} is outside the context 0..{self.n_ctx}")

    def _value(self, state: OnnxState, arr: np.ndarray) -> Any:
        v = state._values.get(id(arr))
        if v is None:  # an OrtValue over the numpy memory: no copy, outputs land in the array itself
            v = state._values[id(arr)] = self._ort.OrtValue.ortvalue_from_numpy(arr)
        return v

    def forward(self, tokens: Sequence[int], state: OnnxState, all_logits: bool = False) -> np.ndarray:
        """Run ``tokens`` through the model from ``state`` (updated in place); float32 logits [n or 1, vocab]."""
        self._validate_state(state)
        ids = np.asarray(tokens, dtype=np.int64).reshape(1, -1)
        n = ids.shape[1]
        if n == 0:
            raise EdgekitError("no tokens to run")
        if ids.min() < 0 or ids.max() >= self.vocab_size:
            raise EdgekitError(f"token ids must lie in 0..{self.vocab_size - 1}")
        total = state.position + n
        if total > self.n_ctx:
            raise ContextLengthError(
                f"{state.position} tokens in the state + {n} new exceed the context of {self.n_ctx}; "
                "shorten the prompt or open the bundle with a larger n_ctx"
            )
        if n == 1 and not all_logits:
            row = self._decode_step(int(ids[0, 0]), state, total)
        else:
            row = self._run(ids, state, total, all_logits)
        for buffers in state.swap.values():
            buffers.reverse()
        state.position = total
        return row

    def _bind_state(self, b: Any, state: OnnxState) -> None:
        spec = self._state_spec
        for name, arr in state.in_place.items():
            v = self._value(state, arr)
            b.bind_ortvalue_input(name, v)
            b.bind_ortvalue_output(spec[name]["present"], v)
        for name, (cur, spare) in state.swap.items():
            b.bind_ortvalue_input(name, self._value(state, cur))
            b.bind_ortvalue_output(spec[name]["present"], self._value(state, spare))

    def _run_bound(self, b: Any) -> None:
        try:
            self._session.run_with_iobinding(b)
        except Exception as exc:  # onnxruntime's own types (Fail, InvalidArgument, RuntimeException)
            first = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
            raise EngineError(f"{self.path}: onnxruntime failed to run the model ({first}); the bundle does not "
                              "fit this request or this onnxruntime — check the token ids, or re-export") from None

    def _run(self, ids: np.ndarray, state: OnnxState, total: int, all_logits: bool) -> np.ndarray:
        n = ids.shape[1]
        # a graph without logits_to_keep (e.g. onnxruntime-genai's builder) computes every position
        kept = n if (all_logits or not self._prunes_logits) else 1
        b = self._session.io_binding()
        b.bind_cpu_input("input_ids", ids)
        b.bind_cpu_input("attention_mask", self._mask[:, :total])
        if self._prunes_logits:  # bound as an OrtValue: bind_cpu_input does not find initializer-backed inputs
            b.bind_ortvalue_input("logits_to_keep", self._keep[all_logits])
        if kept == 1:  # one row, written straight into a numpy buffer
            logits = np.empty((1, 1, self.vocab_size), dtype=self._logits_dtype)
            b.bind_ortvalue_output("logits", self._ort.OrtValue.ortvalue_from_numpy(logits))
        else:  # scoring: ORT allocates, because the graph declares one position and checks buffers given to it
            b.bind_output("logits", "cpu")  # bound first: get_outputs() lists outputs in binding order
        self._bind_state(b, state)
        self._bind_adapter(b)
        self._run_bound(b)
        if kept != 1:
            logits = b.get_outputs()[0].numpy()
        return logits[0].astype(np.float32, copy=True)

    def _decode_step(self, token: int, state: OnnxState, total: int) -> np.ndarray:
        """One token: everything but the attention mask stays bound between steps (one binding per conv
        buffer parity), so the per-token Python work does not grow with the number of layers."""
        key = tuple(id(a) for a in state.in_place.values()) + tuple(id(c[0]) for c in state.swap.values())
        key += (-self._adapter_gen,)
        entry = state._decode.get(key)
        if entry is None:
            ids = np.zeros((1, 1), dtype=np.int64)
            logits = np.empty((1, 1, self.vocab_size), dtype=self._logits_dtype)
            b = self._session.io_binding()
            b.bind_ortvalue_input("input_ids", self._value(state, ids))
            if self._prunes_logits:
                b.bind_ortvalue_input("logits_to_keep", self._keep[False])
            b.bind_ortvalue_output("logits", self._value(state, logits))
            self._bind_state(b, state)
            self._bind_adapter(b)
            if len(state._decode) > 4:  # arrays were swapped out of the state: drop stale bindings
                state._decode.clear()
            entry = state._decode[key] = (b, ids, logits)
        b, ids, logits = entry
        ids[0, 0] = token
        b.bind_cpu_input("attention_mask", self._mask[:, :total])
        self._run_bound(b)
        return logits[0].astype(np.float32, copy=True)

    # -- stepping (protocol.SteppableSession: the profiler's llama-bench method, depth included) ----------
    def reset(self) -> None:
        self._state.reset()

    def feed(self, tokens: Sequence[int]) -> float:
        t0 = time.perf_counter()
        self.forward([int(t) for t in tokens], self._state)
        return time.perf_counter() - t0

    # -- text ---------------------------------------------------------------------------------------------
    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        return self.codec.encode(text, add_special)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self.codec.decode([int(t) for t in tokens])

    # -- generation ---------------------------------------------------------------------------------------
    def _tokens(self, prompt: Prompt, params: SamplingParams, result: StreamResult) -> Iterator[int]:
        tokens = self.codec.prompt(prompt)
        check_fits(len(tokens), params, self.n_ctx)
        state = self._state
        state.reset()
        yield from decode(
            lambda ids: self.forward(ids, state)[-1],
            lambda token: self.forward([token], state)[-1],
            tokens, params, result, self.eos_ids,
        )

    def stream(
        self, prompt: Prompt, params: SamplingParams = SamplingParams(), result: StreamResult | None = None
    ) -> Iterator[str]:
        """Yield text as it is generated; a character split across byte-level tokens is held back until whole."""
        result = result if result is not None else StreamResult()
        yield from utf8_text(self.codec.piece(t) for t in self._tokens(prompt, params, result))

    def generate(self, prompt: Prompt, params: SamplingParams = SamplingParams()) -> Generation:
        return generate_via_stream(self, prompt, params)

    # -- scoring ------------------------------------------------------------------------------------------
    def logits(self, tokens: Sequence[int], decode_from: int | None = None) -> np.ndarray:
        """Teacher-forced logits [len(tokens), vocab] from a fresh state (protocol.LanguageSession); from
        ``decode_from`` on one call per token on generation's decode path (``forward([token], state)``)."""
        tokens = [int(t) for t in tokens]
        if len(tokens) > self.n_ctx:
            raise ContextLengthError(f"{len(tokens)} tokens exceed the context of {self.n_ctx}")
        state = self._state
        state.reset()
        split = len(tokens) if decode_from is None else max(1, min(int(decode_from), len(tokens)))
        rows = [self.forward(tokens[:split], state, all_logits=True)]
        rows += [self.forward([t], state)[-1:] for t in tokens[split:]]
        return np.concatenate(rows, axis=0) if len(rows) > 1 else rows[0]

    def close(self) -> None:
        self._session = None
        self._state = None  # type: ignore[assignment]
