"""The runtime registry: engine name -> session factory.  Installed as ``edgekit.runtimes``.

Importing this package imports no engine; ``load`` imports only the engine a bundle needs, and no torch.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Mapping

from ..bundle import check_files, read_manifest
from ..errors import BundleError
from .protocol import Generation, LanguageSession, SamplingParams, SolverSession, StreamResult, Timing

# engine name -> (module, factory attribute, pip extra that installs the engine)
ENGINES: Mapping[str, tuple[str, str, str]] = {
    "llama.cpp": ("llamacpp", "LlamaCppSession", "gguf"),
    "onnxruntime": ("onnxruntime", "OnnxSession", "onnx"),
    "executorch": ("executorch", "ExecuTorchSession", "executorch"),
}


def load(bundle: str | Path, **options: Any) -> LanguageSession | SolverSession:
    """Open a bundle with the engine its manifest names.  ``options`` go to the engine (e.g. ``n_threads``)."""
    root = Path(bundle)
    manifest = read_manifest(root)
    check_files(root, manifest)
    engine = manifest.get("engine")
    if engine not in ENGINES:
        raise BundleError(f"{root}: engine {engine!r} is unknown to this edgekit; known: {', '.join(ENGINES)}")
    module, factory, _extra = ENGINES[engine]
    cls = getattr(importlib.import_module(f"{__name__}.{module}"), factory)
    return cls(root, manifest, **options)


__all__ = [
    "ENGINES",
    "Generation",
    "LanguageSession",
    "SamplingParams",
    "SolverSession",
    "StreamResult",
    "Timing",
    "load",
]
