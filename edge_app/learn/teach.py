"""Teaching from the live picture: a key adds the current frame to a class folder.

The folder is what ``edge-app learn`` reads (``DIR/<class>/<photos>``), so a taught
set is learned like any other. Frames are saved as they came from the source (no
overlay), as JPEG, written to a temporary name and renamed so a concurrent ``learn``
never reads half a file.
"""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from edge_app.errors import ConfigError

MAX_KEYED_CLASSES = 9  # keys 1..9
JPEG_QUALITY = 92
_BAD_NAME = re.compile(r"[/\\\x00]|^\.+$")


def check_class_name(name: str) -> str:
    """A class name usable as a folder name (it becomes the label)."""
    name = name.strip()
    if not name or _BAD_NAME.search(name) or name.startswith("."):
        raise ConfigError(
            f"bad class name {name!r}: use a plain name (no '/', not starting with '.')"
        )
    if len(name) > 80:
        raise ConfigError(f"class name too long ({len(name)} characters; at most 80)")
    return name


def count_photos(folder: Path) -> int:
    from edge_app.batch.decode import IMAGE_SUFFIXES

    try:
        return sum(
            1
            for entry in os.scandir(folder)
            if entry.is_file() and Path(entry.name).suffix.lower() in IMAGE_SUFFIXES
        )
    except FileNotFoundError:
        return 0


class TeachFolder:
    """Class folders under ``root`` with their photo counts; thread-safe."""

    def __init__(self, root: Path, classes: list[str] | None = None):
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"--teach-dir is a file, not a folder: {self.root}")
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._serial = 0
        names = classes if classes is not None else self._existing()
        for name in names:
            self._counts[check_class_name(name)] = count_photos(self.root / name)

    def _existing(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            e.name for e in os.scandir(self.root) if e.is_dir() and not e.name.startswith(".")
        )

    @property
    def classes(self) -> list[str]:
        with self._lock:
            return list(self._counts)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def add_class(self, name: str) -> str:
        name = check_class_name(name)
        with self._lock:
            self._counts.setdefault(name, count_photos(self.root / name))
        return name

    def save(self, name: str, bgr: np.ndarray) -> Path:
        """Write the frame into the class folder; returns its path."""
        name = self.add_class(name)
        ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise ConfigError("cannot encode the frame as JPEG")
        folder = self.root / name
        with self._lock:
            self._serial += 1
            stamp = time.strftime("%Y%m%d-%H%M%S")
            path = folder / f"teach-{stamp}-{os.getpid()}-{self._serial:05d}.jpg"
        tmp = path.with_name("." + path.name + ".tmp")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(encoded.tobytes())
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise ConfigError(
                f"cannot save a teaching photo in {folder}: {exc.strerror or exc}"
            ) from exc
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + 1
        return path


class KeyTeacher:
    """Keys ``1``..``9`` in the `run` window add the shown frame to class 1..9; the
    overlay's bottom line shows the classes, their counts, and the one just taught."""

    def __init__(self, folder: TeachFolder):
        if not folder.classes:
            raise ConfigError(
                "--teach-dir needs classes: give --teach-classes a,b or make class sub-folders"
            )
        if len(folder.classes) > MAX_KEYED_CLASSES:
            raise ConfigError(f"at most {MAX_KEYED_CLASSES} classes can be taught by key")
        self.folder = folder
        self.last: str | None = None
        self.last_time = 0.0

    def class_for_key(self, key: int) -> str | None:
        classes = self.folder.classes
        if ord("1") <= key <= ord("9") and key - ord("1") < len(classes):
            return classes[key - ord("1")]
        return None

    def handle_key(self, key: int, bgr: np.ndarray | None) -> Path | None:
        """Save ``bgr`` when ``key`` selects a class; the saved path, else None."""
        name = self.class_for_key(key)
        if name is None or bgr is None:
            return None
        path = self.folder.save(name, bgr)
        self.last, self.last_time = name, time.monotonic()
        return path

    def status_text(self) -> str:
        counts = self.folder.counts()
        parts = [f"{i}:{name} ({n})" for i, (name, n) in enumerate(counts.items(), start=1)]
        text = "teach " + "  ".join(parts)
        if self.last is not None and time.monotonic() - self.last_time < 2.0:
            text += f"   +1 {self.last} ({counts.get(self.last, 0)})"
        return text

    def draw(self, image: np.ndarray) -> None:
        """The status line in the top-right corner, on a dark band: the overlay keeps the
        predictions top-left and the rates bottom-left, and the centre stays clear."""
        text = self.status_text()
        h, w = image.shape[:2]
        scale = max(0.5, h / 960)  # legible at 640x480 and at 1920x1080 alike
        thickness = 1 if scale < 0.9 else 2
        (width, height), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        left = max(0, w - width - 12)
        bottom = min(h, height + base + 8)
        band = image[0:bottom, left:w]
        band //= 3  # darken in place
        cv2.putText(image, text, (left + 6, height + 4), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (255, 255, 255), thickness, cv2.LINE_AA)  # fmt: skip
