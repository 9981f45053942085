"""Getting modules into the registry: downloads and local imports.

This is the only part of mimir that uses the network, and only when asked
(``mimir fetch-weights``). No telemetry.

Downloads stream into ``$MIMIR_HOME/downloads/<name>-<sha>.part``; an
interrupted download (dropped connection, or a previous run) is resumed with
an HTTP ``Range`` request; transient failures are retried with exponential
back-off; the finished file must match the manifest's size and sha256. Only
then is the archive unpacked into a staging folder, converted if it is in the
original MIMIR format, verified, and renamed into the registry. A failed or
corrupt download leaves the registry exactly as it was.

``MIMIR_WEIGHTS_MIRROR`` replaces the base of every URL (everything up to the
last ``/``): with ``MIMIR_WEIGHTS_MIRROR=https://intranet/mimir``,
``https://example.org/a/b/demo.zip`` is fetched from
``https://intranet/mimir/demo.zip``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from mimir.errors import DownloadError, MimirError, ModuleError, UsageError
from mimir.models.modules import ModuleSpec
from mimir.models.registry import (
    ManifestEntry,
    install_module,
    manifest_entry,
    parse_manifest,
    read_manifest,
    scan_modules,
)
from mimir.utils.hashing import file_sha256
from mimir.utils.paths import home_dir, modules_dir

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console

MIRROR_ENV = "MIMIR_WEIGHTS_MIRROR"
#: Retries after the first attempt, and the first back-off in seconds (doubles each time).
RETRIES = 4
BACKOFF_S = 1.0
TIMEOUT_S = 30.0
CHUNK = 1 << 16
#: Refuse archives that would unpack to more than this (zip bombs).
MAX_UNPACKED_BYTES = 32 << 30
USER_AGENT = "mimir-fetch-weights"


# --------------------------------------------------------------------------- URLs


def mirror_url(url: str) -> str:
    """``url`` with its base replaced by ``$MIMIR_WEIGHTS_MIRROR`` when that is set."""
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if not mirror:
        return url
    return mirror.rstrip("/") + "/" + url.rstrip("/").rsplit("/", 1)[-1]


def _is_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))


def _display(url: str) -> str:
    """A URL without credentials or query string, for messages."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"


# --------------------------------------------------------------------------- download


class _Retryable(Exception):
    pass


