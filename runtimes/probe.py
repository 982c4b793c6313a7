"""Engine crashes as one-line errors: an engine that kills its process (llama.cpp's ``GGML_ASSERT`` -> SIGABRT on
a model it cannot run; ExecuTorch's SIGBUS / SIGSEGV on a program or ``.ptd`` whose bytes are damaged although
their sha256 was recorded from the damaged files) becomes a ``BundleError`` instead of a silent death.
Installed as ``edgekit.runtimes.probe``; ``python -m edgekit.runtimes.probe BUNDLE`` is the probe's child.

Two guards, both in a child process:

- ``probe(bundle)`` / ``run_probe(root, manifest)``: load the bundle and run a few engine steps (8 generated
  tokens and a 64-token logits call; one batch of one puzzle for a solver) in a fresh interpreter. Export
  verification runs it before its own in-process load. Cost: one more load of the model plus the interpreter's
  start (torch's import for ExecuTorch) — see the README's bad-input section for the measured seconds.
- ``run_supervised(fn, root, engine)``: run a CLI command (``edgekit run`` / ``chat`` / ``solve``) in a forked
  child that inherits the terminal; when the child dies of a signal the parent prints one line. The fork costs
  milliseconds (no second load), so the CLI guards every run this way; ``edgekit.load`` stays in-process.

Only engines known to abort the process are guarded (llama.cpp, ExecuTorch); onnxruntime raises exceptions.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

from ..errors import BundleError

PROBED_ENGINES = ("llama.cpp", "executorch")
TIMEOUT_S = 600
PROMPT = "Probe: 1 + 2 = 3, é ½"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def crash_error(root: Path, engine: str, signum: int, said: str = "", checked: bool = True) -> BundleError:
    """The one line for an engine that killed its process with signal ``signum``.

    SIGILL is the engine's build, not the bundle: a llama.cpp compiled with -march=native on a CPU that reports AMX
    dies this way where the kernel does not grant AMX tiles (scripts/install builds without AMX for that reason)."""
    if signum == signal.SIGILL:
        why = (
            "the engine was built for instructions this machine refuses (llama.cpp's AMX kernels, when built with "
            "-march=native on a CPU that reports AMX): rebuild it with `scripts/install` (or reinstall "
            "llama-cpp-python with CFLAGS/CXXFLAGS='-march=native -mno-amx-tile -mno-amx-int8 -mno-amx-bf16' "
            "CMAKE_ARGS=-DGGML_NATIVE=OFF and --no-cache-dir); the bundle itself is not at fault"
        )
    else:
        why = (
            "its files match the manifest's sha256, so the export itself is broken — re-export it (or export another "
            "format)" if checked else "run again without --no-check to check its files' sha256, or re-export it"
        )
    return BundleError(
        f"{root}: {engine} crashed ({_signal_name(signum)}) loading or running this bundle"
        + (f": {said[:200]}" if said else "") + f"; {why}"
    )


def probe(bundle: str | Path, timeout_s: float = TIMEOUT_S) -> None:
    """Check that the bundle's engine can load and run it without killing its process: the files' sizes and
    sha256 first (as ``edgekit.load`` does), then ``run_probe``. For library users who want a crash to be an
    exception before they ``load`` in their own process.

    Raises BundleError (one line) for a damaged bundle, an engine crash (SIGABRT/SIGBUS/SIGSEGV...) or a hang
    longer than ``timeout_s`` seconds; returns quietly otherwise, also for engines that never abort."""
    from ..bundle import check_files, read_manifest

    root = Path(bundle)
    manifest = read_manifest(root)
    check_files(root, manifest, hashes=True)
    run_probe(root, manifest, timeout_s)


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
        # the engine's own last words, not the libraries' import warnings (glog "W1130 ..." lines, "...Warning")
        lines = [line.strip() for line in proc.stderr.splitlines()
                 if line.strip() and not re.match(r"[WI]\d{4} ", line.strip()) and "warning" not in line.lower()]
        said = next((line for line in reversed(lines) if "assert" in line.lower() or "error" in line.lower()),
                    lines[-1] if lines else "")
        raise crash_error(root, str(manifest["engine"]), -proc.returncode, said)


# modules whose thread pools and locks a forked child inherits locked (torch's intra-op pool deadlocked a child of
# a process that had run torch); numpy's OpenBLAS threads are fork-safe (pthread_atfork) and do not count
UNFORKABLE_MODULES = ("torch", "llama_cpp", "onnxruntime", "executorch")


def _fork_safe() -> bool:
    """Forking is safe before any engine or torch has started threads: one Python thread and none of
    ``UNFORKABLE_MODULES`` imported (``edgekit run`` as a command forks in that state; a test or an app that
    calls ``cli.main`` after using torch runs in-process)."""
    import threading

    return threading.active_count() == 1 and not any(m in sys.modules for m in UNFORKABLE_MODULES)


def guarded(manifest: Mapping[str, Any]) -> bool:
    """Whether the CLI runs this bundle's engine in a forked child: an engine that can abort, on a system with
    ``fork``, in a process where no engine or torch has started threads yet (``_fork_safe``), with stdout/stderr that are real files (a caller that captures them in memory runs
    in-process)."""
    if manifest.get("engine") not in PROBED_ENGINES or not hasattr(os, "fork") or not _fork_safe():
        return False
    try:
        sys.stdout.fileno(), sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    return True


def run_supervised(fn: Callable[[], int], root: str | Path, engine: str, checked: bool = True) -> int:
    """Run ``fn`` (a CLI command that returns its exit code and reports its own errors) in a forked child that
    shares the terminal; return its exit code. A child killed by a signal raises BundleError (one line).
    Ctrl-C reaches the child (same process group), which reports it; the parent waits."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: run the command, never return into the parent's code
        rc = 1
        try:
            rc = fn()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(rc if isinstance(rc, int) else 1)
    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    old_term = signal.signal(signal.SIGTERM, lambda *_: os.kill(pid, signal.SIGTERM))
    try:
        while True:
            try:
                _, status = os.waitpid(pid, 0)
                break
            except InterruptedError:
                continue
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        if signum in (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE):
            return 128 + signum  # stopped from outside, not a crash
        raise crash_error(Path(root), engine, signum, checked=checked)
    return os.WEXITSTATUS(status)


def _child(root: str) -> int:
    from . import load
    from .protocol import SamplingParams

    session = load(root, check=False)  # the parent has just written (or checked) the files
    try:
        if hasattr(session, "generate"):
            session.generate(PROMPT, SamplingParams(max_tokens=8))
            ids = session.tokenize(PROMPT * 4)
            session.logits(ids[:64])
        elif hasattr(session, "solve"):
            import numpy as np

            session.solve(np.ones((1, session.seq_len), dtype=np.int64), max_steps=1)
    finally:
        session.close()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(_child(sys.argv[1]))
    except Exception as exc:  # an ordinary error: the parent's own run reports it properly
        print(f"probe: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(2)
