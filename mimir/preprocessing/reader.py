"""Read the water and fat signal slices of a UK Biobank field-20201 DICOM zip.

The zip is read in memory, member by member; nothing is extracted to disk.
The manifest (``manifest.cvs`` or ``manifest.csv``) is used only as a hint
to skip the in-phase and opposed-phase slices without decompressing them;
without a usable manifest each member's SeriesDescription is peeked from its
first few kilobytes. Every slice that is kept is fully parsed, so a wrong
manifest is detected (and then ignored) rather than trusted.

Spec: ``preprocessing-spec.md`` section 1.
"""

from __future__ import annotations

import io
import math
import os
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mimir.errors import (
    InputError,
    MissingSeriesError,
    NoDicomError,
    NotAZipError,
    TruncatedZipError,
)
from mimir.utils.install import extra_hint
from mimir.utils.limits import (
    MAX_MANIFEST_BYTES,
    MAX_MEMBER_BYTES,
    MAX_ZIP_BYTES,
    MAX_ZIP_MEMBERS,
    Limit,
    LimitError,
    limit_hint,
    open_regular,
    quote,
)

if TYPE_CHECKING:  # pydicom costs ~0.15 s to import; only the fallback parser needs it (imported there)
    import pydicom

#: Tags read from every slice (group, element).
_SERIES_DESCRIPTION = (0x0008, 0x103E)

#: Bytes of a member decompressed to find its SeriesDescription without a manifest.
_PEEK_BYTES = 4096

_EXPLICIT_LE = "1.2.840.10008.1.2.1"
_IMPLICIT_LE = "1.2.840.10008.1.2"
_DEFLATED_LE = "1.2.840.10008.1.2.1.99"
#: Where a file's transfer syntax can be (the file meta, at its start), for the deflate guard.
_META_SCAN_BYTES = 4096
_UNCOMPRESSED_SYNTAXES = {
    "1.2.840.10008.1.2",  # implicit VR little endian
    "1.2.840.10008.1.2.1",  # explicit VR little endian
}


@dataclass(frozen=True)
class SignalSlice:
    """One 2-D water or fat slice.

    Attributes
    ----------
    pixels:
        (Rows, Columns) float32, rescaled if the file has RescaleSlope/Intercept.
    series_number:
        SeriesNumber (0020,0011).
    description:
        SeriesDescription (0008,103E), e.g. ``Dixon_BH_17s_W``.
    position:
        ImagePositionPatient (0020,0032) as float32, mm, shape (3,).
    pixel_spacing:
        PixelSpacing (0028,0030) as float32, mm, shape (2,) (row, column).
    series_time:
        SeriesTime (0008,0031) as written, ``HHMMSS.ffffff``.
    """

    pixels: np.ndarray
    series_number: int
    description: str
    position: np.ndarray
    pixel_spacing: np.ndarray
    series_time: str


#: SeriesDescription markers of the four Dixon contrasts (``Dixon_BH_17s_W`` and so on).
DIXON_MARKERS: dict[str, str] = {"water": "_W", "fat": "_F", "in": "_in", "opp": "_opp"}
#: The contrasts the image is made from, and all that is read by default.
SIGNAL_CONTRASTS: tuple[str, ...] = ("water", "fat")


def is_signal_description(description: str, contrasts: tuple[str, ...] = SIGNAL_CONTRASTS) -> bool:
    """True for a series of one of ``contrasts`` (default: water ``_W`` and fat ``_F``, the image's)."""
    return any(DIXON_MARKERS[c] in description for c in contrasts)


