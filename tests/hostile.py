"""Helpers to build hostile inputs and run mimir under a memory cap.

Not a conftest: test files import from here. Everything is built small, in
the test itself; where a regression could allocate gigabytes, the code runs
in a subprocess whose address space is capped with ``resource.setrlimit``,
so a failing test cannot take the machine down.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MiB = 1024 * 1024

#: Address-space cap of a capped subprocess that does not import torch.
LIGHT_CAP = 1536 * MiB
#: Address-space cap of one that imports torch (predict, batch): torch maps a lot of virtual memory.
TORCH_CAP = 6144 * MiB


@dataclass
class Capped:
    """Result of a capped subprocess run."""

    returncode: int
    stdout: str
    stderr: str
    #: peak resident memory of the child, bytes (ru_maxrss)
    peak_rss: int

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    env.update({"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "COLUMNS": "400"})
    env.update(extra or {})
    return env


#: Runs ``python -m MODULE ARGS`` under RLIMIT_AS and writes the process's own peak RSS (VmHWM of
#: its address space, which starts fresh at exec; ru_maxrss would include the RSS of this large test
#: process at fork time) to the file named by $MIMIR_TEST_PEAK_FILE when it exits.
_LAUNCH = """
import atexit, os, resource, runpy, sys
cap = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
def _peak():
    with open("/proc/self/status") as fh:
        kb = next((int(l.split()[1]) for l in fh if l.startswith("VmHWM:")), 0)
    with open(os.environ["MIMIR_TEST_PEAK_FILE"], "w") as out:
        out.write(str(kb * 1024))
