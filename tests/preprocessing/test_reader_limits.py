"""Hostile and broken subject zips: bombs, odd files, malformed values, impossible geometry.

Every case asserts one clear line naming what is wrong, the exit code where the
CLI is involved, bounded memory (cases that could allocate gigabytes on a
regression run in a subprocess capped with RLIMIT_AS), and nothing written.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hostile import (
    MiB,
    RawMember,
    edit_dicom,
    handmade_zip,
    lie_about_size,
    mimir_capped,
    rewrite_zip,
    series_of,
    zeros_member_zip,
)

from mimir.errors import GeometryError, ImageFileError, InputError, TruncatedZipError
from mimir.preprocessing import reader
from mimir.preprocessing.pipeline import load_image, preprocess, read_stations
from mimir.synth import generate_subject
from mimir.utils.install import extra_hint
from mimir.utils.limits import LimitError

#: Peak resident memory allowed to a capped `mimir preprocess` of one small hostile zip.
PEAK_RSS = 400 * MiB


@pytest.fixture(scope="module")
def subject(tmp_path_factory) -> Path:
    """One small, valid synthetic subject zip."""
    return generate_subject(tmp_path_factory.mktemp("subject"), seed=11, small=True).zip_path


def _one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def _water_members(zip_path: Path) -> dict[str, tuple[int, str]]:
    with zipfile.ZipFile(zip_path) as zf:
        out = {}
        for name in zf.namelist():
            if name.endswith(".dcm"):
                out[name] = series_of(zf.read(name))
        return out


# --------------------------------------------------------------------------- sizes


@pytest.mark.slow
def test_member_bomb_is_refused_before_inflating(tmp_path):
    """A ~300 KB zip whose one member inflates to 300 MiB: refused from the directory, in bounded memory."""
    bomb = zeros_member_zip(tmp_path / "1_20201_2_0.zip", "a.dcm", 300 * MiB)
    assert bomb.stat().st_size < 2 * MiB
    out = tmp_path / "out"
    r = mimir_capped("preprocess", str(bomb), "-o", str(out))
    assert r.returncode == 1
    line = _one_line(r.stderr)
    assert "a.dcm" in line and "300 MiB" in line and "MIMIR_MAX_MEMBER_BYTES" in line
    assert r.peak_rss < PEAK_RSS
    assert not out.exists() or not any(out.iterdir())


def test_lying_directory_cannot_make_a_member_larger(tmp_path):
    """The directory claims 1,000 bytes for 40 MiB of zeros: at most the claimed bytes are inflated."""
    bomb = zeros_member_zip(tmp_path / "lie.zip", "a.dcm", 40 * MiB)
    with zipfile.ZipFile(bomb) as zf:
        assert zf.getinfo("a.dcm").file_size == 40 * MiB
    small = tmp_path / "small.zip"
    with zipfile.ZipFile(small, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.dcm", bytes(40 * MiB))
    lie_about_size(small, "a.dcm", 1000)
    with pytest.raises(InputError) as err:
        reader.read_signal_slices(small)
    assert "a.dcm" in str(err.value) and "\n" not in str(err.value)


def test_member_over_the_cap_is_refused_on_the_bytes_read(tmp_path, monkeypatch):
    """With a directory that claims less than the cap, the cap still holds on the inflated bytes."""
    monkeypatch.setenv("MIMIR_MAX_MEMBER_BYTES", str(MiB))
    zf_path = tmp_path / "x.zip"
    with zipfile.ZipFile(zf_path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.dcm", bytes(3 * MiB))
    with zipfile.ZipFile(zf_path) as zf:
        info = zf.getinfo("a.dcm")
        info.file_size = 100  # what a lying directory would say
        with pytest.raises(InputError) as err:
            reader._read_member_bytes(zf, info, zf_path)
    # zipfile stops at the claimed size and the CRC no longer matches: damaged, not inflated
    assert "a.dcm" in str(err.value)
    with zipfile.ZipFile(zf_path) as zf:
        with pytest.raises(LimitError, match="MIMIR_MAX_MEMBER_BYTES"):
            reader._read_member_bytes(zf, zf.getinfo("a.dcm"), zf_path)


class _Inflations:
    """Stands in for the reader's inflate module and records what it is asked to inflate."""

    def __init__(self, real):
        self.real, self.max_lengths, self.outputs = real, [], []
        self.crc32 = real.crc32
        self.error = getattr(real, "error", None)

    def decompressobj(self, wbits):
        inflater = self.real.decompressobj(wbits)
        outer = self

        class Recording:
            def decompress(self, data, max_length):
                outer.max_lengths.append(max_length)
                out = inflater.decompress(data, max_length)
                outer.outputs.append(len(out))
                return out

            @property
            def eof(self):
                return inflater.eof

        return Recording()


