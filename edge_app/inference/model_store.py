"""Models by name: the manifest, where model files live, and fetching them safely.

``models/manifest.toml`` lists each known file with its sha256. A name resolves to
``models_dir()/<file>``; a missing file is copied from the folder in
``EDGE_APP_MODEL_MIRROR`` or downloaded from its official URL, written to a temporary
file, checked against the manifest's sha256 and only then renamed into place, so an
interrupted or corrupted fetch never leaves a file that looks usable.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import sys
import tempfile
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import edge_app
from edge_app.errors import ConfigError, FetchError, ModelError

DEFAULT_MODEL_NAME = "mobilenet_v1_1.0_224_int8"
MODELS_DIR_ENV = "EDGE_APP_MODELS_DIR"
MIRROR_ENV = "EDGE_APP_MODEL_MIRROR"
MANIFEST_ENV = "EDGE_APP_MODEL_MANIFEST"  # a site's own model list replaces the built-in one
DOWNLOAD_TIMEOUT_S = 20  # per socket operation: a Pi on a flaky link should fail, not hang
_CHUNK = 1 << 16

_CHECKOUT_MODELS = Path(edge_app.__file__).resolve().parent.parent / "models"
# Where a manifest may be: the checkout's models/ folder, then a copy shipped as package
# data for wheel installs.
MANIFEST_CANDIDATES = (
    _CHECKOUT_MODELS / "manifest.toml",
    Path(edge_app.__file__).resolve().parent / "data" / "manifest.toml",
)


@dataclass(frozen=True)
class Entry:
    """One file the manifest knows: a model or a labels file."""

    name: str
    file: str
    sha256: str
    url: str = ""
    size: int = 0
    kind: str = "model"  # "model" or "labels"
    input_size: tuple[int, int] | None = None
    dtype: str = ""
    labels: str = ""
    description: str = ""

    @property
    def path(self) -> Path:
        return models_dir() / self.file

    @property
    def present(self) -> bool:
        return self.path.is_file()


def models_dir() -> Path:
    """Where model files are kept: $EDGE_APP_MODELS_DIR, the checkout's models/, or
    ~/.cache/edge-app/models."""
    override = os.environ.get(MODELS_DIR_ENV)
    if override:
        return Path(override).expanduser()
    if (_CHECKOUT_MODELS / "manifest.toml").is_file():
        return _CHECKOUT_MODELS
    return Path.home() / ".cache" / "edge-app" / "models"


def manifest_path() -> Path:
    override = os.environ.get(MANIFEST_ENV)
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise ConfigError(f"{MANIFEST_ENV} names no file: {path}")
        return path
    for candidate in MANIFEST_CANDIDATES:
        if candidate.is_file():
            return candidate
    raise ConfigError(
        "model manifest not found (looked for "
        + ", ".join(str(c) for c in MANIFEST_CANDIDATES)
        + "); pass --model PATH to use a model file directly"
    )


def load_manifest(path: Path | None = None) -> dict[str, Entry]:
    """All manifest entries by name, models first, in file order."""
    path = path or manifest_path()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read model manifest {path}: {exc}") from exc
    entries: dict[str, Entry] = {}
    for kind, table in (("model", "models"), ("labels", "labels")):
        for raw in data.get(table, []):
            try:
                size = raw.get("input_size")
                entry = Entry(
                    name=str(raw["name"]),
                    file=str(raw["file"]),
                    sha256=str(raw["sha256"]).lower(),
                    url=str(raw.get("url", "")),
                    size=int(raw.get("size", 0)),
                    kind=kind,
                    input_size=(int(size[0]), int(size[1])) if size else None,
                    dtype=str(raw.get("dtype", "")),
                    labels=str(raw.get("labels", "")),
                    description=str(raw.get("description", "")),
                )
            except (KeyError, TypeError, ValueError, IndexError) as exc:
                raise ConfigError(f"bad entry in model manifest {path}: {raw!r} ({exc})") from exc
            entries[entry.name] = entry
    return entries


def _lookup(name: str, manifest: dict[str, Entry]) -> Entry | None:
    if name in manifest:
        return manifest[name]
    for entry in manifest.values():  # "mobilenet_..._int8.tflite" names the same file
        if entry.file == name:
            return entry
    return None


def _unknown(name: str, manifest: dict[str, Entry]) -> ModelError:
    known = ", ".join(e.name for e in manifest.values() if e.kind == "model")
    return ModelError(
        f"unknown model {name!r}; known models: {known} (or give the path of a .tflite file)"
    )


def resolve_model(name_or_path: str | os.PathLike, fetch: bool = True) -> Path:
    """The model file for a path or a manifest name (fetched when missing if ``fetch``)."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.exists():
        return path
    looks_like_path = os.sep in text or "/" in text or text.startswith("~")
    manifest = load_manifest()
    entry = None if looks_like_path else _lookup(text, manifest)
    if entry is None:
        if looks_like_path or path.suffix == ".tflite":
            raise ModelError(f"model file not found: {path}")
        raise _unknown(text, manifest)
    if entry.present:
        return entry.path
    if not fetch:
        raise ModelError(
            f"model {entry.name} is not in {models_dir()}; run: edge-app models fetch {entry.name}"
        )
    return _fetch(entry, force=False, progress=True)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _how_to() -> str:
    return f"put the file in a folder and set {MIRROR_ENV}=/that/folder (or pass --model PATH)"


