"""edgekit: export small models (LFM2, BitNet, TRM/HRM) to GGUF, ExecuTorch and ONNX, verified, and run them.

``edgekit.load(bundle)`` opens an exported bundle with its engine; it never imports torch.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def load(bundle: Any, **options: Any) -> Any:
    """Open a bundle directory and return its session (see ``edgekit.runtimes.protocol``)."""
    from .runtimes import load as _load

    return _load(bundle, **options)


__all__ = ["__version__", "load"]
