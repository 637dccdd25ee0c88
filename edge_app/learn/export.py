"""The learned classifier as an ordinary TFLite file.

Same body as the base model; the head's 1x1 convolution holds the new classes (quantised
as the base head is: int8 symmetric per output channel, int32 bias at input scale x
weight scale); softmax output as the base's (int8: scale 1/256, zero point -128). The
labels travel inside it the TFLite Support way (metadata naming ``labels.txt``, a zip
appended holding it), so every edge-app command and other TFLite tools can use it.

Beside the labels the zip holds ``edge_app_learn.npz``: the training embeddings (float16),
their classes and photo keys, so ``learn --from`` adds photos or classes without
decoding the old ones again. Other tools ignore it.

"unknown": unless disabled, the last class is ``unknown`` with zero weights and a
calibrated constant logit, so a frame like none of the classes is answered "unknown" by
the model itself: no reader needs to know a threshold.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from edge_app.errors import ModelError
from edge_app.inference import tflite_meta, tflite_model
from edge_app.learn import surgery
from edge_app.learn.head import BaseHead, LinearHead

LABELS_FILE = "labels.txt"
STATE_FILE = "edge_app_learn.npz"
STATE_VERSION = 1
UNKNOWN_LABEL = "unknown"
LOGIT_HEADROOM = 1.25  # the logit tensor's range covers the training logits with margin


@dataclass
class LearnState:
    """What re-learning needs: every training row and where it came from."""

    class_names: list[str]
    features: np.ndarray  # float32 [rows, features]
    labels: np.ndarray  # int [rows] into class_names
    photo_keys: list[str]  # [rows] "class/relative/path|size"; augmented rows share it
    original: np.ndarray  # bool [rows]: True for the un-augmented view
    keep_imagenet: bool
    unknown: bool
    base_name: str
    base_classes: int = 0  # leading outputs that are the base model's own (keep-imagenet)

    def to_bytes(self) -> bytes:
        out = io.BytesIO()
        np.savez_compressed(
            out,
            version=np.int64(STATE_VERSION),
            class_names=np.array(self.class_names, dtype=object).astype(str),
            features=self.features.astype(np.float16),
            labels=self.labels.astype(np.int32),
            photo_keys=np.array(self.photo_keys, dtype=str),
            original=self.original.astype(bool),
            keep_imagenet=np.bool_(self.keep_imagenet),
            unknown=np.bool_(self.unknown),
            base_name=np.array(self.base_name),
            base_classes=np.int64(self.base_classes),
        )
        return out.getvalue()

    @classmethod
    def from_model(cls, model_bytes: bytes, where: str) -> LearnState:
        files = tflite_model.read_files(model_bytes)
        if STATE_FILE not in files:
            raise ModelError(
                f"{where} was not made by `edge-app learn` (no {STATE_FILE} inside): "
                "learn from a folder without --from"
            )
        try:
            data = np.load(io.BytesIO(files[STATE_FILE]), allow_pickle=False)
            if int(data["version"]) != STATE_VERSION:
                raise ModelError(f"{where}: learn state version {int(data['version'])} unknown")
            return cls(
                class_names=[str(n) for n in data["class_names"]],
                features=data["features"].astype(np.float32),
                labels=data["labels"].astype(np.int64),
                photo_keys=[str(k) for k in data["photo_keys"]],
                original=data["original"].astype(bool),
                keep_imagenet=bool(data["keep_imagenet"]),
                unknown=bool(data["unknown"]),
                base_name=str(data["base_name"]),
                base_classes=int(data["base_classes"]),
            )
        except (KeyError, ValueError, OSError) as exc:
            raise ModelError(f"{where}: its learn state is corrupt ({exc})") from exc


def build_model(
    body,
    class_names: list[str],
    head: LinearHead,
    *,
    base: BaseHead | None,
    base_labels: list[str] | None,
    unknown_logit: float | None,
    training_features: np.ndarray,
    state: LearnState,
    mean: list[float],
    std: list[float],
) -> bytes:
    """The custom classifier's bytes. ``body``: the ``ModelT`` of any model with the
    base's body (the base itself or a learned model); it is changed in place."""
    weights, bias = head.weights, head.bias
    labels = list(class_names)
    if base is not None:
        if base_labels is None or len(base_labels) != len(base.bias):
            raise ModelError("the base model's labels do not match its head")
        weights = np.concatenate([base.weights, weights])
        bias = np.concatenate([base.bias, bias])
        labels = [*base_labels, *labels]
    if unknown_logit is not None:
        weights = np.concatenate([weights, np.zeros((1, weights.shape[1]), weights.dtype)])
        bias = np.concatenate([bias, np.array([unknown_logit], bias.dtype)])
        labels.append(UNKNOWN_LABEL)
    logit_range = None
    if base is None:
        logits = training_features @ weights.T + bias
        logit_range = (
            float(min(logits.min(), 0.0)) * LOGIT_HEADROOM,
            float(max(logits.max(), 0.0)) * LOGIT_HEADROOM,
        )
    surgery.replace_head(body, weights, bias, logit_range)
    metadata = tflite_meta.ModelMetadata(
        name="ImageClassifier",
        description="Custom classes learned on the device by edge-app learn: "
        + ", ".join(class_names),
        version="edge-app-learn-1",
        min_parser_version="1.0.0",
        inputs=[
            tflite_meta.TensorMetadata(
                name="image",
                description="Input image to be classified.",
                normalization=tflite_meta.Normalization(mean=list(mean), std=list(std)),
                color_space="RGB",
                value_min=[0.0],
                value_max=[255.0],
            )
        ],
        outputs=[
            tflite_meta.TensorMetadata(
                name="probability",
                description="Probabilities of the labels respectively.",
                value_min=[0.0],
                value_max=[1.0],
            )
        ],
        associated_files=[
            tflite_meta.AssociatedFile(
                name=LABELS_FILE,
                type="TENSOR_AXIS_LABELS",
                description="Labels for the learned classes.",
                attached_to="output:probability",
            ),
            tflite_meta.AssociatedFile(
                name=STATE_FILE,
                type="UNKNOWN",
                description="edge-app learn state (training embeddings) for relearning.",
            ),
        ],
    )
    tflite_model.set_metadata_buffer(
        body, tflite_meta.METADATA_BUFFER_NAME, tflite_meta.build_metadata(metadata)
    )
    files = {
        LABELS_FILE: ("\n".join(labels) + "\n").encode("utf-8"),
        STATE_FILE: state.to_bytes(),
    }
    return tflite_model.append_files(tflite_model.pack(body), files)
