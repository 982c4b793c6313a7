"""The runner metadata methods of an ExecuTorch program read back from the ``.pte`` (the metadata check of
``edgekit.tensorcheck``).

ExecuTorch's LLM runners (and the mobile apps built on them) take the context length, vocabulary size and the
bos/eos ids from constant methods of the program (``get_max_seq_len``, ``get_eos_ids``, ...: the names are
ExecuTorch's, see ``lfm2.runner_metadata``); an edited value changes generation (where it stops, how long a prompt
may be) without touching a weight, so each is compared with what the exporter writes for the checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from edgekit.errors import BundleError

# every constant method the runners know starts with one of these; one the exporter does not write is refused
RUNNER_PREFIXES = ("get_", "use_", "enable_")


def read_methods(path: Path) -> dict[str, Any]:
    """Constant method name -> value (a scalar, or a list where the method returns several) of the program at
    ``path``; the ``forward`` method is not loaded, so no ``.ptd`` is needed.  Raises ``BundleError`` for a file
    ExecuTorch cannot load."""
    from executorch.runtime import Runtime

    try:
        program = Runtime.get().load_program(path)
        out: dict[str, Any] = {}
        for name in program.method_names:
            if name.startswith(RUNNER_PREFIXES):
                value = list(program.load_method(name).execute([]))
                out[name] = value[0] if len(value) == 1 else value
    except (RuntimeError, ValueError, OSError) as exc:
        raise BundleError(f"{path}: ExecuTorch could not load the program ({exc}); re-export the bundle") from None
    return out


def check_methods(path: Path, expected: Mapping[str, Any], what: str) -> list[str]:
    """The program's runner methods against ``expected`` (name -> value; a list value matches the method's whole
    output); one failure line per method missing, extra (a runner method the exporter does not write) or
    different, naming both values.  ``what`` names where the expected values come from."""
    got = read_methods(path)
    fails: list[str] = []
    for name in sorted(set(got) | set(expected)):
        want = expected.get(name)
        if name not in got:
            fails.append(f"tensor check: {path.name} has no method {name} (expected {want!r} from {what})")
        elif name not in expected:
            fails.append(f"tensor check: {path.name} has a method {name} = {got[name]!r} that the exporter does not "
                         f"write ({what})")
        else:
            value = got[name]
            if isinstance(want, list) and not isinstance(value, list):
                value = [value]
            if value != want:
                fails.append(f"tensor check: {path.name} method {name} returns {value!r}, expected {want!r} from "
                             f"{what}")
    return fails


# ExecuTorch's ScalarType code of float32 (executorch/runtime/core/portable_type/scalar_type.h)
_FLOAT32 = 6


def check_rope(path: Path, theta: float, head_dim: int, positions: int) -> list[str]:
    """The RoPE tables of the program at ``path`` against tables computed from ``theta`` / ``head_dim`` for
    ``positions`` (``onnx.readback.compare_rope``: every row, full-width rotate-half layout).  The exporters keep
    them as two float32 [positions, head_dim] constants of ``forward`` outside the XNNPACK delegate (each call
    slices them at its position), which this reads from the program's constant buffers (the schema of
    ``executorch.exir.schema``).  A new-user trial rewrote the rows from 600 on and passed: the verification
    windows end at 512 tokens.  One failure line per table that is wrong, or when the two tables are not found."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    from ..onnx.readback import compare_rope, rope_expected

    try:
        program = deserialize_pte_binary(path.read_bytes()).program
    except Exception as exc:  # the flatbuffer parser raises several types on a damaged file
        raise BundleError(f"{path}: not a readable ExecuTorch program ({exc}); re-export the bundle") from None
    forward = next((p for p in program.execution_plan if p.name == "forward"), None)
    tables = []
    for v in forward.values if forward is not None else ():
        t = v.val
        if (list(getattr(t, "sizes", []) or []) == [positions, head_dim] and getattr(t, "scalar_type", None) == _FLOAT32
                and getattr(t, "data_buffer_idx", 0) > 0 and t.data_buffer_idx < len(program.constant_buffer)):
            data = bytes(program.constant_buffer[t.data_buffer_idx].storage)
            if len(data) == positions * head_dim * 4:
                tables.append(np.frombuffer(data, dtype="<f4").reshape(positions, head_dim))
    what = f"rope_theta {theta:g}, head_dim {head_dim}, {positions} positions"
    if len(tables) != 2:
        return [f"tensor check: {path.name} holds {len(tables)} float32 [{positions}, {head_dim}] constants, expected "
                f"the two RoPE tables of {what}"]
    cos, sin = rope_expected(theta, head_dim, positions)
    # the order of the constants is the lowering's: take the assignment with fewer failures
    orders = [[compare_rope(n, t, "F32", ref, what) for n, t, ref in zip(("cos", "sin"), pair, (cos, sin))]
              for pair in (tables, tables[::-1])]
    return [f for f in min(orders, key=lambda fs: sum(f is not None for f in fs)) if f is not None]
