"""A module's files: loading the members' weights (verified) and writing modules atomically.

A module folder is written in a staging folder beside its destination and
renamed into place only when complete; the OOD reference is stored under a
content-derived name before module.json is replaced. torch and safetensors
are imported only by the functions that need them.
"""


from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mimir.errors import ModuleError
from mimir.models.module_format import (
    DEFAULT_PIPELINE,
    INTENDED_RESEARCH,
    MODULE_JSON,
    MemberSpec,
    ModuleSpec,
    TargetSpec,
    _intended_use,
    _reinstall_hint,
    _validate_target,
    valid_name,
)
from mimir.models.ood import OodReference, OodSpec, reference_bytes
from mimir.utils.hashing import file_sha256, read_verified

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

    from mimir.models.resnet import ResNet50


# --------------------------------------------------------------------------- weights


def load_state_dicts(spec: ModuleSpec, *, verify: bool = True) -> list[dict[str, Tensor]]:
    """Read every member's weights (CPU tensors), checking its sha256 first.

    Each file is read once: the hash is taken over the very bytes that are
    then parsed.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    out = []
    for m in spec.members:
        data = read_verified(spec.member_path(m), m.sha256, label=f"member {m.file}", module=spec.name,
                             hint=_reinstall_hint(spec), verify=verify)
        try:
            out.append(st_load(data))
        except (SafetensorError, Exception) as exc:
            raise ModuleError(f"member {m.file} is not a readable safetensors file ({exc})", path=spec.name) from None
    return out


def load_networks(spec: ModuleSpec, *, verify: bool = True) -> list[ResNet50]:
    """The members as ResNet50s in eval mode on the CPU (weights loaded strictly)."""
    from mimir.models.resnet import ResNet50, architecture_of

    nets = []
    for m, sd in zip(spec.members, load_state_dicts(spec, verify=verify)):
        width, outputs = architecture_of(sd)
        if width != spec.width or outputs != spec.num_outputs:
            raise ModuleError(
                f"member {m.file} is a width-{width} ResNet50 with {outputs} outputs, "
                f"module.json says width {spec.width} with {spec.num_outputs} outputs",
                path=spec.name,
            )
        net = ResNet50(num_outputs=outputs, width=width)
        try:
            net.load_state_dict(sd, strict=True)
        except RuntimeError as exc:
            raise ModuleError(f"member {m.file} does not fit a ResNet50: {str(exc).splitlines()[0]}", path=spec.name) from None
        nets.append(net.eval())
    return nets


# --------------------------------------------------------------------------- writing


@contextlib.contextmanager
def _staging_dir(dest: Path):
    """A fresh folder beside ``dest``; removed on failure."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".staging", dir=dest.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _ordinary_modes(folder: Path) -> None:
    """Give a staged folder and its files the modes plain ``mkdir``/``open`` would.

    ``mkdtemp`` makes the folder private; a module installed in a shared
    ``MIMIR_HOME`` must be readable by everyone the umask allows.
    """
    umask = os.umask(0)
    os.umask(umask)
    for path in [folder, *folder.rglob("*")]:
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def write_module(
    dest: str | os.PathLike[str],
    *,
    name: str,
    version: str,
    targets: Sequence[TargetSpec],
    state_dicts: Sequence[Mapping[str, Tensor]],
    description: str = "",
    intended_use: str = INTENDED_RESEARCH,
    intended_use_note: str = "",
    input_pipeline: str = DEFAULT_PIPELINE,
    source: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    ood_reference: OodReference | None = None,
    ood_fitted: Mapping[str, Any] | None = None,
) -> ModuleSpec:
    """Write a module folder at ``dest`` (atomically: all of it or nothing).

    ``state_dicts`` are ResNet50 state dicts (any width, all the same), with
    ``fc`` giving ``2 * len(targets)`` outputs. Members are saved as
    ``member_<i>.safetensors``; their sha256 go into module.json. An
    ``ood_reference`` (one entry per member) is saved as
    ``ood_reference.safetensors`` and recorded with ``ood_fitted`` as its provenance.
    """
    from safetensors.torch import save_file

    from mimir.models.resnet import architecture_of

    dest = Path(dest)
    if not valid_name(name):
        raise ModuleError(f"invalid module name {name!r}", hint="Use letters, digits, '.', '_' or '-'.")
    if not state_dicts:
        raise ModuleError("a module needs at least one member", path=name)
    intended_use, intended_use_note = _intended_use(intended_use, intended_use_note, name)
    archs = {architecture_of(sd) for sd in state_dicts}
    if len(archs) != 1:
        raise ModuleError(f"members differ in architecture: {sorted(archs)}", path=name)
    width, outputs = archs.pop()
    if outputs != 2 * len(targets):
        raise ModuleError(
            f"networks give {outputs} outputs, {len(targets)} targets need {2 * len(targets)}", path=name
        )
    for t in targets:
        _validate_target(t, name)
    if dest.exists() and not overwrite:
        raise ModuleError("already exists", path=str(dest), hint="Choose another folder or pass overwrite=True.")

    spec = ModuleSpec(
        name=name,
        version=str(version),
        targets=list(targets),
        description=description,
        intended_use=intended_use,
        intended_use_note=intended_use_note,
        width=width,
        input_pipeline=input_pipeline,
        source=dict(source or {}),
    )
    with _staging_dir(dest) as tmp:
        for i, sd in enumerate(state_dicts):
            fname = f"member_{i}.safetensors"
            tensors = {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}
            save_file(tensors, str(tmp / fname), metadata={"format": "pt", "module": name, "member": str(i)})
            spec.members.append(MemberSpec(file=fname, sha256=file_sha256(tmp / fname)))
        if ood_reference is not None:
            from mimir.models.ood import REFERENCE_FILE, feature_dim

            if ood_reference.size != len(state_dicts) * feature_dim(width):
                raise ModuleError(
                    f"OOD reference covers {ood_reference.size} features, the members give "
                    f"{len(state_dicts) * feature_dim(width)}",
                    path=name,
                )
            data = reference_bytes(ood_reference)
            (tmp / REFERENCE_FILE).write_bytes(data)
            spec.ood = OodSpec(
                file=REFERENCE_FILE,
                sha256=hashlib.sha256(data).hexdigest(),
                threshold=ood_reference.threshold,
                quantile=ood_reference.quantile,
                fitted=dict(ood_fitted or {}),
                feature_precision=ood_reference.feature_precision,
            )
        (tmp / MODULE_JSON).write_text(spec.dumps(), encoding="utf-8")
        _ordinary_modes(tmp)
        _fsync_tree(tmp)
        replace_dir(tmp, dest)
    spec.path = dest
    return spec