def fetch(name: str, force: bool = False, progress: bool = True) -> Path:
    """Make sure the named file is in ``models_dir()`` with the right checksum; return it.

    An existing file with the right checksum is kept unless ``force``; one with a wrong
    checksum is replaced.
    """
    manifest = load_manifest()
    entry = _lookup(name, manifest)
    if entry is None:
        raise _unknown(name, manifest)
    return _fetch(entry, force, progress)


def _fetch(entry: Entry, force: bool, progress: bool) -> Path:
    dest = entry.path
    if dest.is_file() and not force and sha256_of(dest) == entry.sha256:
        return dest
    mirror = os.environ.get(MIRROR_ENV)
    mirrored = Path(mirror).expanduser() / entry.file if mirror else None
    if mirrored is not None and mirrored.is_file():
        source = str(mirrored)
    elif entry.url:
        source = entry.url
    elif mirrored is not None:
        raise FetchError(
            f"{entry.file} is not in the mirror folder {mirrored.parent} and no official "
            f"download exists for {entry.name}; {_how_to()}"
        )
    else:
        raise FetchError(f"no official download exists for {entry.name}; {_how_to()}")

    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        handle = tempfile.NamedTemporaryFile(
            dir=dest.parent, prefix=f".{entry.file}.", suffix=".part", delete=False
        )
    except OSError as exc:
        raise FetchError(f"cannot write to models folder {dest.parent}: {exc}") from exc
    temp = Path(handle.name)
    try:
        with handle:
            if mirrored is not None and source == str(mirrored):
                _copy(mirrored, handle)
            else:
                _download(entry, handle, progress)
        actual = sha256_of(temp)
        if actual != entry.sha256:
            raise FetchError(
                f"checksum mismatch for {entry.name} from {source}: expected "
                f"{entry.sha256[:16]}…, got {actual[:16]}…; the file was not kept"
            )
        temp.chmod(0o644)  # temp files are private; the service user must read models
        os.replace(temp, dest)
    except OSError as exc:
        raise FetchError(f"cannot fetch {entry.name} into {dest.parent}: {exc}") from exc
    finally:
        temp.unlink(missing_ok=True)
    return dest


def _copy(source: Path, handle) -> None:
    try:
        with open(source, "rb") as src:
            shutil.copyfileobj(src, handle, _CHUNK)
    except OSError as exc:
        raise FetchError(f"cannot read {source}: {exc.strerror or exc}") from exc


def _download(entry: Entry, handle, progress: bool) -> None:
    show = progress and sys.stderr.isatty()
    request = urllib.request.Request(entry.url, headers={"User-Agent": "edge-app"})
    try:
        with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response:
            total = int(response.headers.get("Content-Length") or entry.size or 0)
            done = 0
            while chunk := response.read(_CHUNK):
                handle.write(chunk)
                done += len(chunk)
                if show:
                    _progress(entry.name, done, total)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise FetchError(
            f"cannot download {entry.name} from {entry.url} ({reason}); {_how_to()}"
        ) from exc
    finally:
        if show:
            sys.stderr.write("\n")


def _progress(name: str, done: int, total: int) -> None:
    if total:
        text = f"\rfetching {name}: {100 * done / total:5.1f}% of {total / 1e6:.1f} MB"
    else:
        text = f"\rfetching {name}: {done / 1e6:.1f} MB"
    sys.stderr.write(text)
    sys.stderr.flush()