atexit.register(_peak)
assert sys.argv[2] == "-m", "only python -m MODULE is supported"
sys.argv = [sys.argv[3], *sys.argv[4:]]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def run_capped(
    args: list[str], *, cap: int = LIGHT_CAP, timeout: float = 120, env: dict[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> Capped:
    """Run ``python <args>`` with RLIMIT_AS = ``cap`` bytes; return its output and peak RSS."""

    import tempfile
    import threading

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        peak_file = tempfile.NamedTemporaryFile(prefix="mimir-peak-", delete=False)
        peak_file.close()
        proc = subprocess.Popen(
            [sys.executable, "-c", _LAUNCH, str(cap), *args], stdout=out, stderr=err, text=True,
            env={**_env(env), "MIMIR_TEST_PEAK_FILE": peak_file.name}, cwd=cwd,
        )
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            proc.kill()

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    del usage  # ru_maxrss is not the child's own peak (see _LAUNCH)
    text = Path(peak_file.name).read_text().strip()
    os.unlink(peak_file.name)
    if timed_out.is_set():
        raise AssertionError(f"timed out after {timeout} s (a hang); stderr: {stderr[-2000:]}")
    assert text, f"the child did not report its peak memory (killed?); stderr: {stderr[-2000:]}"
    return Capped(proc.returncode, stdout, stderr, int(text))


def mimir_capped(*args: str, **kw) -> Capped:
    """``python -m mimir ARGS`` under a memory cap."""
    return run_capped(["-m", "mimir", *args], **kw)


# --------------------------------------------------------------------------- zips


def rewrite_zip(src: Path, dst: Path, edit: Callable[[str, bytes], bytes | None]) -> Path:
    """Copy a zip member by member; ``edit(name, data)`` returns new bytes or None to drop the member."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            data = edit(info.filename, zin.read(info))
            if data is not None:
                zout.writestr(info.filename, data)
    return dst


def edit_dicom(data: bytes, **attrs) -> bytes:
    """Set DICOM attributes (pydicom keywords) on one file; a value of None deletes the attribute.

    Raw strings are written as given (DS values such as ``"nan"`` or ``"0\\\\0"``).
    """
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    for key, value in attrs.items():
        if value is None:
            if key in ds:
                delattr(ds, key)
            continue
        elem = ds.data_element(key) if key in ds else None
        if elem is not None and isinstance(value, str) and elem.VR in ("DS", "IS"):
            from pydicom.dataelem import DataElement

            ds[elem.tag] = DataElement(elem.tag, elem.VR, value, validation_mode=0)  # type: ignore[call-arg]
        else:
            setattr(ds, key, value)
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def series_of(data: bytes) -> tuple[int, str]:
    """(SeriesNumber, SeriesDescription) of a DICOM file."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
    return int(ds.SeriesNumber), str(ds.SeriesDescription)


def zeros_member_zip(path: Path, member: str, size: int, *, extra: dict[str, bytes] | None = None) -> Path:
    """A zip holding ``member``: ``size`` zero bytes, deflated (a few kB per 10 MiB), streamed."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
        info = zipfile.ZipInfo(member)
        info.compress_type = zipfile.ZIP_DEFLATED
        with zf.open(info, "w", force_zip64=True) as fh:
            block = bytes(MiB)
            left = size
            while left > 0:
                fh.write(block[: min(left, MiB)])
                left -= MiB
    return path


def lie_about_size(path: Path, member: str, claimed: int) -> None:
    """Rewrite the central directory entry of ``member`` to claim ``claimed`` uncompressed bytes.

    Only for small (non-zip64) entries; the local header keeps the real size.
    """
    data = bytearray(path.read_bytes())
    sig = b"PK\x01\x02"
    at = 0
    name = member.encode()
    while True:
        at = data.find(sig, at)
        assert at >= 0, "member not found"
        name_len = int.from_bytes(data[at + 28 : at + 30], "little")
        if data[at + 46 : at + 46 + name_len] == name:
            data[at + 24 : at + 28] = claimed.to_bytes(4, "little")
            break
        at += 4
    path.write_bytes(bytes(data))


@dataclass
class RawMember:
    """One member of :func:`handmade_zip`; every field the directory and the local header share can differ."""

    name: str
    data: bytes
    method: int = zipfile.ZIP_DEFLATED
    #: general-purpose flags (0x08: sizes and CRC in a data descriptor after the data, zeros in the local header)
    flags: int = 0
    #: the name in the local header (default: ``name``); its length may differ from the directory's
    local_name: bytes | None = None
    local_extra: bytes = b""
    #: the CRC-32 both headers declare (default: the real one)
    crc: int | None = None
    #: the compressed bytes written (default: ``data`` raw-deflated, or as is when stored)
    compressed: bytes | None = None
    #: the uncompressed size both headers declare (default: ``len(data)``)
    size: int | None = None


def handmade_zip(path: Path, members: list[RawMember]) -> Path:
    """A zip written byte by byte (local headers, data, central directory, end record), for what zipfile won't write."""
    out = bytearray()
    central = bytearray()
    for m in members:
        if m.compressed is not None:
            comp = m.compressed
        elif m.method == zipfile.ZIP_DEFLATED:
            deflater = zlib.compressobj(6, zlib.DEFLATED, -15)
            comp = deflater.compress(m.data) + deflater.flush()
        else:
            comp = m.data
        crc = zlib.crc32(m.data) if m.crc is None else m.crc
        size = len(m.data) if m.size is None else m.size
        name = m.name.encode()
        local_name = name if m.local_name is None else m.local_name
        offset = len(out)
        descriptor = bool(m.flags & 0x08)
        local_sizes = (0, 0, 0) if descriptor else (crc, len(comp), size)
        out += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, m.flags, m.method, 0, 0x21, *local_sizes,
                           len(local_name), len(m.local_extra))
        out += local_name + m.local_extra + comp
        if descriptor:
            out += struct.pack("<4s3L", b"PK\x07\x08", crc, len(comp), size)
        central += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, m.flags, m.method, 0, 0x21, crc, len(comp), size,
                               len(name), 0, 0, 0, 0, 0, offset) + name
    start = len(out)
    out += central
    out += struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(members), len(members), len(central), start, 0)
    path.write_bytes(bytes(out))
    return path


def write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def die_in_child(*_args: object) -> None:
    """A child-process target that dies at once without a word (as one killed for memory would)."""
    os._exit(3)