def set_reference(spec: ModuleSpec, ref: OodReference, *, fitted: Mapping[str, Any] | None = None) -> ModuleSpec:
    """Store ``ref`` in the module folder of ``spec`` and record it in module.json.

    The file is named after its content (``ood_reference-<sha256[:16]>.safetensors``),
    written before module.json is replaced (atomically), and any previous
    reference file is removed afterwards: an interrupted call leaves the module
    as it was. The members are not touched. Returns the updated spec.
    """
    import copy

    from mimir.models.ood import REFERENCE_FILE
    from mimir.utils.atomic import write_bytes, write_text

    if spec.path is None:
        raise ModuleError("module has no folder", path=spec.name)
    from mimir.models.ood import feature_dim

    if ref.size != len(spec.members) * feature_dim(spec.width):
        raise ModuleError(
            f"reference covers {ref.size} features, the module's {len(spec.members)} member(s) give "
            f"{len(spec.members) * feature_dim(spec.width)}",
            path=spec.name,
        )
    data = reference_bytes(ref)
    sha = hashlib.sha256(data).hexdigest()
    stem, suffix = REFERENCE_FILE.rsplit(".", 1)
    fname = f"{stem}-{sha[:16]}.{suffix}"
    write_bytes(spec.path / fname, data)
    new = copy.copy(spec)
    new.ood = OodSpec(file=fname, sha256=sha, threshold=ref.threshold, quantile=ref.quantile, fitted=dict(fitted or {}),
                      feature_precision=ref.feature_precision)
    write_text(spec.path / MODULE_JSON, new.dumps())
    old = spec.ood.file if spec.ood is not None else None
    if old is not None and old != fname:
        with contextlib.suppress(OSError):
            (spec.path / old).unlink()
    return new


def _fsync_tree(folder: Path) -> None:
    for p in folder.iterdir():
        if p.is_file():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())


def replace_dir(src: Path, dest: Path) -> None:
    """Move folder ``src`` to ``dest``, replacing any existing ``dest``.

    The new folder is complete before it is renamed into place; an old one is
    first renamed aside and removed only after the new one is in place (and
    put back if that fails).
    """
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}-{id(src) & 0xFFFF:x}")
        os.replace(dest, old)
    try:
        os.replace(src, dest)
    except BaseException:
        if old is not None:
            os.replace(old, dest)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
