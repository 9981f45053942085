"""Content hashes of files (sha256), for the image cache and module verification."""

from __future__ import annotations

import hashlib
import os

from mimir.errors import ModuleError

_CHUNK = 1 << 20


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_verified(path: str | os.PathLike[str], sha256: str, *, label: str, module: str, hint: str,
                  verify: bool = True) -> bytes:
    """The bytes of a module's file, checked against the sha256 that module.json records.

    ``label`` names the file in messages (``"member member_0.safetensors"``);
    a missing file or a hash mismatch raises :class:`ModuleError` naming
    ``module`` and saying what to do (``hint``).
    """
    try:
        data = open(path, "rb").read()  # noqa: SIM115 - closed when read
    except FileNotFoundError:
        raise ModuleError(f"{label} is missing", path=module, hint=hint) from None
    if verify:
        got = hashlib.sha256(data).hexdigest()
        if got != sha256:
            raise ModuleError(
                f"{label} fails verification: its sha256 starts {got[:16]}, module.json expects {sha256[:16]}",
                path=module,
                hint=hint,
            )
    return data
