"""A crash probe: open a bundle and run a few engine steps in a child process, so that an engine that aborts
(llama.cpp's ``GGML_ASSERT`` -> SIGABRT on a model it cannot run, a load that dies without a message) becomes a
one-line BundleError instead of killing the export and leaving its staging directory behind.  Installed as
``edgekit.runtimes.probe``; ``python -m edgekit.runtimes.probe BUNDLE`` is the child.

Only engines known to abort the process on a malformed model are probed (llama.cpp); onnxruntime raises
exceptions, and ExecuTorch's known crash (SIGBUS on a changed ``.ptd`` byte) is caught by the sha256 check that
``load`` does before the engine maps a file.  Cost: one extra load of the model and 8 generated tokens
(about 1 s for the built-in LFM2).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping

from ..errors import BundleError

PROBED_ENGINES = ("llama.cpp",)
TIMEOUT_S = 600
PROMPT = "Probe: 1 + 2 = 3, é ½"


def run_probe(root: str | Path, manifest: Mapping[str, Any], timeout_s: float = TIMEOUT_S) -> None:
    """Raise BundleError when the engine kills (or hangs) a child process that loads the bundle at ``root`` and
    runs it briefly; return quietly otherwise (an ordinary error is left to the in-process run to report)."""
    if manifest.get("engine") not in PROBED_ENGINES:
        return
    root = Path(root)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "edgekit.runtimes.probe", str(root)],
            capture_output=True, text=True, errors="replace", timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        raise BundleError(
            f"{root}: {manifest['engine']} did not finish loading and running the model in {timeout_s:.0f} s; the "
            "export is not usable (re-export, or check the config)"
        ) from None
    if proc.returncode < 0:
        try:
            name = signal.Signals(-proc.returncode).name
        except ValueError:
            name = f"signal {-proc.returncode}"
        lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
        said = next((line for line in reversed(lines) if "assert" in line.lower() or "error" in line.lower()),
                    lines[-1] if lines else "no message")
        raise BundleError(
            f"{root}: {manifest['engine']} crashed ({name}) loading or running this model: {said[:200]}; the export "
            "is not usable — check the config (layer types, token ids) or export another format"
        )


def _child(root: str) -> int:
    from . import load
    from .protocol import SamplingParams

    session = load(root, check=False)  # the parent has just written (or checked) the files
    try:
        if hasattr(session, "generate"):
            session.generate(PROMPT, SamplingParams(max_tokens=8))
            ids = session.tokenize(PROMPT * 4)
            session.logits(ids[:64])
    finally:
        session.close()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(_child(sys.argv[1]))
    except Exception as exc:  # an ordinary error: the parent's own run reports it properly
        print(f"probe: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(2)
