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
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT); SIGTERM gives 143 (128 + SIGTERM)


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


class OutputError(EdgeAppError):
    """An output failed: results that cannot be written (disk full, read-only folder,
    closed pipe: exit 2, the file keeping only whole records), or a snapshot, the event
    log or a trigger's folder while running (logged in one line while the run goes on;
    at start-up it stops the service)."""


class WorkerError(EdgeAppError):
    """A worker process died mid-run: the records so far are whole, the rest unknown."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM during a command: exit 128 + the signal number, one line."""

    # The first signal this process got: an import or a library may turn the exception
    # into an error of its own (a C extension's "initialization failed"), which the CLI
    # then reports as the interruption it was.
    received: int | None = None

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
        self.exit_code = 128 + signum
        if Interrupted.received is None:
            Interrupted.received = signum


class InputError(EdgeAppError):
    """One input (an image file) cannot be used; the run goes on with the others."""

    exit_code = EXIT_SOME_FAILED


class SourceError(EdgeAppError):
    """A frame source (camera, video file, stream) cannot be opened or has failed."""


class CameraUnavailable(SourceError):
    """The camera is busy or absent now; a service retries."""


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
