"""Class labels: from --labels, the model's embedded metadata zip, or a sidecar file.

Accepted file layouts: one label a line (line i is output i), ``id label`` and ``id:label``.
A model with one more output than labels has a background class at index 0.
"""

from __future__ import annotations

import re
from pathlib import Path

from edge_app.errors import LabelsError, ModelError, os_reason, translate
from edge_app.inference.tflite_meta import embedded_files

# The 1,001 ImageNet labels (line 0 "background") shipped with the package.
PACKAGED_IMAGENET_LABELS = Path(__file__).resolve().parent.parent / "data" / "imagenet_labels.txt"
IMAGENET_OUTPUTS = 1001
_ID_LINE = re.compile(r"^\s*(\d+)\s*(?::|\s)\s*(.+?)\s*$")
BACKGROUND = "background"


def parse_labels(text: str, where: str) -> dict[int, str] | list[str]:
    """Parse label text; ``id label`` / ``id:label`` files give a dict, plain files a list."""
    lines = [line.rstrip("\r") for line in text.splitlines()]
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise LabelsError(f"labels file is empty: {where}")
    content = [line for line in lines if line.strip()]
    matches = [_ID_LINE.match(line) for line in content]
    if all(matches) and len({int(m.group(1)) for m in matches}) == len(matches):
        return {int(m.group(1)): m.group(2) for m in matches}
    return [line.strip() for line in lines]


def fit_labels(parsed: dict[int, str] | list[str], num_outputs: int, where: str) -> list[str]:
    """One label per model output, or a LabelsError explaining the mismatch."""
    if isinstance(parsed, dict):
        ids = sorted(parsed)
        if ids == list(range(num_outputs - 1)):  # 0-based file, background not listed
            return [BACKGROUND, *(parsed[i] for i in ids)]
        if ids[-1] >= num_outputs:
            raise LabelsError(
                f"labels {where} name id {ids[-1]} but the model has only "
                f"{num_outputs} outputs (ids 0..{num_outputs - 1})"
            )
        labels = [parsed.get(i, f"class {i}") for i in range(num_outputs)]
        if 0 not in parsed and len(parsed) == num_outputs - 1:
            labels[0] = BACKGROUND
        return labels
    if len(parsed) == num_outputs:
        return list(parsed)
    if len(parsed) == num_outputs - 1:  # background class at index 0 without a label
        return [BACKGROUND, *parsed]
    raise LabelsError(
        f"labels {where} has {len(parsed)} labels but the model has {num_outputs} outputs"
    )


def read_label_file(path: Path) -> dict[int, str] | list[str]:
    with translate(
        {
            FileNotFoundError: lambda e: LabelsError(f"labels file not found: {path}"),
            IsADirectoryError: lambda e: LabelsError(
                f"labels path is a folder, not a file: {path}"
            ),
            OSError: lambda e: LabelsError(f"cannot read labels {path}: {os_reason(e)}"),
        }
    ):
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    return parse_labels(text, str(path))


def embedded_label_text(model_bytes: bytes) -> tuple[str, str] | None:
    """(file name, text) of the labels in the zip appended to a TFLite model, if any
    (read by ``tflite_meta.embedded_files``; a corrupt zip counts as none here, so the
    sidecar file is tried next)."""
    try:
        files = embedded_files(model_bytes)
    except ModelError:
        return None
    names = sorted(
        (n for n in files if n.lower().endswith(".txt")),
        key=lambda n: ("label" not in n.lower(), n),
    )
    if not names:
        return None
    return names[0], files[names[0]].decode("utf-8", errors="replace")


def sidecar_candidates(model_path: Path) -> list[Path]:
    stem = model_path.with_suffix("")
    folder = model_path.parent
    return [
        Path(f"{stem}.txt"),
        Path(f"{stem}_labels.txt"),
        folder / "labels.txt",
        folder / "imagenet_labels.txt",
    ]


def load_labels(
    model_path: Path, model_bytes: bytes, num_outputs: int, labels_path: Path | None = None
) -> tuple[list[str], str]:
    """(labels, source description). Order: explicit file, embedded zip, sidecar file."""
    if labels_path is not None:
        return fit_labels(read_label_file(labels_path), num_outputs, str(labels_path)), str(
            labels_path
        )
    embedded = embedded_label_text(model_bytes)
    if embedded is not None:
        name, text = embedded
        where = f"{model_path.name} (embedded {name})"
        return fit_labels(parse_labels(text, where), num_outputs, where), f"embedded: {name}"
    for candidate in sidecar_candidates(model_path):
        if candidate.is_file():
            return fit_labels(
                read_label_file(candidate), num_outputs, str(candidate)
            ), f"sidecar: {candidate}"
    if num_outputs == IMAGENET_OUTPUTS and PACKAGED_IMAGENET_LABELS.is_file():
        # An ImageNet classifier without metadata (the official archives' files).
        return read_label_file(PACKAGED_IMAGENET_LABELS), "packaged: imagenet_labels.txt"
    raise LabelsError(
        f"no labels for {model_path}: the model has no embedded labels and no sidecar file "
        f"({model_path.with_suffix('.txt').name} or labels.txt) was found; pass --labels FILE"
    )
