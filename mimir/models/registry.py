"""The module registry: installed modules, built-in modules, the weights manifest.

Modules live in two places, searched in this order:

1. installed modules: ``mimir.utils.paths.modules_dir()/<name>/`` (under
   ``$MIMIR_HOME``, default the platform's user data dir);
2. built-in modules shipped inside the package: ``mimir/data/modules/<name>/``
   (the small demo module; listed as installed without any download).

An installed module hides a built-in one of the same name. Folders whose
names start with a dot are staging or leftovers of an interrupted install and
are ignored.

The weights manifest (``weights_manifest.json``, shipped as
``mimir/data/weights_manifest.json``) lists the modules that can be fetched:
either a ``url`` of a zip archive with its ``sha256`` and ``size``, or (for the
published MIMIR modules, which the authors distribute through a web folder that
needs a browser) a ``page`` and manual-download ``instructions``.

Nothing here touches the network.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from mimir.errors import MimirError, ModuleError, UsageError
from mimir.models.modules import (
    ModuleSpec,
    convert_original,
    find_module_root,
    is_module_folder,
    is_original_format,
    check_members,
    read_module,
    replace_dir,
    valid_name,
    verify_module,
)
from mimir.utils.limits import loads_guarded, quote
from mimir.utils.paths import modules_dir

MANIFEST_FILE = "weights_manifest.json"


def builtin_modules_dir() -> Path:
    """Folder of the modules shipped inside the package (may not exist)."""
    return Path(str(resources.files("mimir").joinpath("data", "modules")))


def search_path() -> list[tuple[Path, bool]]:
    """(folder, is_builtin) in search order."""
    return [(modules_dir(), False), (builtin_modules_dir(), True)]


@dataclass
class ScanResult:
    """Modules found, and one line per folder that could not be read."""

    modules: list[ModuleSpec] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def scan_modules() -> ScanResult:
    """Every usable module on the search path (no hashing: that happens at load time)."""
    result = ScanResult()
    seen: set[str] = set()
    for root, builtin in search_path():
        if not root.is_dir():
            continue
        for folder in sorted(root.iterdir()):
            if not folder.is_dir() or folder.name.startswith((".", "_")):
                continue
            try:
                spec = read_module(folder)
            except ModuleError as exc:
                result.problems.append(str(exc))
                continue
            if spec.name != folder.name:
                result.problems.append(
                    f"{folder.name}: module.json names the module {spec.name!r}; the folder must have the same name"
                )
                continue
            if spec.name in seen:
                continue  # hidden by an installed module of the same name
            spec.builtin = builtin
            seen.add(spec.name)
            result.modules.append(spec)
    return result


def installed_modules() -> list[ModuleSpec]:
    """Installed and built-in modules, by name (installed first)."""
    return scan_modules().modules


def get_module(name_or_path: str | os.PathLike[str]) -> ModuleSpec:
    """A module by registry name, or by the path of a module folder.

    Raises :class:`ModuleError` naming the installed modules when not found.
    """
    text = os.fspath(name_or_path)
    p = Path(text).expanduser()
    if (os.sep in text or "/" in text or text.startswith(".")) and p.is_dir():
        if is_module_folder(p):
            return read_module(p)
        if is_original_format(p):
            raise ModuleError(
                "is a module in the original MIMIR format",
                path=text,
                hint=f"Import it first: mimir fetch-weights --from {text}",
            )
        raise ModuleError("is not a module folder (no module.json)", path=text)
    scan = scan_modules()
    for spec in scan.modules:
        if spec.name == text:
            return spec
    for problem in scan.problems:
        if problem.startswith(f"{text}:") or problem.startswith(f"{text}/"):
            raise ModuleError(problem)
    if p.is_dir() and is_module_folder(p):  # a module folder in the current directory
        return read_module(p)
    names = ", ".join(s.name for s in scan.modules) or "none"
    hint = install_hint(text) or f"Installed modules: {names}."
    raise ModuleError("no such module is installed", path=text, hint=hint)


def install_hint(name: str) -> str | None:
    """One line saying how to install the manifest's module ``name``; None when the manifest lacks it.

    A module with a download address installs with ``mimir fetch-weights NAME``;
    one that needs a browser (the published MIMIR modules) is downloaded from
    its page first, then installed from the file with ``--from``.
    """
    entry = manifest_entry(name, _safe_manifest())
    if entry is None:
        return None
    if entry.downloadable:
        return f"Install it with: mimir fetch-weights {name}"
    where = f" ({entry.page})" if entry.page else " (mimir fetch-weights --list says where)"
    return f"Download it in a browser{where}, then install it with: mimir fetch-weights {name} --from FILE.zip"


def _safe_manifest() -> list[ManifestEntry]:
    try:
        return read_manifest()
    except MimirManifestError:
        return []


# --------------------------------------------------------------------------- installing


def install_module(
    source: str | os.PathLike[str],
    *,
    name: str | None = None,
    version: str | None = None,
    force: bool = False,
    source_info: Mapping[str, Any] | None = None,
) -> ModuleSpec:
    """Install a module folder (ours or the original MIMIR layout) into the registry.

    The module is copied (or converted) into a staging folder inside the
    registry, its member hashes are verified, and only then is it renamed into
    place: a failure at any point leaves the registry as it was.

    Parameters
    ----------
    source:
        A module folder, or a folder holding exactly one module folder.
    name:
        Install under this name (default: the module's own name; for the
        original format, the folder's name).
    version:
        Version recorded for a converted original module (default: the
        manifest's version for that name, else ``"1.0"``). Ignored for
        modules in our format, which carry their own.
    force:
        Replace an installed module of the same name (otherwise an error).
    source_info:
        Extra provenance merged into ``source`` of a converted module.
    """
    root = find_module_root(Path(source))
    dest_root = modules_dir()
    try:
        dest_root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".install-", dir=dest_root))
    except OSError as exc:
        raise UsageError(
            f"cannot write the module registry ({exc.strerror or exc})",
            path=str(dest_root),
            hint="Set MIMIR_HOME to a folder you can write to.",
        ) from None
    try:
        if is_module_folder(root):
            spec = read_module(root)
            if version is not None and version != spec.version:
                raise ModuleError(
                    f"holds version {spec.version}, expected {version}",
                    path=spec.name,
                    hint="The archive does not match the manifest entry.",
                )
            verify_module(spec)
            target_name = name or spec.name
            _check_name(target_name)
            _refuse_existing(target_name, force)
            out = staging / target_name
            out.mkdir()
            _copy_files(spec, out)
            if target_name != spec.name:
                spec.name = target_name
                (out / "module.json").write_text(spec.dumps(), encoding="utf-8")
            else:
                shutil.copy2(root / "module.json", out / "module.json")
        else:
            target_name = name or root.name
            _check_name(target_name)
            _refuse_existing(target_name, force)
            if version is None:
                version = next((e.version for e in _safe_manifest() if e.name == target_name), "1.0")
            out = staging / target_name
            spec = convert_original(root, out, name=target_name, version=version)
            if source_info:
                spec.source.update(source_info)
                (out / "module.json").write_text(spec.dumps(), encoding="utf-8")
        installed = read_module(out)
        verify_module(installed)
        check_members(installed)
        final = dest_root / target_name
        replace_dir(out, final)
    except OSError as exc:
        raise ModuleError(
            f"cannot be installed ({exc.strerror or exc}); the registry is unchanged",
            path=str(source),
            hint="Free space or fix the permissions of MIMIR_HOME, then try again.",
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    spec = read_module(final)
    return spec


def _copy_files(spec: ModuleSpec, out: Path) -> None:
    """Copy a module's member files and OOD reference (byte for byte) from its folder into ``out``."""
    for m in spec.members:
        shutil.copy2(spec.member_path(m), out / m.file)
    if spec.ood is not None and spec.path is not None:
        shutil.copy2(spec.path / spec.ood.file, out / spec.ood.file)


def install_derived(spec: ModuleSpec, parent: ModuleSpec, *, force: bool = False) -> ModuleSpec:
    """Install ``spec`` (a new module.json) with the member and OOD files of ``parent``, copied unchanged.

    Used by ``mimir calibrate``: the derived module differs from its parent in
    module.json only, so its members hash as the parent's. The parent is
    verified first; the module is staged in the registry and renamed into
    place only when complete (a failure leaves the registry as it was).
    """
    _check_name(spec.name)
    if [m.to_json() for m in spec.members] != [m.to_json() for m in parent.members]:
        raise ModuleError("a derived module must keep its parent's members", path=spec.name)
    if spec.name == parent.name:
        raise UsageError(f"the derived module needs a name of its own, not {parent.name!r}",
                         hint="Choose another name with -o.")
    _refuse_existing(spec.name, force)
    verify_module(parent)
    dest_root = modules_dir()
    try:
        dest_root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".install-", dir=dest_root))
    except OSError as exc:
        raise UsageError(f"cannot write the module registry ({exc.strerror or exc})", path=str(dest_root),
                         hint="Set MIMIR_HOME to a folder you can write to.") from None
    try:
        out = staging / spec.name
        out.mkdir()
        _copy_files(parent, out)
        (out / "module.json").write_text(spec.dumps(), encoding="utf-8")
        installed = read_module(out)
        verify_module(installed)
        check_members(installed)
        final = dest_root / spec.name
        replace_dir(out, final)
    except OSError as exc:
        raise ModuleError(f"cannot be installed ({exc.strerror or exc}); the registry is unchanged", path=spec.name,
                          hint="Free space or fix the permissions of MIMIR_HOME, then try again.") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return read_module(final)


