"""Rewrite a subject zip's DICOM files in another valid DICOM encoding.

Real archives are not always stored the way UK Biobank ships them: PACS
exports and anonymisers re-encode files (implicit VR, deflate, RLE, JPEG
2000), add undefined-length sequences, or drop the 128-byte preamble. These
rewrites keep every pixel value and attribute, so a reader must make exactly
the same image from each; the tests and ``benchmarks/preprocess.py`` use them
to check that and to time each encoding against the plain file.

Every function takes and returns whole DICOM files (bytes). Only the DICOM
members of a zip are rewritten; the manifest and other files are copied.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)


def _read(data: bytes) -> pydicom.FileDataset:
    return pydicom.dcmread(io.BytesIO(data))


def _save(ds: Dataset, syntax: str) -> bytes:
    ds.file_meta.TransferSyntaxUID = syntax
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def explicit_le(data: bytes) -> bytes:
    """Explicit VR little endian, as pydicom writes it (the baseline of the comparison)."""
    return _save(_read(data), ExplicitVRLittleEndian)


def implicit_le(data: bytes) -> bytes:
    """Implicit VR little endian (the DICOM default)."""
    return _save(_read(data), ImplicitVRLittleEndian)


def deflated(data: bytes) -> bytes:
    """Deflated explicit VR little endian: the data set after the file meta is raw-deflated."""
    return _save(_read(data), DeflatedExplicitVRLittleEndian)


def undefined_length_sequence(data: bytes) -> bytes:
    """Explicit VR LE with a private-free, undefined-length sequence (two nested items) before the pixels."""
    ds = _read(data)
    inner = Dataset()
    inner.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    inner.ReferencedSOPInstanceUID = "1.2.3.4.5"
    nested = Dataset()
    nested.CodeValue = "X"
    inner.PurposeOfReferenceCodeSequence = DicomSequence([nested])
    ds.ReferencedImageSequence = DicomSequence([inner, inner])
    ds["ReferencedImageSequence"].is_undefined_length = True
    for item in ds.ReferencedImageSequence:
        item.is_undefined_length_sequence_item = True
    ds.ReferencedImageSequence[0]["PurposeOfReferenceCodeSequence"].is_undefined_length = True
    return _save(ds, ExplicitVRLittleEndian)


def no_preamble(data: bytes) -> bytes:
    """The bare data set in implicit VR little endian: no preamble, no ``DICM``, no file meta."""
    ds = _read(data)
    buf = DicomBytesIO()
    buf.is_implicit_VR, buf.is_little_endian = True, True
    pydicom.filewriter.write_dataset(buf, Dataset(ds))
    return buf.getvalue()


def rle(data: bytes) -> bytes:
    """RLE Lossless (pydicom's own encoder)."""
    ds = _read(data)
    ds.compress(RLELossless, encoding_plugin="pydicom")
    return _save(ds, RLELossless)


def jpeg2000_lossless(data: bytes) -> bytes:
    """JPEG 2000 Lossless (needs pylibjpeg-openjpeg, the ``codecs`` extra)."""
    ds = _read(data)
    ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    return _save(ds, JPEG2000Lossless)


#: name -> rewrite of one DICOM file
ENCODINGS: dict[str, Callable[[bytes], bytes]] = {
    "explicit-le": explicit_le,
    "implicit-le": implicit_le,
    "undefined-length-sequence": undefined_length_sequence,
    "deflate": deflated,
    "no-preamble": no_preamble,
    "rle": rle,
    "jpeg2000-lossless": jpeg2000_lossless,
}


def encoding_available(name: str) -> bool:
    """Whether the encoder of ``name`` can run here (JPEG 2000 needs a plugin)."""
    if name != "jpeg2000-lossless":
        return name in ENCODINGS
    try:
        from pydicom.pixels import get_encoder

        return bool(get_encoder(JPEG2000Lossless).is_available)
    except Exception:  # noqa: BLE001
        return False


def reencode_zip(src: str | Path, dst: str | Path, encoding: str) -> Path:
    """Copy a subject zip with every ``.dcm`` member rewritten in ``encoding`` (see :data:`ENCODINGS`)."""
    rewrite = ENCODINGS[encoding]
    dst = Path(dst)
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.lower().endswith(".dcm"):
                data = rewrite(data)
            zout.writestr(info.filename, data)
    return dst


__all__ = ["ENCODINGS", "encoding_available", "reencode_zip"]
