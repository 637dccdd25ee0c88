"""Choosing the TFLite runtime and making interpreters.

Preference order: ``ai_edge_litert`` (maintained, numpy 2), ``tflite_runtime`` (2.14 needs
numpy < 2), then full ``tensorflow``. All three expose the same ``Interpreter`` API, so
callers never branch on which one was found.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from edge_app.errors import ModelError, RuntimeNotFound
from edge_app.inference.model import read_model_file
from edge_app.settings import RUNTIME_CHOICES

# name -> (module holding Interpreter, distribution names to read the version from)
RUNTIMES: dict[str, tuple[str, tuple[str, ...]]] = {
    "litert": ("ai_edge_litert.interpreter", ("ai-edge-litert", "ai-edge-litert-nightly")),
    "tflite_runtime": ("tflite_runtime.interpreter", ("tflite-runtime", "tflite_runtime")),
    "tensorflow": ("tensorflow.lite.python.interpreter", ("tensorflow", "tensorflow-cpu")),
}
assert RUNTIME_CHOICES == ("auto", *RUNTIMES), "edge_app.settings lists the runtimes"


def default_threads() -> int:
    """All cores this process may use (respects taskset/cgroup affinity)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Runtime:
    name: str
    version: str
    module: Any  # the module holding Interpreter and OpResolverType

    def make_interpreter(
        self,
        model_path: str | os.PathLike | None = None,
        *,
        model_content: bytes | None = None,
        num_threads: int | None = None,
        xnnpack: bool = True,
        name: str | os.PathLike | None = None,
    ):
        """A ready (tensors allocated) interpreter.

        Threads are always passed explicitly: the Python Interpreter otherwise uses one.
        XNNPACK is the runtime's default delegate; turning it off selects the resolver
        without default delegates, the only switch all three runtimes share.
        """
        kwargs: dict[str, Any] = {"num_threads": num_threads or default_threads()}
        if not xnnpack:
            kwargs["experimental_op_resolver_type"] = (
                self.module.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
            )
        # Errors name the file: ``name`` says where ``model_content`` came from.
        where = str(model_path if model_path is not None else name or "the model in memory")
        if model_path is not None:
            model_content = read_model_file(Path(model_path))
        if not model_content or len(model_content) < 8 or model_content[4:8] != b"TFL3":
            raise ModelError(f"not a TFLite model (no TFL3 flatbuffer identifier): {where}")
        try:
            with _native_info_filtered():
                interpreter = self.module.Interpreter(model_content=model_content, **kwargs)
                interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"cannot load model {where}: {first}") from exc
        return interpreter

    def describe(self) -> str:
        return f"{self.name} {self.version}"


@contextlib.contextmanager
def _native_info_filtered():
    """Drop the runtime's native ``INFO: Created TensorFlow Lite XNNPACK delegate`` lines.

    They are written by C++ straight to file descriptor 2, so Python's logging cannot
    filter them; anything else written meanwhile is passed on unchanged.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [
                line
                for line in capture.read().splitlines(keepends=True)
                if not line.startswith(b"INFO: ")
            ]
            if kept:
                os.write(2, b"".join(kept))


def _version(dists: tuple[str, ...], module: Any) -> str:
    for dist in dists:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    top = importlib.import_module(module.__name__.split(".")[0])
    return getattr(top, "__version__", "unknown")


def _load(name: str) -> Runtime:
    module_name, dists = RUNTIMES[name]
    module = importlib.import_module(module_name)
    return Runtime(name=name, version=_version(dists, module), module=module)


_cache: dict[str, Runtime] = {}


def select_runtime(name: str | None = "auto") -> Runtime:
    """The runtime called ``name``, or the first importable one for ``auto``/None."""
    name = name or "auto"
    if name in _cache:
        return _cache[name]
    if name != "auto":
        if name not in RUNTIMES:
            raise RuntimeNotFound(
                f"unknown runtime {name!r}; choose one of {', '.join(RUNTIME_CHOICES)}"
            )
        try:
            runtime = _load(name)
        except ImportError as exc:
            raise RuntimeNotFound(
                f"runtime {name!r} is not installed ({exc}); "
                "install ai-edge-litert with pip, or choose --runtime auto"
            ) from exc
    else:
        errors = []
        for candidate in RUNTIMES:
            try:
                runtime = _load(candidate)
                break
            except ImportError as exc:
                errors.append(f"{candidate}: {exc}")
        else:
            raise RuntimeNotFound(
                "no TFLite runtime found (tried " + "; ".join(errors) + "); "
                "install one with: pip install ai-edge-litert"
            )
    _cache[name] = runtime
    return runtime