def read_signal_slices(
    path: str | os.PathLike[str], contrasts: tuple[str, ...] = SIGNAL_CONTRASTS
) -> list[SignalSlice]:
    """Read every water and fat slice of a subject zip, in zip member order.

    ``contrasts`` (keys of :data:`DIXON_MARKERS`) widens the read to the
    in-phase and opposed-phase series too, in the same single pass over the
    zip; the default reads and decodes only what the image needs.

    Raises
    ------
    InputError
        (and subclasses) with a one-line message naming ``path`` when the file
        is missing, not a zip, truncated, holds no DICOM, or holds no water
        and fat series.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError("is a folder, not a subject zip", path, "Pass the zip file itself.")
    fh, size = open_regular(path, "subject zip")
    try:
        budget = _check_zip_size(fh, size, path)
        try:
            zf = zipfile.ZipFile(fh)
        except zipfile.BadZipFile:
            raise _bad_zip_error(path) from None
        except (OSError, EOFError, ValueError, struct.error, NotImplementedError) as exc:
            raise TruncatedZipError(
                f"has a damaged zip directory ({quote(str(exc))})", path, "Download the file again."
            ) from None
        return _read_zip(zf, path, budget, contrasts)
    finally:
        fh.close()


def _read_zip(
    zf: zipfile.ZipFile, path: Path, budget: _Budget, contrasts: tuple[str, ...] = SIGNAL_CONTRASTS
) -> list[SignalSlice]:
    with zf:
        members = [info for info in zf.infolist() if not info.is_dir()]
        manifest = next((m for m in members if "manifest" in m.filename.lower()), None)
        candidates = [m for m in members if m is not manifest]
        if not candidates:
            raise NoDicomError("holds no DICOM files", path, "Is this a field-20201 zip?")
        hint = _manifest_hint(zf, manifest, candidates, path, contrasts) if manifest is not None else None
        if hint is not None:
            chosen = [m for m in candidates if hint.get(m.filename, True)]
            slices, skipped = _read_members(zf, chosen, path, budget, contrasts)
            if slices and not skipped:
                return slices
            # The manifest named at least one file wrongly: ignore it entirely.
        chosen = [m for m in candidates if _peek_is_signal(zf, m, path, contrasts)]
        slices, _ = _read_members(zf, chosen, path, budget, contrasts)
    if not slices:
        raise MissingSeriesError(
            "holds no Dixon water (_W) or fat (_F) series", path, "Is this a field-20201 zip?"
        )
    return slices


class _Budget:
    """Uncompressed bytes still allowed from one zip (:data:`MAX_ZIP_BYTES` in all)."""

    def __init__(self) -> None:
        self.limit = MAX_ZIP_BYTES.value()
        self.left = self.limit

    def take(self, n: int, path: Path) -> None:
        self.left -= n
        if self.left < 0:
            raise LimitError(
                f"inflates to more than {_size(self.limit)} in all (limit {MAX_ZIP_BYTES.env})",
                path,
                limit_hint(MAX_ZIP_BYTES),
            )


def _size(n: int) -> str:
    return f"{n / (1024 * 1024):.0f} MiB" if n >= 1024 * 1024 else f"{n} bytes"


_EOCD = b"PK\x05\x06"
_EOCD64_LOCATOR = b"PK\x06\x07"
_EOCD64 = b"PK\x06\x06"


def _check_zip_size(fh: io.BufferedReader, size: int, path: Path) -> _Budget:
    """Check the file size and the member count of the zip directory before zipfile parses it.

    The end-of-central-directory record (and its zip64 variant) gives the
    number of members and the directory's size; both are bounded so that
    listing the members cannot take more memory than a real zip needs.
    """
    budget = _Budget()
    if size > budget.limit:
        raise LimitError(
            f"is {_size(size)}, more than {_size(budget.limit)} (limit {MAX_ZIP_BYTES.env})",
            path,
            limit_hint(MAX_ZIP_BYTES, size),
        )
    max_members = MAX_ZIP_MEMBERS.value()
    tail_len = min(size, 65536 + 22)
    fh.seek(size - tail_len)
    tail = fh.read(tail_len)
    at = tail.rfind(_EOCD)
    if at < 0 or len(tail) < at + 22:
        fh.seek(0)
        return budget  # zipfile decides (not a zip, truncated)
    entries, cd_size = struct.unpack_from("<HI", tail, at + 10)
    if entries == 0xFFFF or cd_size == 0xFFFFFFFF:
        loc = at - 20
        if loc >= 0 and tail[loc : loc + 4] == _EOCD64_LOCATOR:
            (offset,) = struct.unpack_from("<Q", tail, loc + 8)
            if 0 <= offset <= size - 56:
                fh.seek(offset)
                rec = fh.read(56)
                if rec[:4] == _EOCD64:
                    entries, cd_size = struct.unpack_from("<QQ", rec, 32)
    if entries > max_members or cd_size > max_members * 1024:
        raise LimitError(
            f"lists {entries} members in a {_size(cd_size)} directory, more than {max_members} "
            f"(limit {MAX_ZIP_MEMBERS.env})",
            path,
            limit_hint(MAX_ZIP_MEMBERS, entries),
        )
    fh.seek(0)
    return budget


def _bad_zip_error(path: Path) -> InputError:
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head == b"PK\x03\x04":
        return TruncatedZipError(
            "is a truncated or damaged zip (its directory is missing)",
            path,
            "Download the file again.",
        )
    return NotAZipError("is not a zip file", path, "Pass the field-20201 DICOM zip of a subject.")


_CHUNK = 1 << 20

try:  # the same bytes as zlib, ~1.8x faster inflate and ~4x faster CRC-32 (inflating is most of the reader's time)
    from isal import isal_zlib as _zlib
except ImportError:  # no wheel for this platform: the same code on the standard library, slower
    _zlib = zlib  # type: ignore[assignment,unused-ignore]
_INFLATE_ERRORS: tuple[type[Exception], ...] = (zlib.error, getattr(_zlib, "error", zlib.error))

_LOCAL_HEADER = b"PK\x03\x04"
_LOCAL_HEADER_SIZE = 30
_UTF8_NAME = 0x0800
#: General-purpose flag bits the direct reader handles: deflate options (bits 1, 2), sizes and
#: CRC in a data descriptor (bit 3: the central directory's are used), UTF-8 names (bit 11).
#: Any other bit (encryption, patched data, reserved) leaves the member to zipfile.
_PLAIN_FLAGS = 0x0002 | 0x0004 | 0x0008 | _UTF8_NAME


def _read_member_direct(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes | None:
    """A stored or deflated member read and inflated here; None leaves it to zipfile.

    The central directory (parsed by zipfile) gives the offset, sizes, CRC and
    flags; the local header's signature and file name are checked and its own
    name and extra lengths are skipped. At most the declared size + 1 bytes are
    inflated (the caller has checked the declared size against the cap), and a
    member is returned only when it reads cleanly: all its compressed bytes are
    there, the deflate stream ends after exactly the declared size, and the
    CRC-32 matches. Anything else (damaged, truncated, encrypted, another
    method, a compressed size no encoder writes) goes to zipfile, which reads
    or raises exactly as it did before this reader existed.
    """
    method, size, csize = info.compress_type, info.file_size, info.compress_size
    if info.flag_bits & ~_PLAIN_FLAGS:
        return None
    if method == zipfile.ZIP_DEFLATED:
        # deflate expands incompressible data by a few bytes per 64 kB block: a larger
        # compressed size is a lie, and is not read into memory here
        if csize > size + (size >> 3) + 1024:
            return None
    elif method != zipfile.ZIP_STORED or csize != size:
        return None
    fp = zf.fp
    if fp is None:
        return None
    try:
        fp.seek(info.header_offset)
        head = fp.read(_LOCAL_HEADER_SIZE)
        if len(head) != _LOCAL_HEADER_SIZE or head[:4] != _LOCAL_HEADER:
            return None
        (flags,) = struct.unpack_from("<H", head, 6)
        name_len, extra_len = struct.unpack_from("<HH", head, 26)
        raw_name = fp.read(name_len)
        if extra_len:
            fp.seek(extra_len, 1)
        compressed = fp.read(csize)
    except (OSError, ValueError):
        return None
    if len(compressed) != csize:
        return None
    encoding = "utf-8" if flags & _UTF8_NAME else (getattr(zf, "metadata_encoding", None) or "cp437")
    try:
        if raw_name.decode(encoding) != info.orig_filename:
            return None
    except (UnicodeDecodeError, LookupError):
        return None
    if method == zipfile.ZIP_DEFLATED:
        inflater = _zlib.decompressobj(-15)
        try:
            data = inflater.decompress(compressed, size + 1)
        except _INFLATE_ERRORS:
            return None
        if not inflater.eof or len(data) != size:
            return None
    else:
        data = compressed
    if _zlib.crc32(data) != info.CRC:
        return None
    return data


def first_damaged_member(path: str | os.PathLike[str]) -> str | None:
    """The name of the first member of a zip that does not read back intact, or None when every one does.

    Each member is inflated and its CRC-32 compared with the zip's own, one
    member at a time (memory: one member of at most ``MAX_MEMBER_BYTES``;
    larger ones are streamed by zipfile), with the fast reader where it
    applies. Used to verify a copy made over an unreliable mount before any
    image is made from it. Raises ``zipfile.BadZipFile`` / ``OSError`` when
    the file is not a readable zip at all.
    """
    cap = MAX_MEMBER_BYTES.value()
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            if info.file_size <= cap and _read_member_direct(zf, info) is not None:
                continue
            try:
                with zf.open(info) as fh:  # zipfile checks the CRC at the end of the stream
                    while fh.read(_CHUNK):
                        pass
            except (zipfile.BadZipFile, EOFError, ValueError, NotImplementedError, *_INFLATE_ERRORS):
                return info.filename
    return None


def _read_member_bytes(
    zf: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    path: Path,
    size: int = -1,
    *,
    limit: Limit = MAX_MEMBER_BYTES,
    budget: _Budget | None = None,
) -> bytes:
    """The uncompressed bytes of one member (the first ``size`` when given).

    The cap is enforced on the bytes actually inflated: the size the zip
    directory declares is checked first but not trusted. A whole member is
    read by :func:`_read_member_direct` when it reads cleanly, otherwise (and
    for the first ``size`` bytes) by zipfile in chunks.
    """
    cap = limit.value()
    if size < 0:
        if info.file_size > cap:
            raise LimitError(
                f"member {quote(info.filename, 100)} declares {_size(info.file_size)}, more than {_size(cap)} "
                f"(limit {limit.env})",
                path,
                limit_hint(limit, info.file_size),
            )
        data = _read_member_direct(zf, info)
        if data is not None:
            if budget is not None:
                budget.take(len(data), path)
            return data
    name = quote(info.filename, 100)
    if info.flag_bits & 0x1:  # zipfile would raise a bare RuntimeError asking for a password
        raise InputError(
            f"member {name} is encrypted", path, "mimir reads unencrypted zips only: decrypt it or download it again."
        )
    want = cap + 1 if size < 0 else min(size, cap + 1)
    parts: list[bytes] = []
    got = 0
    try:
        with zf.open(info) as fh:
            while got < want:
                chunk = fh.read(min(_CHUNK, want - got))
                if not chunk:
                    break
                got += len(chunk)
                if budget is not None:
                    budget.take(len(chunk), path)
                parts.append(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError) as exc:
        raise TruncatedZipError(
            f"member {name} is damaged ({quote(str(exc))})", path, "Download the file again."
        ) from None
    if size < 0 and got > cap:
        raise LimitError(
            f"member {name} inflates to more than {_size(cap)} (limit {limit.env}; "
            f"its directory entry claims {_size(info.file_size)})",
            path,
            limit_hint(limit),
        )
    return b"".join(parts)


def _manifest_hint(
    zf: zipfile.ZipFile,
    manifest: zipfile.ZipInfo,
    candidates: list[zipfile.ZipInfo],
    path: Path,
    contrasts: tuple[str, ...] = SIGNAL_CONTRASTS,
) -> dict[str, bool] | None:
    """Map member name -> "is a water/fat slice" from the manifest, or None if unusable.

    The header cannot be trusted and the date column holds an unquoted
    comma, so each row is searched for a field ending in ``.dcm`` (the file
    name) and a field starting with ``Dixon`` (the series description).
    The hint is used only if it names every DICOM member of the zip.
    """
    try:
        raw = _read_member_bytes(zf, manifest, path, limit=MAX_MANIFEST_BYTES)
    except TruncatedZipError:
        return None
    text = raw.decode("utf-8", errors="replace")
    hint: dict[str, bool] = {}
    for line in text.splitlines():
        name = description = None
        for field in line.split(","):  # the first field of each kind; the rest are not looked at
            field = field.strip().strip('"')
            if name is None and field.lower().endswith(".dcm"):
                name = field
            if description is None and field.startswith("Dixon"):
                description = field
            if name is not None and description is not None:
                hint[name] = is_signal_description(description, contrasts)
                break
    if not hint or any(m.filename not in hint for m in candidates):
        return None
    return hint


_VR_RE = re.compile(rb"[A-Z]{2}")


def _peek_is_signal(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, contrasts: tuple[str, ...] = SIGNAL_CONTRASTS
) -> bool:
    """Decide from a member's first bytes whether it is a water/fat slice.

    Looks for the SeriesDescription element in explicit or implicit VR
    little endian. When it is not found in the first bytes the member is
    kept (and fully parsed later), so nothing is skipped by mistake.
    """
    head = _read_member_bytes(zf, info, path, _PEEK_BYTES)
    tag = struct.pack("<HH", *_SERIES_DESCRIPTION)
    at = head.find(tag)
    if at < 0:
        return True
    rest = head[at + 4 :]
    if len(rest) >= 4 and _VR_RE.fullmatch(rest[:2]):
        (length,) = struct.unpack("<H", rest[2:4])
        value = rest[4 : 4 + length]
    elif len(rest) >= 4:
        (length,) = struct.unpack("<I", rest[:4])
        value = rest[4 : 4 + length]
    else:
        return True
    if len(value) < length:
        return True
    return is_signal_description(value.decode("ascii", errors="replace"), contrasts)


def _read_members(
    zf: zipfile.ZipFile,
    members: list[zipfile.ZipInfo],
    path: Path,
    budget: _Budget | None = None,
    contrasts: tuple[str, ...] = SIGNAL_CONTRASTS,
) -> tuple[list[SignalSlice], int]:
    """Parse ``members``; return the water/fat slices and how many DICOM images were not."""
    slices = []
    skipped = 0
    dicom_seen = False
    for info in members:
        data = _read_member_bytes(zf, info, path, budget=budget)
        try:
            fast = _fast_slice(data)
        except LimitError as exc:  # a deflated data set past the cap
            raise LimitError(f"member {quote(info.filename, 100)}: {exc.message}", path, exc.hint) from None
        if fast is not None:
            description, attrs = fast
            dicom_seen = True
            if not is_signal_description(description, contrasts):
                skipped += 1
                continue
            made = _slice_from_fast(attrs, description, info.filename, path)
            if made is not None:
                slices.append(made)
                continue
        if _DEFLATED_LE.encode() in data[:_META_SCAN_BYTES]:
            # pydicom would inflate the data set with no bound: only the fast path inflates, capped
            raise InputError(
                f"member {quote(info.filename, 100)} is a deflated DICOM file that cannot be read "
                "(its header is malformed or its data damaged)",
                path,
                "The file is malformed; ask for a fresh copy of this subject's zip.",
            )
        import pydicom  # the general parser, for the files the fast path leaves to it

        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
            description = str(ds.get("SeriesDescription", ""))
            is_image = "PixelData" in ds and "ImagePositionPatient" in ds
        except MemoryError:
            raise
        except Exception:  # noqa: BLE001 - any parse failure: not a DICOM file
            is_image = False
        if not is_image:
            continue  # not a DICOM image: a README.txt and the like
        dicom_seen = True
        if is_signal_description(description, contrasts):
            slices.append(_slice_from_dataset(ds, description, info.filename, path))
        else:
            skipped += 1
    if members and not dicom_seen:
        raise NoDicomError("holds no readable DICOM images", path, "Is this a field-20201 zip?")
    return slices, skipped


#: Plausible ranges for this protocol (UK Biobank: 156-174 x 224 pixels of 2.232 mm).
MIN_MATRIX, MAX_MATRIX = 2, 2048
MIN_PIXEL_SPACING_MM, MAX_PIXEL_SPACING_MM = 0.1, 20.0
#: |ImagePositionPatient| beyond this (mm, 100 m) is not a position in a scanner.
MAX_ABS_POSITION_MM = 1e5
MAX_ABS_SLOPE, MAX_ABS_INTERCEPT = 1e6, 1e9

#: Transfer syntaxes that need a decoder plugin: name and the packages that decode them.
_CODECS: dict[str, tuple[str, str]] = {
    "1.2.840.10008.1.2.4.50": ("JPEG Baseline", "pylibjpeg pylibjpeg-libjpeg"),
    "1.2.840.10008.1.2.4.51": ("JPEG Extended", "pylibjpeg pylibjpeg-libjpeg"),
    "1.2.840.10008.1.2.4.57": ("JPEG Lossless", "pylibjpeg pylibjpeg-libjpeg"),
    "1.2.840.10008.1.2.4.70": ("JPEG Lossless SV1", "pylibjpeg pylibjpeg-libjpeg"),
    "1.2.840.10008.1.2.4.80": ("JPEG-LS Lossless", "pylibjpeg pylibjpeg-libjpeg"),
    "1.2.840.10008.1.2.4.81": ("JPEG-LS Near-Lossless", "pylibjpeg pylibjpeg-libjpeg"),
    "1.2.840.10008.1.2.4.90": ("JPEG 2000 Lossless", "pylibjpeg pylibjpeg-openjpeg"),
    "1.2.840.10008.1.2.4.91": ("JPEG 2000", "pylibjpeg pylibjpeg-openjpeg"),
    "1.2.840.10008.1.2.4.201": ("HTJ2K Lossless", "pylibjpeg pylibjpeg-openjpeg"),
    "1.2.840.10008.1.2.4.202": ("HTJ2K Lossless RPCL", "pylibjpeg pylibjpeg-openjpeg"),
    "1.2.840.10008.1.2.4.203": ("HTJ2K", "pylibjpeg pylibjpeg-openjpeg"),
    "1.2.840.10008.1.2.5": ("RLE Lossless", "pylibjpeg pylibjpeg-rle"),
}


def _bad(member: str, path: Path, attribute: str, value: object, expected: str) -> InputError:
    """The error for one malformed attribute of one slice: member, attribute, value, what is expected."""
    return InputError(
        f"slice {quote(member, 100)}: {attribute} is {quote(value)}; expected {expected}",
        path,
        "The file is malformed; ask for a fresh copy of this subject's zip.",
    )


def _numbers(member: str, path: Path, attribute: str, raw: object, count: int) -> list[float]:
    """``count`` decimal numbers of a multi-valued attribute (text ``a\\b`` or a pydicom value), as floats."""
    if raw is None or raw == "":
        raise _bad(member, path, attribute, "", f"{count} numbers (the attribute is missing)")
    if isinstance(raw, (str, bytes)):
        text = raw.decode("ascii", errors="replace") if isinstance(raw, bytes) else raw
        items: list[object] = text.strip(" \x00").split("\\")
    elif isinstance(raw, (list, tuple)) or type(raw).__name__ == "MultiValue":
        items = list(raw)  # type: ignore[arg-type]
    else:
        items = [raw]
    if len(items) != count:
        raise _bad(member, path, attribute, raw, f"{count} numbers")
    try:
        return [float(str(v).strip()) for v in items]
    except (TypeError, ValueError):
        raise _bad(member, path, attribute, raw, f"{count} numbers") from None


def _check_slice_header(
    member: str,
    path: Path,
    rows: int,
    cols: int,
    position: list[float],
    spacing: list[float],
    slope: float | None,
    intercept: float | None,
) -> None:
    """Refuse values no scanner writes, before any pixel is decoded (see docs/limits.md)."""
    for attribute, n in (("Rows", rows), ("Columns", cols)):
        if not MIN_MATRIX <= n <= MAX_MATRIX:
            raise _bad(member, path, attribute, n, f"{MIN_MATRIX} to {MAX_MATRIX} pixels")
    # plain float comparisons (a NaN fails every one): numpy costs more than the check on 2-3 values
    if not all(math.isfinite(v) and MIN_PIXEL_SPACING_MM <= v <= MAX_PIXEL_SPACING_MM for v in spacing):
        text = "\\".join(f"{v:g}" for v in spacing)
        raise _bad(
            member, path, "PixelSpacing", text,
            f"finite values from {MIN_PIXEL_SPACING_MM} to {MAX_PIXEL_SPACING_MM} mm (UK Biobank: 2.2321429)",
        )
    if not all(math.isfinite(v) and abs(v) <= MAX_ABS_POSITION_MM for v in position):
        text = "\\".join(f"{v:g}" for v in position)
        raise _bad(member, path, "ImagePositionPatient", text, f"finite values within +-{MAX_ABS_POSITION_MM:g} mm")
    if slope is not None and not (math.isfinite(slope) and abs(slope) <= MAX_ABS_SLOPE):
        raise _bad(member, path, "RescaleSlope", f"{slope:g}", f"a finite number within +-{MAX_ABS_SLOPE:g}")
    if intercept is not None and not (math.isfinite(intercept) and abs(intercept) <= MAX_ABS_INTERCEPT):
        raise _bad(
            member, path, "RescaleIntercept", f"{intercept:g}", f"a finite number within +-{MAX_ABS_INTERCEPT:g}"
        )


def _optional_number(member: str, path: Path, attribute: str, raw: object) -> float | None:
    if raw is None or (isinstance(raw, (str, bytes)) and not raw.strip()):
        return None
    return _numbers(member, path, attribute, raw, 1)[0]


def _slice_from_dataset(ds: pydicom.Dataset, description: str, member: str, path: Path) -> SignalSlice:
    """A slice from a dataset parsed by pydicom; every attribute is checked before the pixels are decoded."""
    try:
        series_number = int(str(ds.get("SeriesNumber", "")).strip())
    except ValueError:
        raise _bad(member, path, "SeriesNumber", ds.get("SeriesNumber", ""), "a whole number") from None
    try:
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    except (TypeError, ValueError):
        raise _bad(member, path, "Rows/Columns", (ds.get("Rows"), ds.get("Columns")), "whole numbers") from None
    position = _numbers(member, path, "ImagePositionPatient", ds.get("ImagePositionPatient"), 3)
    spacing = _numbers(member, path, "PixelSpacing", ds.get("PixelSpacing"), 2)
    slope = _optional_number(member, path, "RescaleSlope", ds.get("RescaleSlope"))
    intercept = _optional_number(member, path, "RescaleIntercept", ds.get("RescaleIntercept"))
    _check_slice_header(member, path, rows, cols, position, spacing, slope, intercept)
    series_time = str(ds.get("SeriesTime", ""))
    pixels = _pixels(ds, rows, cols, member, path)
    pixels = _rescale(pixels, slope, intercept)
    return SignalSlice(
        pixels, series_number, description, np.array(position, np.float32), np.array(spacing, np.float32), series_time
    )


def _rescale(pixels: np.ndarray, slope: float | None, intercept: float | None) -> np.ndarray:
    if slope is not None or intercept is not None:
        pixels = pixels * np.float32(1.0 if slope is None else slope)
        pixels = pixels + np.float32(0.0 if intercept is None else intercept)
    return pixels


def _syntax_of(ds: pydicom.Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if not syntax:
        # No file meta (no 128-byte preamble): the standard's default is implicit VR little endian;
        # pydicom tells how the dataset actually parsed.
        implicit = getattr(ds, "is_implicit_VR", None)
        little = getattr(ds, "is_little_endian", None)
        if implicit is None or little is None:
            implicit, little = (True, True)
        syntax = {(True, True): _IMPLICIT_LE, (False, True): _EXPLICIT_LE}.get((implicit, little), "1.2.840.10008.1.2.2")
        if meta is None:
            from pydicom.dataset import FileMetaDataset

            ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = syntax
    return syntax


def _decoder_available(syntax: str) -> bool:
    """Whether pydicom has a working decoder (a plugin installed) for ``syntax``."""
    try:
        from pydicom.pixels import get_decoder

        return bool(get_decoder(syntax).is_available)
    except Exception:  # noqa: BLE001 - older pydicom, unknown syntax
        return False


def _pixels(ds: pydicom.Dataset, rows: int, cols: int, member: str, path: Path) -> np.ndarray:
    """Pixel array as float32 (rows, columns), not rescaled.

    Rows, Columns and the pixel data's length are checked before decoding;
    a compressed syntax without its decoder gives the exact ``pip install``.
    """
    syntax = _syntax_of(ds)
    bits = int(ds.get("BitsAllocated", 16) or 16)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    frames_raw = ds.get("NumberOfFrames", 1)
    try:
        frames = int(str(frames_raw or 1).strip())
    except ValueError:
        raise _bad(member, path, "NumberOfFrames", frames_raw, "1") from None
    if frames != 1 or samples != 1:
        raise _bad(member, path, "NumberOfFrames/SamplesPerPixel", f"{frames}/{samples}", "1/1 (one grey-level slice)")
    if bits not in (8, 16, 32):
        raise _bad(member, path, "BitsAllocated", bits, "8, 16 or 32")
    raw = ds.get("PixelData")
    if raw is None:
        raise _bad(member, path, "PixelData", "", "pixel data (the attribute is missing)")
    needed = rows * cols * (bits // 8)
    if syntax in _UNCOMPRESSED_SYNTAXES or syntax == "1.2.840.10008.1.2.2":
        if len(raw) < needed:
            raise _bad(
                member, path, "PixelData", f"{len(raw)} bytes",
                f"at least Rows x Columns x {bits // 8} = {needed} bytes for {rows} x {cols} pixels",
            )
    if syntax in _UNCOMPRESSED_SYNTAXES and bits == 16:
        dtype = np.dtype("<i2") if int(ds.get("PixelRepresentation", 0) or 0) == 1 else np.dtype("<u2")
        return np.frombuffer(raw, dtype=dtype, count=rows * cols).reshape(rows, cols).astype(np.float32)
    try:
        array = ds.pixel_array
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types; all mean "cannot decode"
        name, packages = _CODECS.get(syntax, (None, None))
        if name is not None and not _decoder_available(syntax):
            raise InputError(
                f"slice {quote(member, 100)} is compressed as {name} ({syntax}) and no decoder for it is installed",
                path,
                f"{extra_hint('codecs').rstrip('.')} (or: pip install {packages}).",
            ) from None
        label = f"{name} ({syntax})" if name else (syntax or "unknown transfer syntax")
        raise InputError(
            f"slice {quote(member, 100)}: its {label} pixel data cannot be decoded ({quote(str(exc))})",
            path,
            "The file is malformed; ask for a fresh copy of this subject's zip.",
        ) from None
    if array.shape != (rows, cols):
        raise _bad(member, path, "Rows/Columns", f"{rows}/{cols}", f"the decoded image's shape {array.shape}")
    return np.asarray(array, dtype=np.float32)


# --------------------------------------------------------------------------
# Fast path: the files of a field-20201 zip are small uncompressed little
# endian datasets, and pydicom's general parser costs about 1 ms each. This
# walker reads only the dozen elements the pipeline needs and stops at the
# pixel data; anything it does not understand (big endian, compressed or
# encapsulated pixels, undefined-length sequences) returns None, and the file
# goes through pydicom instead. Tests check both paths agree on every file.

_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_WANTED = {
    0x0008_0031: "SeriesTime",
    0x0008_103E: "SeriesDescription",
    0x0020_0011: "SeriesNumber",
    0x0020_0032: "ImagePositionPatient",
    0x0028_0002: "SamplesPerPixel",
    0x0028_0010: "Rows",
    0x0028_0011: "Columns",
    0x0028_0030: "PixelSpacing",
    0x0028_0100: "BitsAllocated",
    0x0028_0103: "PixelRepresentation",
    0x0028_1052: "RescaleIntercept",
    0x0028_1053: "RescaleSlope",
}
_US_TAGS = {0x0028_0002, 0x0028_0010, 0x0028_0011, 0x0028_0100, 0x0028_0103}
_PIXEL_DATA = 0x7FE0_0010
_TRANSFER_SYNTAX = 0x0002_0010
_UNDEFINED = 0xFFFFFFFF


def _key(tag: int) -> int:
    """A tag as the walker sees it: the little-endian 32-bit word of its header, element << 16 | group."""
    return ((tag & 0xFFFF) << 16) | (tag >> 16)


#: The walker compares whole header words: no bytes are sliced or tags assembled per element.
_LONG_VR_CODES = frozenset(int.from_bytes(vr, "little") for vr in _LONG_VRS)
_UN_CODE = int.from_bytes(b"UN", "little")
_PIXEL_KEY = _key(_PIXEL_DATA)
_SYNTAX_KEY = _key(_TRANSFER_SYNTAX)
_NAMES = {_key(tag): name for tag, name in _WANTED.items()}
_US_KEYS = frozenset(_key(tag) for tag in _US_TAGS)
_KEEP = frozenset(_NAMES) | {_PIXEL_KEY}
_REQUIRED_KEYS = tuple(_key(t) for t in (0x0028_0010, 0x0028_0011, 0x0020_0032, 0x0028_0030))
_EXPLICIT_HEAD = struct.Struct("<IHH")  # tag word, VR, 16-bit length
_IMPLICIT_HEAD = struct.Struct("<II")  # tag word, 32-bit length
_U32 = struct.Struct("<I")


def _walk(data: bytes, pos: int, explicit: bool, meta: bool = False) -> tuple[dict[int, bytes], int] | None:
    """Raw values of the top-level elements from ``pos``; None if the layout is unusual.

    Every element up to the pixel data is stepped over (its length checked
    against the data's end, undefined-length sequences followed item by item);
    only the values the fast path uses are kept, keyed by :func:`_key`: the
    wanted tags and the pixel data, or with ``meta`` the transfer syntax of the
    group-0002 file meta, where the walk stops at the first other group.
    """
    values: dict[int, bytes] = {}
    end = len(data)
    keep = (_SYNTAX_KEY,) if meta else _KEEP
    if explicit:
        head = _EXPLICIT_HEAD.unpack_from
        u32 = _U32.unpack_from
        long_vrs = _LONG_VR_CODES
        while pos + 8 <= end:
            key, vr, length = head(data, pos)
            if meta and key & 0xFFFF != 0x0002:
                break
            if vr in long_vrs:
                if pos + 12 > end:
                    return None
                (length,) = u32(data, pos + 8)
                pos += 12
                if length == _UNDEFINED:
                    if key == _PIXEL_KEY:
                        return None  # encapsulated (compressed) pixel data: pydicom decodes it
                    # an undefined-length sequence (SQ or UN): skip its items
                    skipped = _skip_items(data, pos, vr != _UN_CODE, 0)
                    if skipped is None:
                        return None
                    pos = skipped
                    continue
            else:
                pos += 8
            stop = pos + length
            if stop > end:
                return None
            if key in keep:
                values[key] = data[pos:stop]
                if key == _PIXEL_KEY:
                    return values, stop
            pos = stop
        return values, pos
    head = _IMPLICIT_HEAD.unpack_from
    while pos + 8 <= end:
        key, length = head(data, pos)
        if meta and key & 0xFFFF != 0x0002:
            break
        pos += 8
        if length == _UNDEFINED:
            if key == _PIXEL_KEY:
                return None
            # an undefined-length sequence: skip its items (implicit VR throughout)
            skipped = _skip_items(data, pos, False, 0)
            if skipped is None:
                return None
            pos = skipped
            continue
        stop = pos + length
        if stop > end:
            return None
        if key in keep:
            values[key] = data[pos:stop]
            if key == _PIXEL_KEY:
                return values, stop
        pos = stop
    return values, pos


#: Deepest nesting of undefined-length sequences the fast path follows (deeper: pydicom decides).
_MAX_NESTING = 16
_ITEM, _ITEM_END, _SEQUENCE_END = 0xE000, 0xE00D, 0xE0DD


def _skip_items(data: bytes, pos: int, explicit: bool, depth: int) -> int | None:
    """Position after the sequence delimiter of an undefined-length sequence whose items start at ``pos``."""
    if depth > _MAX_NESTING:
        return None
    end = len(data)
    unpack_from = struct.unpack_from
    while pos + 8 <= end:
        group, elem, length = unpack_from("<HHI", data, pos)
        pos += 8
        if group != 0xFFFE:
            return None
        if elem == _SEQUENCE_END:
            return pos
        if elem != _ITEM:
            return None
        if length != _UNDEFINED:
            pos += length
            continue
        item_end = _skip_item(data, pos, explicit, depth + 1)
        if item_end is None:
            return None
        pos = item_end
    return None


def _skip_item(data: bytes, pos: int, explicit: bool, depth: int) -> int | None:
    """Position after the item delimiter of an undefined-length item whose elements start at ``pos``."""
    end = len(data)
    unpack_from = struct.unpack_from
    while pos + 8 <= end:
        group, elem = unpack_from("<HH", data, pos)
        if group == 0xFFFE and elem == _ITEM_END:
            return pos + 8
        vr = b""
        if explicit:
            vr = data[pos + 4 : pos + 6]
            if vr in _LONG_VRS:
                if pos + 12 > end:
                    return None
                (length,) = unpack_from("<I", data, pos + 8)
                pos += 12
            else:
                (length,) = unpack_from("<H", data, pos + 6)
                pos += 8
        else:
            (length,) = unpack_from("<I", data, pos + 4)
            pos += 8
        if length == _UNDEFINED:
            nested = _skip_items(data, pos, explicit and vr != b"UN", depth + 1)
            if nested is None:
                return None
            pos = nested
            continue
        pos += length
        if pos > end:
            return None
    return None


def _inflate(raw: bytes) -> bytes:
    """Inflate a deflated data set (raw deflate), refusing more than the member cap."""
    cap = MAX_MEMBER_BYTES.value()
    inflater = _zlib.decompressobj(-15)  # isal where installed: the same bytes as zlib, faster
    try:
        out = inflater.decompress(raw, cap + 1)
    except _INFLATE_ERRORS:
        return b""
    if len(out) > cap:
        raise LimitError(
            f"a deflated DICOM data set inflates to more than {_size(cap)} (limit {MAX_MEMBER_BYTES.env})",
            None,
            limit_hint(MAX_MEMBER_BYTES),
        )
    return out


def _text(raw: bytes) -> str:
    return raw.decode("ascii", errors="replace").strip(" \x00")


def _fast_slice(data: bytes) -> tuple[str, dict[str, object]] | None:
    """(SeriesDescription, attributes) of an uncompressed LE file, or None to use pydicom."""
    if data[128:132] == b"DICM":
        walked = _walk(data, 132, True, meta=True)
        if walked is None:
            return None
        meta, pos = walked
        syntax = _text(meta.get(_SYNTAX_KEY, b""))
    elif len(data) >= 8 and data[0] | data[1] << 8 in (0x0008, 0x0010, 0x0018, 0x0020):
        # no preamble and no file meta: the standard's default, implicit VR little endian
        # (a file that does not parse consistently that way goes to pydicom)
        syntax, pos = _IMPLICIT_LE, 0
    else:
        return None
    if syntax == _DEFLATED_LE:
        data, pos, syntax = _inflate(data[pos:]), 0, _EXPLICIT_LE
    if syntax not in (_EXPLICIT_LE, _IMPLICIT_LE):
        return None
    walked = _walk(data, pos, syntax == _EXPLICIT_LE)
    if walked is None:
        return None
    raw, _ = walked
    if _PIXEL_KEY not in raw or any(k not in raw for k in _REQUIRED_KEYS):
        return None
    attrs: dict[str, object] = {}
    for key, value in raw.items():
        if key == _PIXEL_KEY:
            continue
        if key in _US_KEYS:
            if len(value) != 2:
                return None
            attrs[_NAMES[key]] = value[0] | value[1] << 8
        else:
            attrs[_NAMES[key]] = _text(value)
    attrs["PixelData"] = raw[_PIXEL_KEY]
    return str(attrs.get("SeriesDescription", "")), attrs


def _slice_from_fast(attrs: dict[str, object], description: str, member: str = "", path: Path | None = None) -> SignalSlice | None:
    """Build a slice from fast-path attributes; None when pydicom should decide.

    Values that parse but are impossible (spacing 0, a position at infinity,
    Rows = 1, ...) raise :class:`InputError` naming the attribute.
    """
    if attrs.get("SamplesPerPixel", 1) != 1 or attrs.get("BitsAllocated", 16) != 16:
        return None
    if not isinstance(path, Path):
        path = Path(path) if path is not None else Path("")
    rows, cols = int(attrs["Rows"]), int(attrs["Columns"])  # type: ignore[arg-type]
    pixel_bytes = attrs["PixelData"]
    assert isinstance(pixel_bytes, bytes)
    try:
        series_number = int(str(attrs.get("SeriesNumber", "")).strip())
    except ValueError:
        return None
    position = _numbers(member, path, "ImagePositionPatient", attrs["ImagePositionPatient"], 3)
    spacing = _numbers(member, path, "PixelSpacing", attrs["PixelSpacing"], 2)
    slope = _optional_number(member, path, "RescaleSlope", attrs.get("RescaleSlope"))
    intercept = _optional_number(member, path, "RescaleIntercept", attrs.get("RescaleIntercept"))
    _check_slice_header(member, path, rows, cols, position, spacing, slope, intercept)
    if len(pixel_bytes) < rows * cols * 2:
        raise _bad(
            member, path, "PixelData", f"{len(pixel_bytes)} bytes",
            f"at least Rows x Columns x 2 = {rows * cols * 2} bytes for {rows} x {cols} pixels",
        )
    dtype = np.dtype("<i2") if attrs.get("PixelRepresentation", 0) == 1 else np.dtype("<u2")
    pixels = np.frombuffer(pixel_bytes, dtype=dtype, count=rows * cols).reshape(rows, cols).astype(np.float32)
    pixels = _rescale(pixels, slope, intercept)
    return SignalSlice(
        pixels, series_number, description, np.array(position, np.float32), np.array(spacing, np.float32),
        str(attrs.get("SeriesTime", "")),
    )