def download(
    url: str,
    dest: str | os.PathLike[str],
    *,
    sha256: str,
    size: int | None = None,
    retries: int | None = None,
    backoff: float | None = None,
    timeout: float | None = None,
    console: Console | None = None,
    progress: bool = True,
    label: str | None = None,
) -> Path:
    """Download ``url`` to ``dest`` and check its size and sha256.

    Data goes to ``dest + '.part'`` first; an existing part file is resumed
    with a ``Range`` request. On success the part file is renamed to ``dest``.
    A sha256 or size mismatch removes the part file and raises
    :class:`DownloadError`; so do HTTP errors other than transient ones
    (5xx, 408, 429), and running out of retries (the part file is then kept
    so that the next run resumes).
    """
    import requests

    retries = RETRIES if retries is None else retries
    backoff = BACKOFF_S if backoff is None else backoff
    timeout = TIMEOUT_S if timeout is None else timeout
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    shown = label or dest.name
    where = _display(url)
    session = requests.Session()
    session.headers["User-Agent"] = USER_AGENT
    bar = _Progress(console, shown, size, enabled=progress)
    last_reason = ""
    try:
        for attempt in range(retries + 1):
            if attempt:
                time.sleep(backoff * 2 ** (attempt - 1))
            have = part.stat().st_size if part.exists() else 0
            if size is not None and have > size:
                part.unlink()
                have = 0
            if size is not None and have == size:
                break
            headers = {"Range": f"bytes={have}-"} if have else {}
            try:
                with session.get(url, stream=True, timeout=timeout, headers=headers) as r:
                    if r.status_code == 416 and have:
                        # nothing more to send: the part file is complete (verified below)
                        break
                    if r.status_code in (408, 429) or r.status_code >= 500:
                        raise _Retryable(f"HTTP {r.status_code}")
                    if r.status_code >= 400:
                        raise DownloadError(
                            f"HTTP {r.status_code} {r.reason or ''}".strip() + f" for {where}",
                            hint="Check the manifest URL (or MIMIR_WEIGHTS_MIRROR).",
                        )
                    if have and r.status_code == 206 and _range_start(r.headers.get("Content-Range")) == have:
                        mode = "ab"
                    else:  # server ignored the Range (200), or sent an unexpected range: start over
                        mode, have = "wb", 0
                    total = size
                    if total is None and r.headers.get("Content-Length", "").isdigit():
                        total = have + int(r.headers["Content-Length"])
                    bar.start(total, have)
                    with open(part, mode) as fh:
                        for chunk in r.iter_content(CHUNK):
                            fh.write(chunk)
                            bar.advance(len(chunk))
                got = part.stat().st_size
                if size is not None and got < size:
                    raise _Retryable(f"connection closed after {got} of {size} bytes")
                break
            except (_Retryable, requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
                last_reason = _reason(exc)
                continue
            except requests.RequestException as exc:  # bad URL, too many redirects, ...
                raise DownloadError(f"cannot download {where} ({_reason(exc)})", path=shown) from None
            except OSError as exc:  # disk full, permissions
                raise DownloadError(f"cannot write {part} ({exc.strerror or exc})", path=shown) from None
        else:
            raise DownloadError(
                f"download failed after {retries + 1} attempts ({last_reason}) from {where}",
                path=shown,
                hint="The partial file is kept; run the command again to resume.",
            )
    finally:
        bar.stop()
        session.close()

    got_size = part.stat().st_size if part.exists() else 0
    if size is not None and got_size != size:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"size is {got_size} bytes, the manifest says {size}; the download was discarded",
            path=shown,
            hint="Try again; if it persists, the manifest or the mirror is out of date.",
        )
    digest = file_sha256(part)
    if digest != sha256.lower():
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"sha256 mismatch (got {digest[:12]}..., the manifest says {sha256[:12]}...); "
            "the download was discarded and nothing was installed",
            path=shown,
            hint="Try again; if it persists, the file on the server (or the mirror) is not the one the manifest lists.",
        )
    os.replace(part, dest)
    return dest


def _range_start(content_range: str | None) -> int | None:
    # "bytes 100-199/200"
    if not content_range or not content_range.startswith("bytes "):
        return None
    try:
        return int(content_range[6:].split("-", 1)[0])
    except ValueError:
        return None


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "IncompleteRead" in text or "Connection broken" in text:
        return "connection dropped"
    return text[:160]


class _Progress:
    """A Rich download bar on stderr (quiet when disabled)."""

    def __init__(self, console: Console | None, label: str, total: int | None, enabled: bool) -> None:
        self.enabled = enabled
        self.label = label
        self._console = console
        self._progress: Any = None
        self._task: Any = None

    def start(self, total: int | None, completed: int) -> None:
        if not self.enabled:
            return
        if self._progress is None:
            from rich.console import Console as RichConsole

            console = self._console or RichConsole(stderr=True)
            if not console.is_terminal:  # no bar in logs and pipes
                self.enabled = False
                return
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=console,
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(self.label, total=total, completed=completed)
        else:
            self._progress.update(self._task, total=total, completed=completed)

    def advance(self, n: int) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def downloads_dir() -> Path:
    """Where partial and finished downloads wait before being installed."""
    return home_dir() / "downloads"


# --------------------------------------------------------------------------- archives


def _safe_extract(zip_path: Path, dest: Path, shown: str) -> None:
    """Unpack ``zip_path`` into ``dest``, refusing absolute paths, ``..`` and zip bombs."""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            infos = zf.infolist()
            total = sum(i.file_size for i in infos)
            if total > MAX_UNPACKED_BYTES:
                raise ModuleError(f"would unpack to {total} bytes; refused", path=shown)
            for info in infos:
                pp = PurePosixPath(info.filename.replace("\\", "/"))
                if pp.is_absolute() or ".." in pp.parts or (pp.parts and ":" in pp.parts[0]):
                    raise ModuleError(f"holds an unsafe path {info.filename!r}; refused", path=shown)
                # symlinks (unix mode in the high bits) are not extracted
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    continue
                zf.extract(info, dest)
    except zipfile.BadZipFile as exc:
        raise ModuleError(f"is not a readable zip archive ({exc})", path=shown) from None
    except (OSError, EOFError, zipfile.LargeZipFile) as exc:
        raise ModuleError(f"cannot be unpacked ({exc})", path=shown) from None


