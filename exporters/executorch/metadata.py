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
