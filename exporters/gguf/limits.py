"""What llama.cpp requires of an LFM2's shape, checked when the export is planned (a file llama.cpp cannot load
would otherwise be written and then abort the engine during verification).

- An LFM2 with no short-conv layer (every layer full attention): llama-cpp-python 0.3.x aborts loading it with
  ``GGML_ASSERT(buffer) failed`` in ggml-backend.cpp (a buffer of size 0 — likely the recurrent state it keeps
  for the conv layers; not traced further).  Found by a new-user trial; the same checkpoint exports to ONNX and
  verifies.
Stdlib only: imported by ``make_plan`` through the recipe row's ``plan_check``.
"""

from __future__ import annotations

from typing import Any

from edgekit.errors import UnsupportedError


def check_lfm2(config: Any, quant: Any, options: Any) -> None:
    """Raise UnsupportedError naming the limit when llama.cpp cannot load this LFM2."""
    if "conv" not in list(config.layer_types):
        raise UnsupportedError(
            "gguf: llama.cpp aborts loading an LFM2 without a short-conv layer (every one of its "
            f"{len(list(config.layer_types))} layers is full attention; llama.cpp fails GGML_ASSERT(buffer) in "
            "ggml-backend); export with --format onnx"
        )