def import_module(
    path: str | os.PathLike[str],
    *,
    name: str | None = None,
    version: str | None = None,
    force: bool = False,
    source_info: dict[str, Any] | None = None,
) -> ModuleSpec:
    """Install a module from a local zip archive or folder (ours or the original MIMIR format).

    A module in the original format is converted; the sha256 of its original
    files (and of the archive) is recorded in module.json.
    """
    p = Path(path).expanduser()
    shown = os.fspath(path)
    if not p.exists():
        raise UsageError("not found", path=shown, hint="Give a module zip archive or folder.")
    if p.is_dir():
        return install_module(p, name=name, version=version, force=force, source_info=source_info)
    if not zipfile.is_zipfile(p):
        raise ModuleError("is neither a folder nor a zip archive", path=shown)
    info = dict(source_info or {})
    info.setdefault("archive", p.name)
    info.setdefault("archive_sha256", file_sha256(p))
    root = modules_dir()
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".unpack-", dir=root))
    try:
        unpacked = work / "archive"
        unpacked.mkdir()
        _safe_extract(p, unpacked, shown)
        # an archive with the files at its top level: name it after the archive
        from mimir.models.modules import find_module_root

        module_root = find_module_root(unpacked)
        if module_root == unpacked:
            renamed = work / (name or p.stem)
            unpacked.rename(renamed)
            module_root = renamed
        return install_module(module_root, name=name, version=version, force=force, source_info=info)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------- fetch-weights


@dataclass
class FetchOutcome:
    """What happened to one requested module."""

    name: str
    #: "installed", "present" (already installed), "manual" (asked for, but needs a browser),
    #: "manual-info" (not asked for by name, needs a browser), "failed"
    status: str
    message: str = ""
    spec: ModuleSpec | None = None

    @property
    def ok(self) -> bool:
        return self.status not in ("failed", "manual")


@dataclass
class FetchReport:
    outcomes: list[FetchOutcome] = field(default_factory=list)

    @property
    def failed(self) -> list[FetchOutcome]:
        return [o for o in self.outcomes if not o.ok]


