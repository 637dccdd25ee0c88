"""Models by name: the manifest, where model files live, and getting them safely.

``models/manifest.toml`` lists each known file. A name resolves to ``models_dir()/<file>``.
A missing file comes from, in order:

1. the folder in ``EDGE_APP_MODEL_MIRROR``: the final file (checked against ``sha256``),
   or a source it can be made from (the official archive, or the uint8 model a derived
   int8 model is made from);
2. the official download: ``url`` (the file itself) or ``archive_url`` (a ``.tgz``
   checked against its published ``archive_sha256``, then ``member`` is extracted).
   ``EDGE_APP_MODEL_BASE_URL`` replaces the official host (scheme and host) with a LAN
   cache that keeps the same paths;
3. for ``derive = "int8"`` entries: the ``source`` model, got as above, converted by
   ``int8_convert`` and self-checked against it.

Downloads go to ``.<name>.part`` in the models folder and resume from there (HTTP Range)
after a cut connection; stale parts are removed. Everything is written to a temporary
file and renamed into place only once verified, so nothing half-written or unverified is
ever visible under a model's name. A file whose bytes the manifest cannot pin (extracted
from an archive, or derived from one) gets ``<file>.sha256`` beside it, written when it
was verified, so the next run recognises it.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import tarfile
import tempfile
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import edge_app
from edge_app.errors import ConfigError, FetchError, ModelError
from edge_app.settings import DEFAULT_MODEL

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = DEFAULT_MODEL  # one name for the default model: edge_app.settings
MODELS_DIR_ENV = "EDGE_APP_MODELS_DIR"
MIRROR_ENV = "EDGE_APP_MODEL_MIRROR"
MANIFEST_ENV = "EDGE_APP_MODEL_MANIFEST"  # a site's own model list replaces the built-in one
BASE_URL_ENV = "EDGE_APP_MODEL_BASE_URL"  # a LAN cache standing in for the official hosts
DOWNLOAD_TIMEOUT_S = 20  # per socket operation: a Pi on a flaky link should fail, not hang
MAX_RESUMES = 5  # a connection cut mid-download is resumed this often in one fetch
STALE_PART_S = 7 * 24 * 3600  # a partial download untouched this long is not resumed
_CHUNK = 1 << 16
SIDECAR_SUFFIX = ".sha256"

_DATA_DIR = Path(edge_app.__file__).resolve().parent / "data"
_CHECKOUT_MODELS = Path(edge_app.__file__).resolve().parent.parent / "models"
# Where a manifest may be: the checkout's models/ folder, then a copy shipped as package
# data for wheel installs.
MANIFEST_CANDIDATES = (_CHECKOUT_MODELS / "manifest.toml", _DATA_DIR / "manifest.toml")
IMAGENET_LABELS = _DATA_DIR / "imagenet_labels.txt"  # 1,001 lines, line 0 "background"

Progress = Callable[[int, int], None]  # (bytes done, bytes total or 0 when unknown)
Step = Callable[[str], None]  # one line saying what the store does now


@dataclass(frozen=True)
class Entry:
    """One file the manifest knows: a model or a labels file."""

    name: str
    file: str
    sha256: str = ""  # of the final file as mirrors hold it ("" when it cannot be pinned)
    url: str = ""  # official download of the file itself
    size: int = 0
    kind: str = "model"  # "model" or "labels"
    input_size: tuple[int, int] | None = None
    dtype: str = ""
    labels: str = ""
    description: str = ""
    archive_url: str = ""  # official .tgz holding the file as `member`
    archive_sha256: str = ""  # the archive's published sha256
    member: str = ""
    mirror_file: str = ""  # the file's name in a mirror folder, when not `file`
    derive: str = ""  # "int8": made from `source` by int8_convert
    source: str = ""
    mirror_only: bool = False  # never downloaded or derived: only from a mirror folder
    # Other sha256s a file of this name may have in a mirror (another model under the
    # same name, e.g. the TensorFlow-made int8 of older mirrors): skipped, not an error.
    other_sha256: tuple[str, ...] = field(default_factory=tuple)

    @property
    def path(self) -> Path:
        return models_dir() / self.file

    @property
    def present(self) -> bool:
        return self.path.is_file()

    @property
    def official(self) -> str:
        """Where the official file comes from, for `models list`."""
        if self.url:
            return self.url
        if self.archive_url:
            return f"{self.archive_url} ({self.member})"
        if self.derive:
            return f"derived {self.derive} from {self.source}"
        return "mirror only"


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
                    sha256=str(raw.get("sha256", "")).lower(),
                    url=str(raw.get("url", "")),
                    size=int(raw.get("size", 0)),
                    kind=kind,
                    input_size=(int(size[0]), int(size[1])) if size else None,
                    dtype=str(raw.get("dtype", "")),
                    labels=str(raw.get("labels", "")),
                    description=str(raw.get("description", "")),
                    archive_url=str(raw.get("archive_url", "")),
                    archive_sha256=str(raw.get("archive_sha256", "")).lower(),
                    member=str(raw.get("member", "")),
                    mirror_file=str(raw.get("mirror_file", "")),
                    derive=str(raw.get("derive", "")),
                    source=str(raw.get("source", "")),
                    mirror_only=bool(raw.get("mirror_only", False)),
                    other_sha256=tuple(str(s).lower() for s in raw.get("other_sha256", [])),
                )
            except (KeyError, TypeError, ValueError, IndexError) as exc:
                raise ConfigError(f"bad entry in model manifest {path}: {raw!r} ({exc})") from exc
            if entry.archive_url and not (entry.archive_sha256 and entry.member):
                raise ConfigError(
                    f"bad entry {entry.name} in model manifest {path}: archive_url needs "
                    "archive_sha256 and member"
                )
            if entry.derive and entry.derive != "int8":
                raise ConfigError(f'bad entry {entry.name} in {path}: derive must be "int8"')
            entries[entry.name] = entry
    for entry in entries.values():
        if entry.derive and entry.source not in entries:
            raise ConfigError(
                f"bad entry {entry.name} in model manifest {path}: source {entry.source!r} "
                "is not in the manifest"
            )
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
    return _Fetcher(manifest, None, None).get(entry, force=False)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def how_to() -> str:
    return f"put the file in a folder and set {MIRROR_ENV}=/that/folder (or pass --model PATH)"


def fetch(
    name: str,
    force: bool = False,
    progress: bool = True,
    *,
    on_progress: Progress | None = None,
    on_step: Step | None = None,
) -> Path:
    """Make sure the named file is in ``models_dir()``, verified; return its path.

    A present file that verifies is kept unless ``force``; one that does not is
    replaced. ``on_progress(done, total)`` is called as bytes arrive (``total`` 0 when
    unknown); ``on_step(text)`` when the store starts a download, extraction or
    derivation. ``progress`` is kept for callers of the old signature (unused).
    """
    del progress
    manifest = load_manifest()
    entry = _lookup(name, manifest)
    if entry is None:
        raise _unknown(name, manifest)
    return _Fetcher(manifest, on_progress, on_step).get(entry, force)


def verified(entry: Entry) -> bool:
    """True when the entry's file is present with bytes the store verified."""
    path = entry.path
    if not path.is_file():
        return False
    actual = sha256_of(path)
    if entry.sha256 and actual == entry.sha256:
        return True
    sidecar = _sidecar(path)
    try:
        recorded = sidecar.read_text(encoding="ascii").split()[0]
    except (OSError, IndexError, UnicodeDecodeError):
        return False
    return recorded == actual