@pytest.fixture
def inflations(monkeypatch):
    recorder = _Inflations(reader._zlib)
    monkeypatch.setattr(reader, "_zlib", recorder)
    return recorder


def _one_member(tmp_path, member: RawMember):
    path = handmade_zip(tmp_path / "x.zip", [member])
    return zipfile.ZipFile(path), path


def _dicom_like(n: int = 200_000) -> bytes:
    return b"".join(i.to_bytes(4, "little") for i in range(n // 4))


@pytest.mark.parametrize("claimed", [1000, 400_000])
def test_direct_reader_caps_what_a_lying_directory_can_inflate(tmp_path, inflations, claimed):
    """40 MiB of zeros that the directory calls smaller: the direct reader inflates at most the claimed
    size + 1 bytes (none when the compressed size is already more than deflate writes for the claim) and
    leaves the member to zipfile, which stops at the claimed size (bad CRC)."""
    path = tmp_path / "lie.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.dcm", bytes(40 * MiB))
    lie_about_size(path, "a.dcm", claimed)
    with zipfile.ZipFile(path) as zf, pytest.raises(TruncatedZipError) as err:
        reader._read_member_bytes(zf, zf.getinfo("a.dcm"), path)
    assert inflations.max_lengths == ([] if claimed == 1000 else [claimed + 1])
    assert inflations.outputs == inflations.max_lengths
    text = str(err.value)
    assert "member 'a.dcm' is damaged" in text and "CRC" in text and "\n" not in text


def test_direct_reader_inflates_nothing_past_a_declared_cap(tmp_path, monkeypatch, inflations):
    monkeypatch.setenv("MIMIR_MAX_MEMBER_BYTES", str(MiB))
    zf, path = _one_member(tmp_path, RawMember("a.dcm", bytes(3 * MiB)))
    with zf, pytest.raises(LimitError, match=r"member 'a.dcm' declares 3 MiB, more than 1 MiB .limit MIMIR_MAX_MEMBER"):
        reader._read_member_bytes(zf, zf.getinfo("a.dcm"), path)
    assert inflations.max_lengths == []


@pytest.mark.parametrize("damage", ["flipped-bytes", "wrong-crc", "cut-short", "compressed-size-too-large"])
def test_damaged_member_is_one_line_on_the_direct_path(tmp_path, damage):
    """The direct reader returns a member only when it reads cleanly; otherwise zipfile reads it and its
    error is the one-line TruncatedZipError it always was."""
    import zlib

    data = _dicom_like()
    deflater = zlib.compressobj(6, zlib.DEFLATED, -15)
    comp = deflater.compress(data) + deflater.flush()
    member = RawMember("a.dcm", data, compressed=comp)
    if damage == "flipped-bytes":
        member.compressed = comp[: len(comp) // 2] + bytes(64) + comp[len(comp) // 2 + 64 :]
    elif damage == "wrong-crc":
        member.crc = zlib.crc32(data) ^ 1
    elif damage == "cut-short":
        member.compressed = comp[: len(comp) // 2]
    else:  # more compressed bytes declared than the file holds
        member.compressed = comp[: len(comp) // 2]
        path = handmade_zip(tmp_path / "x.zip", [member])
        raw = bytearray(path.read_bytes())
        at = raw.rindex(b"PK\x01\x02")
        raw[at + 20 : at + 24] = (len(comp) * 2).to_bytes(4, "little")
        path.write_bytes(bytes(raw))
    path = tmp_path / "x.zip" if damage == "compressed-size-too-large" else handmade_zip(tmp_path / "x.zip", [member])
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("a.dcm")
        assert reader._read_member_direct(zf, info) is None
        with pytest.raises(TruncatedZipError) as err:
            reader._read_member_bytes(zf, info, path)
    text = str(err.value)
    assert "member 'a.dcm' is damaged" in text and "x.zip" in text and "\n" not in text


def test_local_header_is_checked_against_the_directory(tmp_path):
    """The local header's own name and extra lengths are used; a different name is refused as zipfile refuses it."""
    data = _dicom_like()
    extra = b"\xca\xfe\x08\x00" + bytes(8)
    zf, path = _one_member(tmp_path, RawMember("a.dcm", data, local_extra=extra))
    with zf:
        assert reader._read_member_direct(zf, zf.getinfo("a.dcm")) == data
    for local_name in (b"a.dcm.longer-name", b"b.dcm", b""):
        zf, path = _one_member(tmp_path, RawMember("a.dcm", data, local_name=local_name))
        with zf:
            info = zf.getinfo("a.dcm")
            assert reader._read_member_direct(zf, info) is None
            with pytest.raises(TruncatedZipError) as err:
                reader._read_member_bytes(zf, info, path)
        text = str(err.value)
        assert "member 'a.dcm' is damaged" in text and "differ" in text and "\n" not in text
    zf, path = _one_member(tmp_path, RawMember("a.dcm", data))
    raw = bytearray(path.read_bytes())
    raw[0:4] = b"PK\x03\x05"
    path.write_bytes(bytes(raw))
    with zipfile.ZipFile(path) as zf, pytest.raises(TruncatedZipError, match="Bad magic number"):
        reader._read_member_bytes(zf, zf.getinfo("a.dcm"), path)


def test_encrypted_and_unknown_methods_are_left_to_zipfile(tmp_path):
    for member in (RawMember("a.dcm", b"x" * 100, flags=0x01), RawMember("a.dcm", b"x" * 100, method=12),
                   RawMember("a.dcm", b"x" * 100, flags=0x40)):
        zf, _ = _one_member(tmp_path, member)
        with zf:
            assert reader._read_member_direct(zf, zf.getinfo("a.dcm")) is None


def test_manifest_bomb_is_refused(tmp_path, subject, monkeypatch):
    monkeypatch.setenv("MIMIR_MAX_MANIFEST_BYTES", str(2 * MiB))
    bomb = tmp_path / "m.zip"
    with zipfile.ZipFile(subject) as zin, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            if "manifest" not in info.filename:
                zout.writestr(info.filename, zin.read(info))
        zout.writestr("manifest.cvs", b"a.dcm,Dixon_x," * (4 * MiB // 14))
    with pytest.raises(LimitError) as err:
        reader.read_signal_slices(bomb)
    text = str(err.value)
    assert "manifest.cvs" in text and "MIMIR_MAX_MANIFEST_BYTES" in text and "\n" not in text
    monkeypatch.setenv("MIMIR_MAX_MANIFEST_BYTES", str(8 * MiB))  # raised: the manifest is read (and ignored)
    assert len(reader.read_signal_slices(bomb)) > 0


def test_total_and_member_count_caps_can_be_raised(subject, monkeypatch):
    monkeypatch.setenv("MIMIR_MAX_ZIP_BYTES", str(MiB))
    with pytest.raises(LimitError, match="more than 1 MiB .limit MIMIR_MAX_ZIP_BYTES"):
        reader.read_signal_slices(subject)
    monkeypatch.setenv("MIMIR_MAX_ZIP_MEMBERS", "10")
    monkeypatch.setenv("MIMIR_MAX_ZIP_BYTES", str(64 * MiB))
    with pytest.raises(LimitError, match=r"lists \d+ members.*MIMIR_MAX_ZIP_MEMBERS"):
        reader.read_signal_slices(subject)
    monkeypatch.setenv("MIMIR_MAX_ZIP_MEMBERS", "1000")
    assert len(reader.read_signal_slices(subject)) > 0


def test_total_cap_counts_inflated_bytes(tmp_path, monkeypatch):
    """A zip of a few kB whose members inflate past the total cap is stopped while reading."""
    path = tmp_path / "many.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(5):
            zf.writestr(f"{i}.dcm", bytes(MiB))
    assert path.stat().st_size < 100_000
    monkeypatch.setenv("MIMIR_MAX_ZIP_BYTES", str(3 * MiB))
    with pytest.raises(LimitError, match="inflates to more than 3 MiB in all"):
        reader.read_signal_slices(path)


def _deflated_header(data: bytes) -> bytes:
    """The preamble and file meta of ``data`` re-encoded as Deflated Explicit VR LE: what precedes the
    deflated data set (after the padded transfer syntax UID), for tests to append their own stream."""
    from mimir.synth.encodings import deflated

    good = deflated(data)
    at = good.index(b"1.2.840.10008.1.2.1.99") + 22
    return good[: at + at % 2]


def test_deflated_dicom_bomb_is_refused(subject, tmp_path, monkeypatch):
    """A member in Deflated Explicit VR LE whose data set inflates past the member cap."""
    import zlib

    target = _first_water(subject)
    monkeypatch.setenv("MIMIR_MAX_MEMBER_BYTES", str(MiB))

    def edit(name, data):
        if name != target:
            return data
        body = zlib.compressobj(9, zlib.DEFLATED, -15)
        bomb = body.compress(bytes(8 * MiB)) + body.flush()
        return _deflated_header(data) + bomb

    bad = rewrite_zip(subject, tmp_path / "defl.zip", edit)
    with pytest.raises(LimitError) as err:
        reader.read_signal_slices(bad)
    text = str(err.value)
    assert target in text and "deflated DICOM data set inflates to more than 1 MiB" in text


def test_bad_limit_value_is_one_line(subject, monkeypatch):
    from mimir.errors import MimirError

    monkeypatch.setenv("MIMIR_MAX_ZIP_BYTES", "lots")
    with pytest.raises(MimirError, match=r"\$MIMIR_MAX_ZIP_BYTES is 'lots', not a whole number"):
        reader.read_signal_slices(subject)


# --------------------------------------------------------------------------- odd files


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifo_and_device_are_refused_without_reading(tmp_path, subject):
    fifo = tmp_path / "2_20201_2_0.zip"
    os.mkfifo(fifo)
    dev = tmp_path / "3_20201_2_0.zip"
    dev.symlink_to("/dev/zero")
    link = tmp_path / "4_20201_2_0.zip"
    link.symlink_to(subject)
    broken = tmp_path / "5_20201_2_0.zip"
    broken.symlink_to(tmp_path / "nowhere.zip")
    out = tmp_path / "out"
    r = mimir_capped("preprocess", str(fifo), str(dev), str(broken), str(link), "-o", str(out), "--no-cache",
                     timeout=60)
    assert r.returncode == 2  # the symlink to a regular zip is read
    lines = r.error_lines
    assert any("2_20201_2_0.zip" in x and "FIFO" in x for x in lines), lines
    assert any("3_20201_2_0.zip" in x and "character device" in x for x in lines), lines
    assert any("5_20201_2_0.zip" in x and "broken symbolic link" in x for x in lines), lines
    assert sorted(p.name for p in out.iterdir()) == ["4_20201_2_0.npy"]
    assert r.peak_rss < PEAK_RSS


def test_folder_is_refused(tmp_path):
    with pytest.raises(InputError, match="is a folder"):
        reader.read_signal_slices(tmp_path)


def test_npy_header_is_checked_before_loading(tmp_path):
    from numpy.lib import format as npy_format

    huge = tmp_path / "huge.npy"
    with open(huge, "wb") as fh:
        npy_format.write_array_header_1_0(fh, {"descr": "|u1", "fortran_order": False, "shape": (100000, 100000, 100)})
        fh.write(b"\0" * 16)
    with pytest.raises(ImageFileError, match=r"shape '\(100000, 100000, 100\)'"):
        load_image(huge)
    cut = tmp_path / "cut.npy"
    with open(cut, "wb") as fh:
        npy_format.write_array_header_1_0(fh, {"descr": "|u1", "fortran_order": False, "shape": (3, 256, 256)})
        fh.write(b"\1" * 1000)
    with pytest.raises(ImageFileError, match="cut off"):
        load_image(cut)
    obj = tmp_path / "obj.npy"
    np.save(obj, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ImageFileError, match="object"):
        load_image(obj)
    good = tmp_path / "good.npy"
    image = np.arange(3 * 256 * 256, dtype=np.uint8).reshape(3, 256, 256)
    np.save(good, image)
    loaded = load_image(good)
    assert np.array_equal(loaded, image) and loaded.flags.writeable


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_npy_fifo_is_refused(tmp_path):
    fifo = tmp_path / "x.npy"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="FIFO"):
        load_image(fifo)


# --------------------------------------------------------------------------- malformed values


def _first_water(zip_path: Path) -> str:
    members = _water_members(zip_path)
    return next(name for name, (_, desc) in members.items() if "_W" in desc)


CASES = [
    ({"PixelSpacing": "0\\0"}, "PixelSpacing is '0\\0'"),
    ({"PixelSpacing": "-2.2\\-2.2"}, "PixelSpacing is '-2.2\\-2.2'"),
    ({"PixelSpacing": "nan\\nan"}, "PixelSpacing is 'nan\\nan'"),
    ({"PixelSpacing": "inf\\inf"}, "PixelSpacing is 'inf\\inf'"),
    ({"PixelSpacing": "1e6\\1e6"}, "PixelSpacing is '1e+06\\1e+06'"),
    ({"PixelSpacing": "2.2"}, "PixelSpacing is"),
    ({"PixelSpacing": "60\\60"}, "PixelSpacing is '60\\60'"),
    ({"RescaleSlope": "nan", "RescaleIntercept": "0"}, "RescaleSlope is 'nan'"),
    ({"RescaleSlope": "1e308", "RescaleIntercept": "0"}, "RescaleSlope is '1e+308'"),
    ({"Rows": 0, "Columns": 0}, "Rows is '0'"),
    ({"Rows": 1, "Columns": 1}, "Rows is '1'"),
    ({"Rows": 3000}, "Rows is '3000'"),
    ({"ImagePositionPatient": "inf\\0\\0"}, "ImagePositionPatient is 'inf\\0\\0'"),
    ({"ImagePositionPatient": "0\\0\\-1e30"}, "ImagePositionPatient is '0\\0\\-1e+30'"),
]


@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "pydicom"])
@pytest.mark.parametrize("attrs, expected", CASES, ids=[next(iter(c[0])) + "=" + str(next(iter(c[0].values()))) for c in CASES])
def test_malformed_values_name_the_attribute(subject, tmp_path, monkeypatch, attrs, expected, fast):
    if not fast:
        monkeypatch.setattr(reader, "_fast_slice", lambda data: None)
    target = _first_water(subject)
    bad = rewrite_zip(subject, tmp_path / "bad.zip", lambda n, d: edit_dicom(d, **attrs) if n == target else d)
    with pytest.raises(InputError) as err:
        read_stations(bad)
    text = str(err.value)
    assert expected in text, text
    assert target in text and "bad.zip" in text and "\n" not in text and len(text) < 600


def test_pixel_data_shorter_than_rows_x_columns(subject, tmp_path):
    target = _first_water(subject)
    bad = rewrite_zip(subject, tmp_path / "bad.zip", lambda n, d: edit_dicom(d, Rows=200) if n == target else d)
    with pytest.raises(InputError, match=r"PixelData is '\d+ bytes'; expected at least Rows x Columns x 2"):
        read_stations(bad)


def test_long_series_description_is_cut_in_the_message(subject, tmp_path):
    target = _first_water(subject)
    desc = "Dixon_W" + "x" * 1_000_000

    def edit(name, data):
        return edit_dicom(data, SeriesDescription=desc, SeriesNumber=99) if name == target else data

    bad = rewrite_zip(subject, tmp_path / "bad.zip", edit)
    with pytest.raises(InputError) as err:
        read_stations(bad)
    assert "series 99" in str(err.value) and len(str(err.value)) < 400


def test_compressed_syntax_without_decoder_names_the_pip_install(subject, tmp_path, monkeypatch):
    """JPEG Lossless with no plugin: the message names the syntax and the install, not a damaged zip."""
    import io

    import pydicom

    monkeypatch.setattr(reader, "_decoder_available", lambda syntax: False)
    target = _first_water(subject)

    def edit(name, data):
        if name != target:
            return data
        ds = pydicom.dcmread(io.BytesIO(data))
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.70"
        from pydicom.encaps import encapsulate

        ds.PixelData = encapsulate([b"\xff\xd8" + b"\0" * 64 + b"\xff\xd9"])
        ds["PixelData"].VR = "OB"
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        return buf.getvalue()

    bad = rewrite_zip(subject, tmp_path / "bad.zip", edit)
    with pytest.raises(InputError) as err:
        read_stations(bad)
    text = str(err.value)
    assert "JPEG Lossless" in text and "1.2.840.10008.1.2.4.70" in text
    assert extra_hint("codecs").rstrip(".") in text and "pylibjpeg-libjpeg" in text
    assert "damaged" not in text


def test_file_without_preamble_reads_as_implicit_little_endian(subject, tmp_path):
    """Members written without the 128-byte preamble and file meta give the same image."""
    import io

    import pydicom

    def strip(name, data):
        if not name.endswith(".dcm"):
            return data
        ds = pydicom.dcmread(io.BytesIO(data))
        from pydicom.filebase import DicomBytesIO

        buf = DicomBytesIO()
        buf.is_implicit_VR, buf.is_little_endian = True, True
        pydicom.filewriter.write_dataset(buf, pydicom.Dataset(ds))  # implicit VR LE by default, no meta
        out = buf.getvalue()
        assert out[128:132] != b"DICM"
        return out

    bare = rewrite_zip(subject, tmp_path / "bare.zip", strip)
    assert np.array_equal(preprocess(bare, cache=False), preprocess(subject, cache=False))


# --------------------------------------------------------------------------- geometry


def _shift_series(zip_path: Path, dst: Path, numbers: set[int], dz: float = 0.0, **attrs) -> Path:
    import io

    import pydicom

    def edit(name, data):
        if not name.endswith(".dcm"):
            return data
        ds = pydicom.dcmread(io.BytesIO(data))
        if int(ds.SeriesNumber) not in numbers:
            return data
        if dz:
            x, y, z = (float(v) for v in ds.ImagePositionPatient)
            ds.ImagePositionPatient = [x, y, z + dz]
        for k, v in attrs.items():
            setattr(ds, k, v)
        buf = io.BytesIO()
        ds.save_as(buf)
        return buf.getvalue()

    return rewrite_zip(zip_path, dst, edit)


def _all_series(zip_path: Path) -> set[int]:
    return {n for n, _ in _water_members(zip_path).values()}


def test_station_far_away_is_refused(subject, tmp_path):
    """The last station moved 10 m down: refused (it would fuse into a mostly empty volume)."""
    last = max(_all_series(subject))
    last_station = {n for n in _all_series(subject) if (n - 1) // 4 == (last - 1) // 4}
    bad = _shift_series(subject, tmp_path / "far.zip", last_station, dz=-10_000.0)
    with pytest.raises(GeometryError) as err:
        read_stations(bad)
    text = str(err.value)
    assert "gaps over 100 mm are refused" in text and "ImagePositionPatient" in text and "station 6" in text


@pytest.mark.slow
def test_huge_pixel_spacing_is_refused_in_bounded_memory(subject, tmp_path):
    """PixelSpacing 15\\15 on every slice (7x too large, within the per-slice range): refused from the
    headers before fusion allocates its volume."""
    bad = _shift_series(subject, tmp_path / "9_20201_2_0.zip", _all_series(subject), PixelSpacing=[15, 15])
    out = tmp_path / "out"
    r = mimir_capped("preprocess", str(bad), "-o", str(out), "--no-cache")
    assert r.returncode == 1, r.stderr
    line = _one_line(r.stderr)
    assert "Rows x PixelSpacing is 900 mm, larger than a body" in line
    assert r.peak_rss < PEAK_RSS
    assert not out.exists() or not any(out.iterdir())


def test_two_slices_at_one_position_are_refused(subject, tmp_path):
    import io

    import pydicom

    first = min(_all_series(subject))
    water = {n for n, d in _water_members(subject).values() if "_W" in d and (n - 1) // 4 == (first - 1) // 4}
    top: dict[int, list[float]] = {}

    def edit(name, data):
        if not name.endswith(".dcm"):
            return data
        ds = pydicom.dcmread(io.BytesIO(data))
        if int(ds.SeriesNumber) not in water and int(ds.SeriesNumber) not in {w - 1 for w in water}:
            return data
        pos = top.setdefault(int(ds.SeriesNumber), [float(v) for v in ds.ImagePositionPatient])
        ds.ImagePositionPatient = [pos[0], pos[1], 0.0]
        buf = io.BytesIO()
        ds.save_as(buf)
        return buf.getvalue()

    bad = rewrite_zip(subject, tmp_path / "flat.zip", edit)
    with pytest.raises(GeometryError, match=r"station 1 .*slice spacing from ImagePositionPatient is 0 mm"):
        read_stations(bad)


def test_valid_subject_still_reads(subject):
    stations = read_stations(subject)
    assert len(stations.water) == 6
    assert not isinstance(TruncatedZipError("x"), LimitError)


def test_an_encrypted_member_is_one_clear_line(tmp_path):
    member = RawMember("1.2.3.dcm", _dicom_like(4000), flags=0x1)  # "encrypted": zipfile would ask for a password
    zf, path = _one_member(tmp_path, member)
    with zf, pytest.raises(InputError) as err:
        reader._read_member_bytes(zf, zf.getinfo("1.2.3.dcm"), path)
    message = str(err.value)
    assert message.count("\n") == 0
    assert "member '1.2.3.dcm' is encrypted" in message and str(path) in message
    assert "decrypt it or download it again" in message
    with pytest.raises(InputError, match="is encrypted"):
        preprocess(path, cache=False)


def test_deflated_dicom_that_only_pydicom_would_parse_is_refused(subject, tmp_path, monkeypatch):
    """The deflated bomb above without its preamble: the fast path cannot read its file meta, and pydicom
    (which would inflate it with no bound) is not given it: one line, no gigabytes."""
    import zlib

    target = _first_water(subject)

    def edit(name, data):
        if name != target:
            return data
        body = zlib.compressobj(9, zlib.DEFLATED, -15)
        return _deflated_header(data)[132:] + body.compress(bytes(64 * MiB)) + body.flush()  # no preamble

    bad = rewrite_zip(subject, tmp_path / "defl.zip", edit)
    import pydicom

    inflated = []
    real = zlib.decompress
    monkeypatch.setattr(zlib, "decompress", lambda *a, **k: inflated.append(1) or real(*a, **k))
    with pytest.raises(InputError) as err:
        reader.read_signal_slices(bad)
    assert not inflated  # pydicom never got to inflate it
    text = str(err.value)
    assert text.count("\n") == 0
    assert f"member '{target}' is a deflated DICOM file that cannot be read (its header is malformed" in text
    assert pydicom  # imported: the guard, not a missing pydicom, stopped it


def test_damaged_deflated_data_set_is_one_line_not_a_lost_slice(subject, tmp_path):
    """A deflated slice whose compressed data set is garbage: refused with the member named (it was
    silently dropped as "not DICOM", leaving its station a slice short)."""
    target = _first_water(subject)

    def edit(name, data):
        if name != target:
            return data
        return _deflated_header(data) + b"\xff" * 4000  # not a deflate stream

    bad = rewrite_zip(subject, tmp_path / "damaged.zip", edit)
    with pytest.raises(InputError) as err:
        reader.read_signal_slices(bad)
    assert str(err.value).count("\n") == 0
    assert f"member '{target}' is a deflated DICOM file that cannot be read" in str(err.value)
