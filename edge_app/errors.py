"""The project's small exception tree.

Every error a user can cause is an ``EdgeAppError`` carrying the process exit code and
a one-line message; the CLI prints ``edge-app: error: <message>`` and exits with it, so
no user error ever shows a traceback. Library exceptions are translated at the seam by
one helper, ``translate`` (``with translate({OSError: lambda e: ModelError(...)}):``),
which chains the original (``raise ... from exc``) for the debug log.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping

EXIT_OK = 0
EXIT_SOME_FAILED = 1  # a run finished but some inputs failed
EXIT_USAGE = 2  # usage, model or configuration errors


class EdgeAppError(Exception):
    """Base class: a problem the user can fix, with a readable one-line message."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # always one line

    @property
    def message(self) -> str:
        return str(self)


class ModelError(EdgeAppError):
    """The model file is missing, corrupt, or not an image classifier."""


class LabelsError(ModelError):
    """Labels missing, unreadable, or not matching the model's outputs."""


class RuntimeNotFound(EdgeAppError):
    """No TFLite runtime (ai_edge_litert, tflite_runtime, tensorflow) can be imported."""


class ConfigError(EdgeAppError):
    """A bad configuration file, key, value or command-line combination."""


class FetchError(EdgeAppError):
    """A model could not be downloaded or verified."""


class InputError(EdgeAppError):
    """One input (an image file) cannot be used; the run goes on with the others."""

    exit_code = EXIT_SOME_FAILED


class SourceError(EdgeAppError):
    """A frame source (camera, video file, stream) cannot be opened or has failed."""


class CameraUnavailable(SourceError):
    """The camera is busy or absent now; a service retries."""


class OutputError(EdgeAppError):
    """An output failed while running (a snapshot, the event log, a trigger's folder):
    logged in one line while the run goes on; at start-up it stops the service."""


ExceptionTypes = type[BaseException] | tuple[type[BaseException], ...]


def os_reason(exc: BaseException) -> str:
    """An OS error's reason without its errno and path ("Permission denied")."""
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


@contextlib.contextmanager
def translate(
    mapping: Mapping[ExceptionTypes, Callable[[BaseException], EdgeAppError]],
) -> Iterator[None]:
    """Turn library exceptions raised inside into the project's: the first entry whose
    types match makes the EdgeAppError, raised from the original. Our own errors and
    unmatched exceptions (bugs) pass through unchanged."""
    try:
        yield
    except EdgeAppError:
        raise
    except Exception as exc:
        for kinds, make in mapping.items():
            if isinstance(exc, kinds):
                raise make(exc) from exc
        raise


class BrokerError(EdgeAppError):
    """The MQTT broker cannot be reached or refused us (the `edge-app mqtt` commands)."""

    exit_code = EXIT_SOME_FAILED