def base_url_for(url: str) -> str:
    """``url`` with scheme and host replaced by $EDGE_APP_MODEL_BASE_URL, when set."""
    base = os.environ.get(BASE_URL_ENV, "").strip()
    if not base or not url:
        return url
    parts = urllib.parse.urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    return base.rstrip("/") + path


def clean_stale_parts(folder: Path | None = None, max_age_s: float = STALE_PART_S) -> list[Path]:
    """Remove partial downloads and temporary files older than ``max_age_s``; return them."""
    folder = folder or models_dir()
    removed = []
    try:
        candidates = [p for p in folder.iterdir() if p.name.startswith(".") and ".part" in p.name]
    except OSError:
        return removed
    now = time.time()
    for path in candidates:
        try:
            if now - path.stat().st_mtime > max_age_s:
                path.unlink()
                removed.append(path)
        except OSError:
            continue
    return removed


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR_SUFFIX)


class _Fetcher:
    """One fetch run: tries each way to get an entry, remembers what it tried."""

    def __init__(self, manifest: dict[str, Entry], on_progress, on_step):
        self.manifest = manifest
        self.on_progress = on_progress
        self.on_step = on_step or (lambda text: log.info("%s", text))
        self.tried: list[str] = []
        mirror = os.environ.get(MIRROR_ENV)
        self.mirror = Path(mirror).expanduser() if mirror else None

    # -- entry points ------------------------------------------------------------------
    def get(self, entry: Entry, force: bool) -> Path:
        """The entry's verified file; FetchError saying what was tried when none works."""
        result = self._get(entry, force)
        if result is None:
            raise FetchError(self._nothing_worked(entry))
        return result

    def _get(self, entry: Entry, force: bool) -> Path | None:
        """None when no way worked (noted in ``tried``); FetchError on a bad file."""
        dest = entry.path
        if not force and verified(entry):
            return dest
        self._prepare(dest.parent)
        result = self._from_mirror(entry)
        if result is None and entry.derive:
            result = self._derive(entry)
        if result is None and not entry.mirror_only:
            result = self._download(entry)
        return result

    def _prepare(self, folder: Path) -> None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FetchError(f"cannot write to models folder {folder}: {exc}") from exc
        for path in clean_stale_parts(folder):
            log.info("removed a stale partial download: %s", path)

    def _nothing_worked(self, entry: Entry) -> str:
        downloads = [t for t in self.tried if not t.startswith("mirror folder")]
        if not downloads:
            if self.mirror is None:
                return f"no official download exists for {entry.name}; {how_to()}"
            return (
                f"{entry.mirror_file or entry.file} is not in the mirror folder {self.mirror} "
                f"and no official download exists for {entry.name}; {how_to()}"
            )
        if len(self.tried) == 1 and not entry.derive:
            return f"cannot download {entry.name} from {self.tried[0]}; {how_to()}"
        mirror = [] if self.mirror else [f"mirror folder ({MIRROR_ENV} not set)"]
        tried = "; ".join(mirror + self.tried)
        made = f" (derived from {entry.source})" if entry.derive else ""
        return f"cannot get {entry.name}{made}: tried {tried}; {how_to()}"

    # -- mirror ------------------------------------------------------------------------
    def _from_mirror(self, entry: Entry) -> Path | None:
        if self.mirror is None:
            return None
        candidate = self.mirror / (entry.mirror_file or entry.file)
        if candidate.is_file():
            actual = sha256_of(candidate)
            if actual in entry.other_sha256:
                log.info(
                    "%s in the mirror is another model; not used for %s", candidate, entry.name
                )
            else:
                if entry.sha256 and actual != entry.sha256:
                    raise FetchError(
                        f"checksum mismatch for {entry.name} from {self.mirror}: expected "
                        f"{entry.sha256[:16]}…, got {actual[:16]}…; the file was not kept"
                    )
                self.on_step(f"copying {entry.name} from {self.mirror}")
                return self._install_copy(entry, candidate, pinned=bool(entry.sha256))
        if entry.archive_url:
            archive = self.mirror / _url_name(entry.archive_url)
            if archive.is_file():
                return self._install_from_archive(entry, archive, str(self.mirror))
        names = [entry.mirror_file or entry.file]
        if entry.archive_url:
            names.append(_url_name(entry.archive_url))
        self.tried.append(f"mirror folder {self.mirror} (no {' or '.join(names)})")
        return None

    def _install_copy(self, entry: Entry, source: Path, pinned: bool) -> Path:
        with self._temp(entry) as temp:
            try:
                with open(source, "rb") as src, open(temp, "wb") as out:
                    shutil.copyfileobj(src, out, _CHUNK)
            except OSError as exc:
                raise FetchError(f"cannot read {source}: {exc.strerror or exc}") from exc
            if pinned and sha256_of(temp) != entry.sha256:  # changed while copying
                raise FetchError(f"checksum mismatch for {entry.name} from {source.parent}")
            return self._install(entry, temp, record=not pinned)

    # -- downloads ---------------------------------------------------------------------
    def _download(self, entry: Entry) -> Path | None:
        if entry.url:
            url = base_url_for(entry.url)
            part = self._fetch_url(entry.name, url, entry.sha256 or None, entry.size)
            if part is None:
                return None
            with self._temp(entry) as temp:
                os.replace(part, temp)
                return self._install(entry, temp, record=not entry.sha256)
        if entry.archive_url:
            url = base_url_for(entry.archive_url)
            part = self._fetch_url(entry.name, url, entry.archive_sha256, 0)
            if part is None:
                return None
            try:
                return self._install_from_archive(entry, part, url, _url_name(url))
            finally:
                part.unlink(missing_ok=True)  # the member is out: the archive is not kept
        return None

    def _fetch_url(self, name: str, url: str, sha256: str | None, size: int) -> Path | None:
        """Download ``url`` into its ``.part`` file, resuming; verify; return the part.

        Returns None (and notes it in ``tried``) when the server cannot be reached.
        """
        folder = models_dir()
        part = folder / f".{_url_name(url)}.part"
        restarted = False
        cuts = 0
        while True:
            resumed = part.is_file() and part.stat().st_size > 0
            self.on_step(f"downloading {name} from {url}" + (" (resuming)" if resumed else ""))
            before = part.stat().st_size if resumed else 0
            try:
                _http_get(url, part, size, self.on_progress)
            except _Unreachable as exc:
                grew = part.is_file() and part.stat().st_size > before
                if grew and cuts < MAX_RESUMES:  # a cut connection: go on where it stopped
                    cuts += 1
                    log.info("download of %s broke off (%s); resuming", url, exc)
                    continue
                self.tried.append(f"{url} ({exc})")
                return None  # the part stays: the next fetch resumes it
            if sha256 is None:
                return part
            actual = sha256_of(part)
            if actual == sha256:
                return part
            part.unlink(missing_ok=True)
            if resumed and not restarted:  # a part from elsewhere: once more from scratch
                restarted = True
                log.info("resumed download of %s did not verify; starting over", url)
                continue
            raise FetchError(
                f"checksum mismatch for {name} from {url}: expected {sha256[:16]}…, got "
                f"{actual[:16]}…; the file was not kept"
            )

    def _install_from_archive(
        self, entry: Entry, archive: Path, where: str, shown: str = ""
    ) -> Path:
        shown = shown or archive.name
        if sha256_of(archive) != entry.archive_sha256:
            raise FetchError(
                f"checksum mismatch for {entry.name}'s archive {shown} from {where}: "
                f"expected {entry.archive_sha256[:16]}…; the file was not kept"
            )
        self.on_step(f"extracting {entry.member} from {shown}")
        with self._temp(entry) as temp:
            try:
                with tarfile.open(archive, "r:*") as tar:
                    member = _find_member(tar, entry.member)
                    if member is None:
                        raise FetchError(
                            f"{shown} from {where} has no {entry.member} for {entry.name}"
                        )
                    with tar.extractfile(member) as src, open(temp, "wb") as out:
                        shutil.copyfileobj(src, out, _CHUNK)
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise FetchError(f"cannot extract {entry.member} from {archive}: {exc}") from exc
            pinned = entry.sha256 and sha256_of(temp) == entry.sha256
            return self._install(entry, temp, record=not pinned)

    # -- derivation --------------------------------------------------------------------
    def _derive(self, entry: Entry) -> Path | None:
        from edge_app.inference import int8_convert

        source_entry = self.manifest[entry.source]
        source_path = self._get(source_entry, force=False)
        if source_path is None:
            return None
        self.on_step(f"deriving {entry.name} from {source_entry.name}")
        source = _read(source_path)
        labels = IMAGENET_LABELS.read_bytes() if entry.labels == "embedded" else None
        try:
            conversion = int8_convert.convert(
                source,
                labels=labels,
                labels_name=IMAGENET_LABELS.name if labels else "",
                where=str(source_path),
            )
            check = int8_convert.self_check(source, conversion.model)
        except ModelError as exc:
            raise FetchError(f"cannot derive {entry.name}: {exc.message}") from exc
        if not check.passed:
            raise FetchError(
                f"the derived {entry.name} disagrees with {source_entry.name} "
                f"({check.describe()}); it was not installed"
            )
        with self._temp(entry) as temp:
            temp.write_bytes(conversion.model)
            pinned = entry.sha256 and sha256_of(temp) == entry.sha256
            return self._install(entry, temp, record=not pinned)

    # -- writing -----------------------------------------------------------------------
    class _TempFile:
        def __init__(self, folder: Path, name: str):
            try:
                handle = tempfile.NamedTemporaryFile(
                    dir=folder, prefix=f".{name}.", suffix=".part", delete=False
                )
            except OSError as exc:
                raise FetchError(f"cannot write to models folder {folder}: {exc}") from exc
            handle.close()
            self.path = Path(handle.name)

        def __enter__(self) -> Path:
            return self.path

        def __exit__(self, *exc_info) -> None:
            self.path.unlink(missing_ok=True)  # gone if installed; removed if not

    def _temp(self, entry: Entry) -> _Fetcher._TempFile:
        return self._TempFile(entry.path.parent, entry.file)

    def _install(self, entry: Entry, temp: Path, record: bool) -> Path:
        """Rename a verified temporary file into place (with its sidecar when the
        manifest cannot pin its bytes)."""
        dest = entry.path
        sidecar = _sidecar(dest)
        try:
            temp.chmod(0o644)  # temp files are private; the service user must read models
            if record:
                digest = sha256_of(temp)
                side_temp = sidecar.with_name(f".{sidecar.name}.part")
                side_temp.write_text(f"{digest}  {dest.name}\n", encoding="ascii")
                side_temp.chmod(0o644)
                os.replace(side_temp, sidecar)
            os.replace(temp, dest)
            if not record:
                sidecar.unlink(missing_ok=True)
        except OSError as exc:
            raise FetchError(f"cannot install {entry.name} into {dest.parent}: {exc}") from exc
        return dest


