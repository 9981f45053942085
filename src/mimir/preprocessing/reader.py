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
import os
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from mimir.errors import (
    InputError,
    MissingSeriesError,
    NoDicomError,
    NotAZipError,
    TruncatedZipError,
)

#: Tags read from every slice (group, element).
_SERIES_DESCRIPTION = (0x0008, 0x103E)

#: Bytes of a member decompressed to find its SeriesDescription without a manifest.
_PEEK_BYTES = 4096

_EXPLICIT_LE = "1.2.840.10008.1.2.1"
_IMPLICIT_LE = "1.2.840.10008.1.2"
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


def is_signal_description(description: str) -> bool:
    """True for water (``_W``) and fat (``_F``) series, the only ones the pipeline uses."""
    return "_W" in description or "_F" in description


def read_signal_slices(path: str | os.PathLike[str]) -> list[SignalSlice]:
    """Read every water and fat slice of a subject zip, in zip member order.

    Raises
    ------
    InputError
        (and subclasses) with a one-line message naming ``path`` when the file
        is missing, not a zip, truncated, holds no DICOM, or holds no water
        and fat series.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("file not found", path, "Check the path.")
    if path.is_dir():
        raise InputError("is a folder, not a subject zip", path, "Pass the zip file itself.")
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise _bad_zip_error(path) from None
    except OSError as exc:
        raise InputError(f"cannot be read ({exc.strerror or exc})", path) from None
    with zf:
        members = [info for info in zf.infolist() if not info.is_dir()]
        manifest = next((m for m in members if "manifest" in m.filename.lower()), None)
        candidates = [m for m in members if m is not manifest]
        if not candidates:
            raise NoDicomError("holds no DICOM files", path, "Is this a field-20201 zip?")
        hint = _manifest_hint(zf, manifest, candidates) if manifest is not None else None
        if hint is not None:
            chosen = [m for m in candidates if hint.get(m.filename, True)]
            slices, skipped = _read_members(zf, chosen, path)
            if slices and not skipped:
                return slices
            # The manifest named at least one file wrongly: ignore it entirely.
        chosen = [m for m in candidates if _peek_is_signal(zf, m, path)]
        slices, _ = _read_members(zf, chosen, path)
    if not slices:
        raise MissingSeriesError(
            "holds no Dixon water (_W) or fat (_F) series", path, "Is this a field-20201 zip?"
        )
    return slices


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


def _read_member_bytes(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, size: int = -1) -> bytes:
    try:
        with zf.open(info) as fh:
            return fh.read(size)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        raise TruncatedZipError(
            f"member {info.filename} is damaged ({exc})", path, "Download the file again."
        ) from None


def _manifest_hint(
    zf: zipfile.ZipFile, manifest: zipfile.ZipInfo, candidates: list[zipfile.ZipInfo]
) -> dict[str, bool] | None:
    """Map member name -> "is a water/fat slice" from the manifest, or None if unusable.

    The header cannot be trusted and the date column holds an unquoted
    comma, so each row is searched for a field ending in ``.dcm`` (the file
    name) and a field starting with ``Dixon`` (the series description).
    The hint is used only if it names every DICOM member of the zip.
    """
    try:
        with zf.open(manifest) as fh:
            text = fh.read().decode("utf-8", errors="replace")
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError):
        return None
    hint: dict[str, bool] = {}
    for line in text.splitlines():
        fields = [f.strip().strip('"') for f in line.split(",")]
        name = next((f for f in fields if f.lower().endswith(".dcm")), None)
        description = next((f for f in fields if f.startswith("Dixon")), None)
        if name is None or description is None:
            continue
        hint[name] = is_signal_description(description)
    if not hint or any(m.filename not in hint for m in candidates):
        return None
    return hint


_VR_RE = re.compile(rb"[A-Z]{2}")


def _peek_is_signal(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> bool:
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
    return is_signal_description(value.decode("ascii", errors="replace"))


def _read_members(
    zf: zipfile.ZipFile, members: list[zipfile.ZipInfo], path: Path
) -> tuple[list[SignalSlice], int]:
    """Parse ``members``; return the water/fat slices and how many DICOM images were not."""
    slices = []
    skipped = 0
    dicom_seen = False
    for info in members:
        data = _read_member_bytes(zf, info, path)
        fast = _fast_slice(data)
        if fast is not None:
            description, attrs = fast
            dicom_seen = True
            if not is_signal_description(description):
                skipped += 1
                continue
            made = _slice_from_fast(attrs, description)
            if made is not None:
                slices.append(made)
                continue
        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
            description = str(ds.get("SeriesDescription", ""))
            is_image = "PixelData" in ds and "ImagePositionPatient" in ds
        except (InvalidDicomError, ValueError, KeyError, struct.error, EOFError, OSError):
            is_image = False
        if not is_image:
            continue  # not a DICOM image: a README.txt and the like
        dicom_seen = True
        if is_signal_description(description):
            slices.append(_slice_from_dataset(ds, description, info.filename, path))
        else:
            skipped += 1
    if members and not dicom_seen:
        raise NoDicomError("holds no readable DICOM images", path, "Is this a field-20201 zip?")
    return slices, skipped


def _slice_from_dataset(ds: pydicom.Dataset, description: str, member: str, path: Path) -> SignalSlice:
    try:
        series_number = int(ds.SeriesNumber)
        position = np.asarray([float(v) for v in ds.ImagePositionPatient], dtype=np.float32)
        spacing = np.asarray([float(v) for v in ds.PixelSpacing], dtype=np.float32)
        series_time = str(ds.get("SeriesTime", ""))
        pixels = _pixels(ds)
    except (AttributeError, TypeError, ValueError, NotImplementedError, RuntimeError) as exc:
        raise InputError(
            f"slice {member} lacks a required attribute or has unreadable pixels ({exc})",
            path,
            "The zip may be damaged; download it again.",
        ) from None
    if position.shape != (3,) or spacing.shape != (2,):
        raise InputError(f"slice {member} has a malformed position or pixel spacing", path)
    return SignalSlice(pixels, series_number, description, position, spacing, series_time)


def _pixels(ds: pydicom.Dataset) -> np.ndarray:
    """Pixel array as float32 (rows, columns), rescaled where the file says so."""
    rows, cols = int(ds.Rows), int(ds.Columns)
    meta = getattr(ds, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    bits = int(ds.get("BitsAllocated", 16))
    if syntax in _UNCOMPRESSED_SYNTAXES and bits == 16 and int(ds.get("SamplesPerPixel", 1)) == 1:
        dtype = np.dtype("<i2") if int(ds.get("PixelRepresentation", 0)) == 1 else np.dtype("<u2")
        raw = ds.PixelData
        if len(raw) < rows * cols * 2:
            raise ValueError("pixel data shorter than Rows x Columns")
        pixels = np.frombuffer(raw, dtype=dtype, count=rows * cols).reshape(rows, cols).astype(np.float32)
    else:
        pixels = np.asarray(ds.pixel_array, dtype=np.float32)
    slope = ds.get("RescaleSlope")
    intercept = ds.get("RescaleIntercept")
    if slope is not None or intercept is not None:
        pixels = pixels * np.float32(float(slope) if slope is not None else 1.0)
        pixels = pixels + np.float32(float(intercept) if intercept is not None else 0.0)
    return pixels


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
_UNDEFINED = 0xFFFFFFFF


def _walk(data: bytes, pos: int, explicit: bool, stop_group: int | None) -> tuple[dict[int, bytes], int] | None:
    """Raw values of the top-level elements from ``pos``; None if the layout is unusual."""
    values: dict[int, bytes] = {}
    end = len(data)
    unpack_from = struct.unpack_from
    while pos + 8 <= end:
        group, elem = unpack_from("<HH", data, pos)
        if stop_group is not None and group != stop_group:
            break
        tag = (group << 16) | elem
        if explicit:
            vr = data[pos + 4 : pos + 6]
            if vr in _LONG_VRS:
                (length,) = unpack_from("<I", data, pos + 8)
                pos += 12
            else:
                (length,) = unpack_from("<H", data, pos + 6)
                pos += 8
        else:
            (length,) = unpack_from("<I", data, pos + 4)
            pos += 8
        if length == _UNDEFINED or pos + length > end:
            return None
        if tag in _WANTED or tag == _PIXEL_DATA or group == 0x0002:
            values[tag] = data[pos : pos + length]
        pos += length
        if tag == _PIXEL_DATA:
            break
    return values, pos


def _text(raw: bytes) -> str:
    return raw.decode("ascii", errors="replace").strip(" \x00")


def _fast_slice(data: bytes) -> tuple[str, dict[str, object]] | None:
    """(SeriesDescription, attributes) of an uncompressed LE file, or None to use pydicom."""
    if data[128:132] != b"DICM":
        return None
    walked = _walk(data, 132, True, 0x0002)
    if walked is None:
        return None
    meta, pos = walked
    syntax = _text(meta.get(0x0002_0010, b""))
    if syntax not in (_EXPLICIT_LE, _IMPLICIT_LE):
        return None
    walked = _walk(data, pos, syntax == _EXPLICIT_LE, None)
    if walked is None:
        return None
    raw, _ = walked
    if _PIXEL_DATA not in raw or any(t not in raw for t in (0x0028_0010, 0x0028_0011, 0x0020_0032, 0x0028_0030)):
        return None
    attrs: dict[str, object] = {}
    for tag, name in _WANTED.items():
        if tag not in raw:
            continue
        value = raw[tag]
        if tag in _US_TAGS:
            if len(value) != 2:
                return None
            attrs[name] = struct.unpack("<H", value)[0]
        else:
            attrs[name] = _text(value)
    attrs["PixelData"] = raw[_PIXEL_DATA]
    return str(attrs.get("SeriesDescription", "")), attrs


def _slice_from_fast(attrs: dict[str, object], description: str) -> SignalSlice | None:
    """Build a slice from fast-path attributes; None when pydicom should decide."""
    if attrs.get("SamplesPerPixel", 1) != 1 or attrs.get("BitsAllocated", 16) != 16:
        return None
    rows, cols = int(attrs["Rows"]), int(attrs["Columns"])  # type: ignore[arg-type]
    pixel_bytes = attrs["PixelData"]
    assert isinstance(pixel_bytes, bytes)
    if len(pixel_bytes) < rows * cols * 2:
        return None
    dtype = np.dtype("<i2") if attrs.get("PixelRepresentation", 0) == 1 else np.dtype("<u2")
    pixels = np.frombuffer(pixel_bytes, dtype=dtype, count=rows * cols).reshape(rows, cols).astype(np.float32)
    try:
        position = np.asarray([float(v) for v in str(attrs["ImagePositionPatient"]).split("\\")], np.float32)
        spacing = np.asarray([float(v) for v in str(attrs["PixelSpacing"]).split("\\")], np.float32)
        series_number = int(str(attrs.get("SeriesNumber", "")).strip())
        slope = attrs.get("RescaleSlope")
        intercept = attrs.get("RescaleIntercept")
        slope_f = float(str(slope)) if slope not in (None, "") else None
        intercept_f = float(str(intercept)) if intercept not in (None, "") else None
    except ValueError:
        return None
    if position.shape != (3,) or spacing.shape != (2,):
        return None
    if slope_f is not None or intercept_f is not None:
        pixels = pixels * np.float32(1.0 if slope_f is None else slope_f)
        pixels = pixels + np.float32(0.0 if intercept_f is None else intercept_f)
    return SignalSlice(pixels, series_number, description, position, spacing, str(attrs.get("SeriesTime", "")))
