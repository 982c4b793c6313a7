"""The error hierarchy: every failure a user can cause or fix is an ``EdgekitError`` that says what to do."""

from __future__ import annotations


class EdgekitError(Exception):
    """Base class of all user-facing edgekit errors; the message is one line that says what to do."""


class UnsupportedError(EdgekitError):
    """A family, format, quantisation or option combination that edgekit does not support."""


class CheckpointError(EdgekitError):
    """A model checkpoint that is missing files, malformed or inconsistent."""


class AdapterError(EdgekitError):
    """A LoRA adapter that is malformed or does not fit the base model."""


class BundleError(EdgekitError):
    """A bundle that is missing, incomplete, or whose files do not match its manifest."""


class OutputExistsError(EdgekitError):
    """The output path already exists and ``force`` was not given."""


class WriteError(EdgekitError):
    """Writing the bundle failed (disk full, permissions); nothing was left at the output path."""


class ParityError(EdgekitError):
    """An export whose outputs do not match the PyTorch reference within the thresholds."""


class MissingDependencyError(EdgekitError):
    """An optional engine or library is not installed; the message names the pip extra to install."""


def require(module: str, extra: str):
    """Import ``module`` or raise a MissingDependencyError that names the extra providing it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{module} is not installed ({exc}); install it with: pip install 'edgekit[{extra}]'"
        ) from None


class ContextLengthError(EdgekitError):
    """A prompt (plus the tokens to generate) that does not fit the session's context length."""


class StateError(EdgekitError):
    """Decoder state (KV cache, conv state) whose shape or type does not fit the model it is given to."""


class DeviceError(EdgekitError):
    """A device (ssh host, adb phone) that cannot be reached, refuses access, or failed to run the job."""


class RuntimeMissingError(DeviceError):
    """The device lacks the engine a bundle needs; the message gives the install command to run there."""


class InternalError(EdgekitError):
    """An edgekit bug: a state the code should never reach.  The message asks the user to report it."""

    def __init__(self, message: str) -> None:
        super().__init__(
            f"{message} — this is an edgekit bug; please report it with the command you ran and `pip freeze`"
        )


class EngineError(EdgekitError):
    """An engine (onnxruntime, ExecuTorch, llama.cpp) failed while running a bundle: the message has its first
    line and the inputs' shapes; the bundle or the request does not fit the program."""