class _Unreachable(Exception):
    """The server could not be reached or the transfer broke off."""


def _url_name(url: str) -> str:
    return Path(urllib.parse.urlsplit(url).path).name or "download"


def _find_member(tar: tarfile.TarFile, name: str) -> tarfile.TarInfo | None:
    for member in tar.getmembers():
        if member.isfile() and (member.name == name or Path(member.name).name == name):
            return member
    return None


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise FetchError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _http_get(url: str, part: Path, size_hint: int, on_progress: Progress | None) -> None:
    """Download ``url`` into ``part``, continuing it with a Range request when it exists.

    urllib's default opener honours HTTP_PROXY / HTTPS_PROXY / NO_PROXY (ProxyHandler).
    """
    have = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": f"edge-app/{edge_app.__version__}"}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        try:
            # A fresh opener each time: its ProxyHandler reads the proxy variables now
            # (urlopen's shared opener keeps those of its first use).
            opener = urllib.request.build_opener()
            response = opener.open(request, timeout=DOWNLOAD_TIMEOUT_S)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:  # the part is already whole (or longer)
                exc.close()
                return
            raise
        with response:
            if have and response.status != 206:  # the server ignored the range: restart
                have = 0
            length = int(response.headers.get("Content-Length") or 0)
            total = have + length if length else size_hint
            done = have
            with open(part, "ab" if have else "wb") as out:
                if on_progress:
                    on_progress(done, total)
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    done += len(chunk)
                    if on_progress:
                        on_progress(done, total)
            if length and done < have + length:
                raise _Unreachable(f"connection closed after {done} of {total} bytes")
    except urllib.error.HTTPError as exc:
        raise _Unreachable(f"HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise _Unreachable(str(reason)) from exc


__all__ = [
    "BASE_URL_ENV",
    "DEFAULT_MODEL_NAME",
    "IMAGENET_LABELS",
    "MANIFEST_ENV",
    "MIRROR_ENV",
    "MODELS_DIR_ENV",
    "Entry",
    "base_url_for",
    "clean_stale_parts",
    "fetch",
    "how_to",
    "load_manifest",
    "manifest_path",
    "models_dir",
    "resolve_model",
    "sha256_of",
    "verified",
]