def _check_name(name: str) -> None:
    if not valid_name(name):
        raise UsageError(f"invalid module name {name!r}", hint="Use letters, digits, '.', '_' or '-'.")


def _refuse_existing(name: str, force: bool) -> None:
    if not force and (modules_dir() / name).exists():
        raise ModuleError(
            "is already installed", path=name, hint="Pass --force to replace it."
        )


def remove_module(name: str) -> None:
    """Uninstall a module (built-in modules cannot be removed)."""
    folder = modules_dir() / name
    if not valid_name(name) or not folder.is_dir():
        raise ModuleError("no such module is installed", path=name)
    aside = folder.with_name(f".{name}.removing-{os.getpid()}")
    os.replace(folder, aside)
    shutil.rmtree(aside, ignore_errors=True)


# --------------------------------------------------------------------------- manifest


class MimirManifestError(ModuleError):
    """The weights manifest is malformed."""


@dataclass
class ManifestEntry:
    """One fetchable module."""

    name: str
    version: str
    targets: list[str] = field(default_factory=list)
    description: str = ""
    #: download of a zip archive holding one module folder (ours or the original format)
    url: str | None = None
    sha256: str | None = None
    size: int | None = None
    #: manual download (the published MIMIR modules)
    page: str | None = None
    instructions: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def downloadable(self) -> bool:
        return self.url is not None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "version": self.version, "description": self.description}
        if self.url:
            d.update(url=self.url, sha256=self.sha256, size=self.size)
        if self.page:
            d.update(page=self.page, instructions=self.instructions)
        d["targets"] = list(self.targets)
        d.update(self.extra)
        return d


