"""The inference core every mode shares: load a model, preprocess, invoke, top-k."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_app.errors import ConfigError
from edge_app.inference.labels import load_labels
from edge_app.inference.model import ModelSpec, inspect_interpreter, read_model_file
from edge_app.inference.preprocess import Preprocessor
from edge_app.inference.runtime import Runtime, default_threads, select_runtime
from edge_app.results import Prediction, is_background
from edge_app.settings import DEFAULT_MODEL

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_MODEL", "Classification", "Classifier", "resolve_model_path"]


@dataclass(slots=True)
class Classification:
    top: list[Prediction]
    inference_ms: float
    scores: np.ndarray  # float32 [num_outputs], dequantized


def resolve_model_path(model: str | Path, fetch: bool = True) -> Path:
    """A path as given, or a manifest name resolved (and fetched) by the model store."""
    path = Path(model).expanduser()
    if path.exists() or path.suffix == ".tflite" or "/" in str(model):
        return path
    from edge_app.inference.model_store import (
        resolve_model,  # the manifest: only when a name is used
    )

    return Path(resolve_model(str(model), fetch=fetch))


class Classifier:
    """One interpreter with its preprocessing and labels. Not thread-safe: one owner."""

    def __init__(
        self,
        model: str | Path = DEFAULT_MODEL,
        *,
        labels: str | Path | None = None,
        runtime: str | Runtime = "auto",
        threads: int | None = None,
        xnnpack: bool = True,
        crop: str = "central",
        top_k: int = 5,
        threshold: float = 0.0,
        keep_background: bool = False,
    ):
        if top_k < 1:
            raise ConfigError("model.top_k must be at least 1")
        if threads is not None and threads < 1:
            raise ConfigError("model.threads must be at least 1 (None: all cores)")
        self.model_path = resolve_model_path(model)
        self.runtime = runtime if isinstance(runtime, Runtime) else select_runtime(runtime)
        self.threads = threads or default_threads()
        self.xnnpack = xnnpack
        model_bytes = read_model_file(self.model_path)
        self.interpreter = self.runtime.make_interpreter(
            model_content=model_bytes,
            num_threads=self.threads,
            xnnpack=xnnpack,
            name=self.model_path,
        )
        self.spec: ModelSpec = inspect_interpreter(self.interpreter, self.model_path, model_bytes)
        self.labels, self.labels_source = load_labels(
            self.model_path,
            model_bytes,
            self.spec.num_outputs,
            Path(labels) if labels else None,
        )
        self.preprocessor = Preprocessor(
            self.spec.input_size, self.spec.input_dtype, crop, self.spec.mean, self.spec.std
        )
        self.top_k = min(top_k, self.spec.num_outputs)
        self.threshold = threshold
        # 1001-class models put "background" (none of the classes) at index 0: it is not
        # an answer, so top-k skips it unless asked to keep it.
        self.keep_background = keep_background
        self.background = frozenset(
            ()
            if keep_background
            else (i for i, lab in enumerate(self.labels) if is_background(lab))
        )
        self._input_index = self.spec.input_index
        self._output_index = self.spec.output_index
        quantized = self.spec.output_dtype != np.float32
        self._out_scale = np.float32(self.spec.output_scale if quantized else 1.0)
        self._out_zero = np.float32(self.spec.output_zero_point if quantized else 0.0)

    # -- properties the other seams use -------------------------------------------------
    @property
    def model_name(self) -> str:
        return self.spec.name

    @property
    def input_size(self) -> tuple[int, int]:
        return self.spec.input_size

    @property
    def input_dtype(self):
        return self.spec.input_dtype

    @property
    def crop(self) -> str:
        return self.preprocessor.crop

    def xnnpack_summary(self) -> str:
        """Whether XNNPACK took the graph, e.g. "XNNPACK 28/34 nodes, 100 % of MACs"."""
        if not self.xnnpack:
            return "XNNPACK off"
        from edge_app.inference.model_report import xnnpack_coverage

        try:
            cov = xnnpack_coverage(self.interpreter)
        except Exception as exc:  # noqa: BLE001 - a report must never stop inference
            log.debug("XNNPACK coverage unavailable: %s", exc)
            return "XNNPACK on"
        if cov.partitions == 0:
            return "XNNPACK on but took no nodes"
        return (
            f"XNNPACK {cov.delegated_nodes}/{cov.total_nodes} nodes in {cov.partitions} "
            f"partition(s), {100 * cov.delegated_mac_share:.0f} % of MACs"
        )

    def describe(self) -> str:
        return (
            f"{self.spec.describe()}; {self.runtime.describe()}, {self.threads} threads, "
            f"XNNPACK {'on' if self.xnnpack else 'off'}"
        )

    # -- the three steps ------------------------------------------------------------------
    def preprocess(self, bgr: np.ndarray, crop: str | None = None) -> None:
        """Write the frame into the interpreter's input buffer (no intermediate copy)."""
        # tensor()() is a zero-copy view; it is fetched anew each time and never held
        # across invoke(), as the runtime requires.
        view = self.interpreter.tensor(self._input_index)()
        self.preprocessor(bgr, view[0], crop)

    def invoke(self) -> float:
        """Run the model; returns the invoke time in ms."""
        start = time.perf_counter()
        self.interpreter.invoke()
        return (time.perf_counter() - start) * 1000.0

    def scores(self) -> np.ndarray:
        """Dequantized scores as a new float32 array."""
        # A zero-copy view of the output, read at once (before any other invoke).
        raw = self.interpreter.tensor(self._output_index)().reshape(-1)
        if raw.dtype == np.float32:
            return raw.copy()
        out = raw.astype(np.float32)
        out -= self._out_zero
        out *= self._out_scale
        return out

    def top(
        self, scores: np.ndarray, k: int | None = None, threshold: float | None = None
    ) -> list[Prediction]:
        k = min(k or self.top_k, scores.shape[0])
        threshold = self.threshold if threshold is None else threshold
        # One stable sort: exact ties break by class index, so every platform orders
        # them alike. Right after invoke() every numpy call runs on cold caches, and
        # this does the least of them (~100 us a frame fewer than partition + lexsort).
        best = np.argsort(-scores, kind="stable")[: k + len(self.background)].tolist()
        if self.background:
            best = [i for i in best if i not in self.background][:k]
        labels = self.labels
        return [
            Prediction(i, labels[i], score)
            for i, score in zip(best, scores[best].tolist(), strict=True)
            if score >= threshold
        ]

    def classify(self, bgr: np.ndarray, crop: str | None = None) -> Classification:
        self.preprocess(bgr, crop)
        inference_ms = self.invoke()
        scores = self.scores()
        return Classification(self.top(scores), inference_ms, scores)
