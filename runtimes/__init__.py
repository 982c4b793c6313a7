"""Sessions over bundles: ``load`` opens a bundle with the engine its manifest names, as a session of its model
kind (``LanguageSession``: generate / stream / logits; ``SolverSession``: solve).  Installed as
``edgekit.runtimes``.

Importing this package imports no engine; ``load`` imports only the engine a bundle needs, and no torch (the
ExecuTorch runtime aside, whose Python binding links libtorch).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..bundle import check_files, read_manifest
from ..errors import BundleError
from .engines import ENGINES, Engine

if TYPE_CHECKING:
    from .protocol import LanguageSession, SolverSession

_PROTOCOL = ("Generation", "LanguageSession", "SamplingParams", "SolverSession", "StreamResult", "Timing")


def __getattr__(name: str) -> Any:
    # the session values need numpy; the engine table (read by a device's "is the runtime there" check, possibly
    # on a Python without numpy) must not
    if name in _PROTOCOL:
        from . import protocol

        return getattr(protocol, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def session_class(manifest: dict[str, Any], where: str = "bundle") -> type:
    """The session class for a manifest's engine and model kind (imports that engine's module)."""
    engine = Engine.parse(manifest.get("engine"), where)
    kind = str(manifest.get("kind", "language"))
    target = ENGINES[engine].sessions.get(kind)
    if target is None:
        raise BundleError(f"{where}: engine {engine.value} cannot run a {kind} model; re-export in another format")
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def load(bundle: str | Path, check: bool = True, **options: Any) -> "LanguageSession | SolverSession":
    """Open a bundle with the engine its manifest names.  ``options`` go to the engine (e.g. ``n_threads``).

    Before an engine maps a file, every file the manifest lists is checked for its size and, with ``check``
    (the default), its full sha256: a changed byte in a memory-mapped weight file otherwise gives other output
    silently or kills the process (SIGBUS in ExecuTorch's .ptd loader).  Cost measured here: sha256 of a 700 MB
    file (dd from /dev/urandom, page cache warm) took 0.80-0.86 s on one core of this AMD EPYC (~850 MB/s),
    about the time llama.cpp needs to load such a model, so the full digest is affordable at LFM2-350M scale
    (a sampled digest would miss exactly the one-byte damage); ``check=False`` (``--no-check``) keeps the size
    check only.

    Raises BundleError for a missing, incomplete, damaged or unknown bundle (also when the manifest's contents
    do not fit the artifact) and MissingDependencyError when the engine is not installed (the message names the
    pip extra)."""
    root = Path(bundle)
    manifest = read_manifest(root)
    check_files(root, manifest, hashes=check)
    cls = session_class(manifest, str(root))
    try:
        return cls(root, manifest, **options)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        if isinstance(exc, TypeError) and "keyword argument" in str(exc):
            raise  # a caller's mistake (an option the engine does not take), not the bundle's
        # the manifest passed its schema, but a value does not fit what the engine found in the artifact
        first = (str(exc).splitlines() or [""])[0][:200]
        raise BundleError(
            f"{root}: the {manifest['engine']} session cannot open this bundle ({type(exc).__name__}: {first}); "
            "the manifest and the artifact disagree — re-export the bundle"
        ) from None


__all__ = [
    "ENGINES",
    "Engine",
    "Generation",
    "LanguageSession",
    "SamplingParams",
    "SolverSession",
    "StreamResult",
    "Timing",
    "load",
    "session_class",
]