_KNOWN_KEYS = {"name", "version", "targets", "description", "url", "sha256", "size", "page", "instructions"}


def parse_manifest(data: Any, *, where: str = MANIFEST_FILE) -> list[ManifestEntry]:
    """Validate a parsed manifest: a list of entries (or ``{"modules": [...]}``)."""
    if isinstance(data, dict) and "modules" in data:
        data = data["modules"]
    if not isinstance(data, list):
        raise MimirManifestError("must be a JSON list of modules", path=where)
    out = []
    for i, e in enumerate(data):
        if not isinstance(e, dict):
            raise MimirManifestError(f"entry {i} is not an object", path=where)
        name, version = e.get("name"), e.get("version")
        if not isinstance(name, str) or not valid_name(name):
            raise MimirManifestError(f"entry {i}: invalid name {name!r}", path=where)
        if not isinstance(version, str) or not version:
            raise MimirManifestError(f"{name}: version missing", path=where)
        url = e.get("url")
        if url is not None:
            sha, size = e.get("sha256"), e.get("size")
            if not isinstance(url, str) or not url:
                raise MimirManifestError(f"{name}: invalid url", path=where)
            if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha.lower())):
                raise MimirManifestError(f"{name}: a url needs a sha256 (64 hex digits)", path=where)
            if size is not None and (not isinstance(size, int) or size < 0):
                raise MimirManifestError(f"{name}: size must be a non-negative integer", path=where)
            sha = sha.lower()
        else:
            sha, size = None, None
            if not e.get("page") and not e.get("instructions"):
                raise MimirManifestError(f"{name}: needs either a url or a page with instructions", path=where)
        targets = e.get("targets") or []
        if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
            raise MimirManifestError(f"{name}: targets must be a list of names", path=where)
        out.append(
            ManifestEntry(
                name=name,
                version=version,
                targets=list(targets),
                description=str(e.get("description", "")),
                url=url,
                sha256=sha,
                size=size,
                page=e.get("page"),
                instructions=e.get("instructions"),
                extra={k: v for k, v in e.items() if k not in _KNOWN_KEYS},
            )
        )
    names = [e.name for e in out]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise MimirManifestError(f"duplicate module names: {', '.join(sorted(dup))}", path=where)
    return out


def read_manifest(path: str | os.PathLike[str] | None = None) -> list[ManifestEntry]:
    """The packaged manifest, or a local manifest file (URLs are read by :mod:`mimir.models.fetch`)."""
    if path is None:
        where = MANIFEST_FILE
        try:
            text = resources.files("mimir").joinpath("data", MANIFEST_FILE).read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
    else:
        where = os.fspath(path)
        try:
            _check_json_file(Path(path), where)
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UsageError("manifest not found", path=where) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read manifest ({exc})", path=where) from None
    try:
        data = loads_guarded(text)
    except ValueError as exc:
        raise MimirManifestError(f"is not valid JSON ({quote(str(exc), 120)})", path=where) from None
    return parse_manifest(data, where=where)


def _check_json_file(path: Path, where: str) -> None:
    """A manifest must be a regular file within ``MIMIR_MAX_JSON_BYTES`` (checked before reading)."""
    from mimir.utils.limits import MAX_JSON_BYTES, check_regular_file

    if not path.exists() and not path.is_symlink():
        raise FileNotFoundError(where)
    try:
        st = check_regular_file(path, "manifest")
    except MimirError as exc:
        raise UsageError(exc.message, path=where, hint=exc.hint) from None
    if st.st_size > MAX_JSON_BYTES.value():
        raise UsageError(
            f"is {st.st_size} bytes, more than a manifest can be (limit {MAX_JSON_BYTES.env})", path=where
        )


def manifest_entry(name: str, entries: Sequence[ManifestEntry]) -> ManifestEntry | None:
    return next((e for e in entries if e.name == name), None)