def load_manifest(manifest: str | os.PathLike[str] | None = None, *, offline: bool = False) -> list[ManifestEntry]:
    """The packaged manifest, a local manifest file, or one fetched from a URL."""
    if manifest is None or not _is_url(os.fspath(manifest)):
        return read_manifest(manifest)
    url = mirror_url(os.fspath(manifest))
    if offline:
        raise UsageError("--offline forbids reading a manifest from a URL", path=_display(url))
    import requests

    try:
        r = requests.get(url, timeout=TIMEOUT_S, headers={"User-Agent": USER_AGENT})
    except requests.RequestException as exc:
        raise DownloadError(f"cannot read manifest ({_reason(exc)})", path=_display(url)) from None
    if r.status_code != 200:
        raise DownloadError(f"cannot read manifest (HTTP {r.status_code})", path=_display(url))
    from mimir.utils.limits import MAX_JSON_BYTES, loads_guarded, quote

    if len(r.content) > MAX_JSON_BYTES.value():
        raise DownloadError(f"manifest is larger than {MAX_JSON_BYTES.value()} bytes", path=_display(url))
    try:
        data = loads_guarded(r.content.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise DownloadError(f"manifest is not valid JSON ({quote(str(exc), 120)})", path=_display(url)) from None
    return parse_manifest(data, where=_display(url))


def manual_instructions(entry: ManifestEntry) -> str:
    """One line telling the user how to get a module that needs a browser."""
    text = f"{entry.name} cannot be downloaded automatically"
    if entry.page:
        text += f": open {entry.page} in a browser"
    if entry.instructions:
        text += ("; " if entry.page else ": ") + entry.instructions.strip().rstrip(".")
    return " ".join(f"{text}.".split())


def fetch_weights(
    names: Sequence[str] = (),
    *,
    manifest: str | os.PathLike[str] | None = None,
    source: Sequence[str | os.PathLike[str]] | str | os.PathLike[str] | None = None,
    offline: bool = False,
    force: bool = False,
    console: Console | None = None,
    progress: bool = True,
    retries: int | None = None,
    backoff: float | None = None,
    on_outcome: Callable[[FetchOutcome], None] | None = None,
) -> FetchReport:
    """Install modules: from local archives/folders (``source``) or by name from the manifest.

    - With ``source``: each path is imported (a single name in ``names`` sets
      the installed name). No network.
    - Otherwise each name in ``names`` (default: every manifest entry) is
      downloaded, verified and installed; entries that need a manual download
      get an outcome with instructions. Already installed modules of the same
      version are left alone unless ``force``.
    - ``offline``: never touch the network; a module that would need a
      download fails with a message.

    Errors about one module become a ``failed`` outcome; errors that stop
    everything (bad manifest, bad options) raise.
    """
    report = FetchReport()

    def add(o: FetchOutcome) -> None:
        report.outcomes.append(o)
        if on_outcome is not None:
            on_outcome(o)

    if source is not None and not isinstance(source, (list, tuple)):
        source = [source]
    if source:
        if len(names) > 1 or (names and len(source) > 1):
            raise UsageError("with --from, give at most one module name (the name to install it under)")
        for src in source:
            shown = os.fspath(src)
            try:
                spec = import_module(src, name=names[0] if names else None, force=force)
            except MimirError as exc:
                add(FetchOutcome(name=shown, status="failed", message=str(exc)))
            else:
                add(FetchOutcome(name=spec.name, status="installed", message=_installed_line(spec, shown), spec=spec))
        return report

    entries = load_manifest(manifest, offline=offline)
    installed = {s.name: s for s in scan_modules().modules}
    explicit = bool(names)
    wanted = list(names) if explicit else [e.name for e in entries]
    for wanted_name in wanted:
        entry = manifest_entry(wanted_name, entries)
        have = installed.get(wanted_name)
        if entry is None:
            if have is not None and not force:
                add(FetchOutcome(wanted_name, "present", f"{wanted_name} {have.version} is installed (not in the manifest)", have))
            else:
                known = ", ".join(e.name for e in entries) or "none"
                add(FetchOutcome(wanted_name, "failed", f"{wanted_name}: not in the weights manifest. Known modules: {known}."))
            continue
        if have is not None and have.version == entry.version and not force:
            add(FetchOutcome(wanted_name, "present", f"{wanted_name} {have.version} is already installed", have))
            continue
        if not entry.downloadable:
            status = "manual" if explicit else "manual-info"
            add(FetchOutcome(wanted_name, status, manual_instructions(entry)))
            continue
        if offline:
            add(
                FetchOutcome(
                    wanted_name,
                    "failed",
                    f"{wanted_name}: not installed, and --offline forbids downloading it. "
                    f"Copy the archive here and use: mimir fetch-weights --from ARCHIVE",
                )
            )
            continue
        try:
            spec = _download_and_install(entry, force=force or have is not None, console=console,
                                         progress=progress, retries=retries, backoff=backoff)
        except MimirError as exc:
            add(FetchOutcome(wanted_name, "failed", str(exc)))
        else:
            add(FetchOutcome(wanted_name, "installed", _installed_line(spec, _display(mirror_url(entry.url or ""))), spec))
    return report


def _installed_line(spec: ModuleSpec, origin: str) -> str:
    return (
        f"installed {spec.name} {spec.version} ({spec.num_targets} targets, "
        f"{len(spec.members)} member{'s' if len(spec.members) != 1 else ''}) from {origin}"
    )


def _download_and_install(
    entry: ManifestEntry,
    *,
    force: bool,
    console: Console | None,
    progress: bool,
    retries: int | None,
    backoff: float | None,
) -> ModuleSpec:
    assert entry.url is not None and entry.sha256 is not None
    url = mirror_url(entry.url)
    archive = downloads_dir() / f"{entry.name}-{entry.sha256[:16]}.zip"
    download(
        url,
        archive,
        sha256=entry.sha256,
        size=entry.size,
        console=console,
        progress=progress,
        label=f"{entry.name} {entry.version}",
        retries=retries,
        backoff=backoff,
    )
    try:
        return import_module(
            archive,
            name=entry.name,
            version=entry.version,
            force=force,
            source_info={"url": entry.url, "archive_sha256": entry.sha256},
        )
    finally:
        archive.unlink(missing_ok=True)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
