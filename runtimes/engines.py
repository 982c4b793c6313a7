"""The engine table: one row per engine, keyed by ``Engine``.  Installed as ``edgekit.runtimes.engines``.

It serves ``edgekit.load`` (which session class opens a bundle of a given model kind), the profiler's device
check (which modules the engine needs, which pip extra installs them) and the weight-bytes estimate (bytes per
cached K/V value).  Nothing here imports an engine or torch.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Mapping

from ..errors import BundleError
from ..plan import Format


class Engine(str, enum.Enum):
    """A runtime that executes one export format (the manifest's ``engine``)."""

    LLAMA_CPP = "llama.cpp"
    ONNXRUNTIME = "onnxruntime"
    EXECUTORCH = "executorch"

    @classmethod
    def parse(cls, name: object, where: str = "bundle") -> "Engine":
        try:
            return cls(str(name))
        except ValueError:
            known = ", ".join(e.value for e in cls)
            raise BundleError(f"{where}: engine {name!r} is unknown to this edgekit; known: {known}") from None


@dataclass(frozen=True)
class EngineSpec:
    engine: Engine
    sessions: Mapping[str, str]  # model kind value -> "module:Class" (module relative to edgekit.runtimes)
    modules: tuple[str, ...]  # what must be importable on the device to run it
    extra: str  # the pip extra that installs it: pip install 'edgekit[EXTRA]'
    kv_bytes: int  # bytes per cached K/V value in its default cache type


ENGINES: Mapping[Engine, EngineSpec] = {
    Engine.LLAMA_CPP: EngineSpec(
        Engine.LLAMA_CPP, {"language": "llamacpp:LlamaCppSession"}, ("numpy", "llama_cpp"), "gguf", 2  # F16 cache
    ),
    Engine.ONNXRUNTIME: EngineSpec(
        Engine.ONNXRUNTIME,
        {"language": "onnxruntime:OnnxSession", "solver": "solver:OnnxSolverSession"},
        ("numpy", "onnxruntime", "tokenizers"),
        "onnx",
        4,
    ),
    Engine.EXECUTORCH: EngineSpec(
        Engine.EXECUTORCH,
        {"language": "executorch:ExecuTorchSession", "solver": "solver:ExecuTorchSolverSession"},
        ("numpy", "executorch", "torch", "tokenizers"),
        "executorch",
        4,
    ),
}

# the engine that runs each export format
ENGINE_OF: Mapping[Format, Engine] = {
    Format.GGUF: Engine.LLAMA_CPP,
    Format.ONNX: Engine.ONNXRUNTIME,
    Format.EXECUTORCH: Engine.EXECUTORCH,
}
