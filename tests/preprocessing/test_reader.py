"""Reading real-shaped zips: every variant the format document lists (spec sections 1-3)."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from mimir import errors
from mimir.preprocessing.reader import read_signal_slices
from mimir.preprocessing.pipeline import IMAGE_SHAPE, preprocess, read_stations
from mimir.synth import generate_subject

SMALL = dict(small=True)


@pytest.fixture(scope="module")
def subjects(tmp_path_factory):
    """One small subject per variant, same seed, so that they can be compared."""
    out = tmp_path_factory.mktemp("subjects")
    cache = {}

    def get(variant=None, seed=7):
        key = (variant, seed)
        if key not in cache:
            cache[key] = generate_subject(out / f"{variant}-{seed}", seed=seed, variant=variant, **SMALL)
        return cache[key]

    return get


def test_normal_subject_has_six_consistent_stations(subjects):
    s = subjects()
    stations = read_stations(s.zip_path)
    assert len(stations.water) == len(stations.fat) == 6
    z = stations.positions[:, 2]
    assert np.all(np.diff(z) < 0)  # head first
    for w, f in zip(stations.water, stations.fat):
        assert "_W" in w.description and "_F" in f.description
        assert w.voxels.shape == f.voxels.shape
        assert w.voxels.dtype == np.float32
        assert np.allclose(w.position, f.position)
    assert stations.warnings == []
    assert sorted({round(float(d), 1) for d in stations.spacings[:, 2]}) == [3.0, 3.5, 4.0, 4.5]


def test_slices_are_water_and_fat_only(subjects):
    slices = read_signal_slices(subjects().zip_path)
    assert slices and all(("_W" in s.description) or ("_F" in s.description) for s in slices)
    assert all(s.pixels.dtype == np.float32 for s in slices)


def test_preprocess_makes_a_uint8_image(subjects):
    image = preprocess(subjects().zip_path, cache=False)
    assert image.shape == IMAGE_SHAPE and image.dtype == np.uint8
    for channel in image:
        assert channel.max() > 100  # every channel holds a body, not a blank
        assert channel.min() == 0


@pytest.mark.parametrize("variant", ["no_manifest", "manifest_csv"])
def test_manifest_is_only_a_hint(subjects, variant):
    ref = preprocess(subjects().zip_path, cache=False)
    assert np.array_equal(preprocess(subjects(variant).zip_path, cache=False), ref)


def test_wrong_manifest_is_detected_and_ignored(subjects, tmp_path):
    src = subjects().zip_path
    bad = tmp_path / src.name
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(bad, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if "manifest" in info.filename:
                # Swap the labels: every water/fat row claims in-phase and vice versa.
                text = data.decode()
                text = text.replace("_W", "_X").replace("_in", "_W").replace("_X", "_in")
                text = text.replace("_F", "_Y").replace("_opp", "_F").replace("_Y", "_opp")
                data = text.encode()
            zout.writestr(info, data)
    assert np.array_equal(preprocess(bad, cache=False), preprocess(src, cache=False))


def test_rescan_keeps_the_most_recent_station(subjects):
    s = subjects("rescan")
    stations = read_stations(s.zip_path)
    assert len(stations.water) == 6
    assert any("acquired 2 times" in w for w in stations.warnings)
    assert np.array_equal(preprocess(s.zip_path, cache=False), preprocess(subjects().zip_path, cache=False))


@pytest.mark.parametrize("variant", ["missing_slice", "wf_shape_mismatch"])
def test_shape_mismatch_is_cropped_with_a_warning(subjects, variant):
    s = subjects(variant)
    stations = read_stations(s.zip_path)
    assert any("differ in shape" in w for w in stations.warnings)
    for w, f in zip(stations.water, stations.fat):
        assert w.voxels.shape == f.voxels.shape
    assert preprocess(s.zip_path, cache=False).shape == IMAGE_SHAPE


def test_fat_water_swap_is_processed_like_the_original(subjects):
    assert preprocess(subjects("fat_water_swap").zip_path, cache=False).shape == IMAGE_SHAPE


def test_truncated_zip_fails_clearly(subjects):
    s = subjects("truncated")
    with pytest.raises(errors.TruncatedZipError) as info:
        preprocess(s.zip_path, cache=False)
    msg = str(info.value)
    assert s.zip_path.name in msg and "\n" not in msg and "truncated" in msg


def test_not_a_zip_fails_clearly(tmp_path):
    p = tmp_path / "1000001_20201_2_0.zip"
    p.write_bytes(b"this is not a zip at all" * 10)
    with pytest.raises(errors.NotAZipError, match="is not a zip file"):
        preprocess(p, cache=False)


def test_missing_file_and_folder_fail_clearly(tmp_path):
    with pytest.raises(errors.InputError, match="file not found"):
        preprocess(tmp_path / "nope.zip", cache=False)
    with pytest.raises(errors.InputError, match="is a folder"):
        preprocess(tmp_path, cache=False)


def test_zip_without_dicom_fails_clearly(tmp_path):
    p = tmp_path / "x.zip"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("manifest.cvs", "filename,patientid\n")
        zf.writestr("readme.txt", "hello")
    with pytest.raises(errors.NoDicomError):
        preprocess(p, cache=False)


def test_empty_zip_fails_clearly(tmp_path):
    p = tmp_path / "x.zip"
    zipfile.ZipFile(p, "w").close()
    with pytest.raises(errors.NoDicomError):
        preprocess(p, cache=False)


def test_zip_with_only_in_phase_series_fails_clearly(subjects, tmp_path):
    src = subjects().zip_path
    p = tmp_path / "inonly.zip"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(p, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if b"Dixon" in data and (b"_W" in data[:4096] or b"_F" in data[:4096]):
                continue
            zout.writestr(info, data)
    with pytest.raises(errors.MissingSeriesError):
        preprocess(p, cache=False)


def test_damaged_member_fails_clearly(subjects, tmp_path):
    raw = bytearray(subjects().zip_path.read_bytes())
    # Flip bytes in the middle of the archive: a member's data no longer matches its CRC.
    mid = len(raw) // 2
    raw[mid : mid + 64] = bytes(64)
    p = tmp_path / "damaged.zip"
    p.write_bytes(bytes(raw))
    with pytest.raises(errors.InputError):
        preprocess(p, cache=False)


def test_water_fat_position_mismatch_fails(subjects):
    with pytest.raises(errors.InconsistentStationsError, match="different positions"):
        preprocess(subjects("wf_position_mismatch").zip_path, cache=False)


def test_missing_station_still_makes_an_image(subjects):
    s = subjects("missing_station")
    assert len(read_stations(s.zip_path).water) == 5
    assert preprocess(s.zip_path, cache=False).shape == IMAGE_SHAPE


def test_no_overlap_warns_and_makes_an_image(subjects, caplog):
    from mimir.preprocessing.fusion import fuse_stations

    fused = fuse_stations(read_stations(subjects("no_overlap").zip_path))
    assert any("no overlap" in w for w in fused.warnings)


def test_cache_hit_skips_decoding(subjects, monkeypatch):
    import mimir.preprocessing.pipeline as pipeline

    s = subjects()
    first = preprocess(s.zip_path)
    monkeypatch.setattr(pipeline, "read_stations", lambda p: (_ for _ in ()).throw(AssertionError("decoded")))
    assert np.array_equal(preprocess(s.zip_path), first)


def test_cache_is_keyed_by_content_not_name(subjects, tmp_path, monkeypatch):
    import shutil

    import mimir.preprocessing.pipeline as pipeline

    s = subjects()
    first = preprocess(s.zip_path)
    copy = tmp_path / "renamed.zip"
    shutil.copy(s.zip_path, copy)
    monkeypatch.setattr(pipeline, "read_stations", lambda p: (_ for _ in ()).throw(AssertionError("decoded")))
    assert np.array_equal(preprocess(copy), first)


def test_damaged_cache_entry_is_rebuilt(subjects):
    from mimir.preprocessing import cache
    from mimir.preprocessing.pipeline import PIPELINE_VERSION

    s = subjects()
    first = preprocess(s.zip_path)
    entry = cache.entry_path(cache.file_sha256(s.zip_path), PIPELINE_VERSION)
    entry.write_bytes(b"garbage")
    assert np.array_equal(preprocess(s.zip_path), first)
    with np.load(entry) as rebuilt:
        assert np.array_equal(rebuilt["image"], first)


def test_fast_header_walker_agrees_with_pydicom(subjects):
    import pydicom

    from mimir.preprocessing import reader as dr

    with zipfile.ZipFile(subjects("rescan").zip_path) as zf:
        members = [i for i in zf.infolist() if i.filename.endswith(".dcm")]
        for info in members[:: max(1, len(members) // 150)]:
            data = zf.read(info)
            fast = dr._fast_slice(data)
            assert fast is not None
            description, attrs = fast
            ds = pydicom.dcmread(io.BytesIO(data))
            assert description == ds.SeriesDescription
            a = dr._slice_from_fast(attrs, description)
            b = dr._slice_from_dataset(ds, description, info.filename, "x.zip")
            assert np.array_equal(a.pixels, b.pixels)
            assert np.array_equal(a.position, b.position) and np.array_equal(a.pixel_spacing, b.pixel_spacing)
            assert (a.series_number, a.series_time) == (b.series_number, b.series_time)


def test_pydicom_fallback_gives_the_same_image(subjects, monkeypatch):
    from mimir.preprocessing import reader as dr

    s = subjects()
    fast = preprocess(s.zip_path, cache=False)
    monkeypatch.setattr(dr, "_fast_slice", lambda data: None)
    assert np.array_equal(preprocess(s.zip_path, cache=False), fast)


def test_rescaled_pixels_are_applied(tmp_path):
    """A file with RescaleSlope/Intercept (not in UK Biobank data) is rescaled on both paths."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    from mimir.preprocessing import reader as dr

    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    ds.SeriesDescription = "Dixon_noBH_W"
    ds.SeriesNumber = 4
    ds.SeriesTime = "101010.000000"
    ds.ImagePositionPatient = [-250.0, -187.5, 10.0]
    ds.PixelSpacing = [2.2321429, 2.2321429]
    ds.Rows, ds.Columns = 2, 3
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 16, 12, 11, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.RescaleSlope, ds.RescaleIntercept = 2, -1
    ds.PixelData = np.arange(6, dtype="<u2").tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    description, attrs = dr._fast_slice(data)
    fast = dr._slice_from_fast(attrs, description)
    slow = dr._slice_from_dataset(pydicom.dcmread(io.BytesIO(data)), description, "m.dcm", "x.zip")
    expected = np.arange(6, dtype=np.float32).reshape(2, 3) * 2 - 1
    assert np.array_equal(fast.pixels, expected) and np.array_equal(slow.pixels, expected)


# --------------------------------------------------------------------------- the reader's fast paths


def test_pipeline_import_leaves_pydicom_out():
    """pydicom (~0.15 s) and requests are imported only when a file needs the general parser."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import mimir

    code = (
        "import sys, mimir.preprocessing.pipeline\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pydicom', 'requests')))"
    )
    src = str(Path(mimir.__file__).resolve().parents[1])
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False,
                       env={**os.environ, "PYTHONPATH": src})
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]"


def _assert_same_slices(a, b):
    """Every field of every slice equal, bit for bit (arrays: dtype, shape and bytes)."""
    import dataclasses

    from mimir.preprocessing.reader import SignalSlice

    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        for field in dataclasses.fields(SignalSlice):
            u, v = getattr(x, field.name), getattr(y, field.name)
            if isinstance(u, np.ndarray):
                assert (u.dtype, u.shape, u.tobytes()) == (v.dtype, v.shape, v.tobytes()), field.name
            else:
                assert (type(u), u) == (type(v), v), field.name


def _count_direct_reads(monkeypatch):
    """Patch the direct member reader to count its reads: {'read': n, 'left to zipfile': m}."""
    from mimir.preprocessing import reader

    counts = {"read": 0, "left to zipfile": 0}
    direct = reader._read_member_direct

    def counting(zf, info):
        data = direct(zf, info)
        counts["read" if data is not None else "left to zipfile"] += 1
        return data

    monkeypatch.setattr(reader, "_read_member_direct", counting)
    return counts


def test_direct_member_reader_gives_the_slices_zipfile_gives(subjects, monkeypatch):
    """Every member read and inflated by the reader itself; the same slices when zipfile reads them."""
    from mimir.preprocessing import reader

    zip_path = generate_subject(subjects().zip_path.parent / "direct", seed=23, small=True).zip_path
    with monkeypatch.context() as m:
        counts = _count_direct_reads(m)
        direct = read_signal_slices(zip_path)
    assert counts["read"] > len(direct) // 2 and counts["left to zipfile"] == 0
    with monkeypatch.context() as m:
        m.setattr(reader, "_read_member_direct", lambda zf, info: None)
        m.setattr(reader, "_zlib", None)  # the zipfile path never touches the direct reader's inflater
        through_zipfile = read_signal_slices(zip_path)
    _assert_same_slices(direct, through_zipfile)


@pytest.mark.parametrize("layout", ["stored", "descriptor-and-local-extra", "zlib-fallback"])
def test_direct_member_reader_handles_other_layouts(subjects, tmp_path, monkeypatch, layout):
    """Stored members, sizes in data descriptors, local extra fields, and zlib when isal is missing."""
    import zlib

    from hostile import RawMember, handmade_zip

    from mimir.preprocessing import reader

    src = subjects().zip_path
    expected = read_signal_slices(src)
    with zipfile.ZipFile(src) as zf:
        members = [(info.filename, zf.read(info)) for info in zf.infolist()]
    if layout == "stored":
        copy = handmade_zip(tmp_path / "x.zip", [RawMember(n, d, method=zipfile.ZIP_STORED) for n, d in members])
    elif layout == "descriptor-and-local-extra":
        extra = b"UT\x05\x00\x01\x00\x00\x00\x00" + b"\xca\xfe\x04\x00abcd"  # the directory has none
        copy = handmade_zip(tmp_path / "x.zip", [RawMember(n, d, flags=0x08, local_extra=extra) for n, d in members])
    else:
        monkeypatch.setattr(reader, "_zlib", zlib)
        copy = src
    counts = _count_direct_reads(monkeypatch)
    _assert_same_slices(read_signal_slices(copy), expected)
    assert counts["read"] > 0 and counts["left to zipfile"] == 0


def _reference_walk(data, pos, explicit, stop_group):
    """The element walk as first written (before the walker compared header words): the reference."""
    import struct

    from mimir.preprocessing.reader import (
        _LONG_VRS,
        _PIXEL_DATA,
        _UNDEFINED,
        _WANTED,
        _skip_items,
    )

    values = {}
    end = len(data)
    while pos + 8 <= end:
        group, elem = struct.unpack_from("<HH", data, pos)
        if stop_group is not None and group != stop_group:
            break
        tag = (group << 16) | elem
        if explicit:
            vr = data[pos + 4 : pos + 6]
            if vr in _LONG_VRS:
                if pos + 12 > end:
                    return None
                (length,) = struct.unpack_from("<I", data, pos + 8)
                pos += 12
            else:
                (length,) = struct.unpack_from("<H", data, pos + 6)
                pos += 8
        else:
            vr = b""
            (length,) = struct.unpack_from("<I", data, pos + 4)
            pos += 8
        if length == _UNDEFINED:
            if tag == _PIXEL_DATA:
                return None
            skipped = _skip_items(data, pos, explicit and vr != b"UN", 0)
            if skipped is None:
                return None
            pos = skipped
            continue
        if pos + length > end:
            return None
        if tag in _WANTED or tag == _PIXEL_DATA or group == 0x0002:
            values[tag] = data[pos : pos + length]
        pos += length
        if tag == _PIXEL_DATA:
            break
    return values, pos


def _agree_with_reference(data: bytes) -> None:
    from mimir.preprocessing import reader as dr

    def as_tags(walked, keep):
        if walked is None:
            return None
        values, pos = walked
        return {t: v for t, v in values.items() if t in keep}, pos

    keep = set(dr._WANTED) | {dr._PIXEL_DATA}
    for pos, explicit in ((132, True), (0, False), (0, True)):
        ref = as_tags(_reference_walk(data, pos, explicit, None), keep)
        new = as_tags(dr._walk(data, pos, explicit), {dr._key(t) for t in keep})
        assert new == (None if ref is None else ({dr._key(t): v for t, v in ref[0].items()}, ref[1])), (pos, explicit)
    ref = as_tags(_reference_walk(data, 132, True, 0x0002), {dr._TRANSFER_SYNTAX})
    new = dr._walk(data, 132, True, meta=True)
    assert new == (None if ref is None else ({dr._key(t): v for t, v in ref[0].items()}, ref[1]))


def test_element_walker_agrees_with_the_reference_walk_on_damaged_files(subjects, tmp_path):
    """Same values, same end, same refusals as the plain walk, on real files of each encoding and
    on thousands of copies with bytes of their element headers overwritten or cut off."""
    import random

    from mimir.synth.encodings import reencode_zip

    src = subjects().zip_path
    files = []
    for encoding in ("explicit-le", "implicit-le", "undefined-length-sequence", "no-preamble"):
        with zipfile.ZipFile(reencode_zip(src, tmp_path / f"{encoding}.zip", encoding)) as zf:
            dcm = [i for i in zf.infolist() if i.filename.endswith(".dcm")]
            files += [zf.read(i) for i in dcm[:2]]
    rng = random.Random(20201)
    specials = [b"\xff\xff\xff\xff", b"OB", b"SQ", b"UN", b"OW\x00\x00", b"\xfe\xff\x00\xe0", b"\xfe\xff\xdd\xe0",
                b"\xe0\x7f\x10\x00", b"\x02\x00", b"\x00\x00"]
    for data in files:
        _agree_with_reference(data)
        header_end = data.rindex(b"\xe0\x7f\x10\x00") + 16  # the element headers, not the pixel values
        for _ in range(400):
            damaged = bytearray(data)
            for _ in range(rng.randint(1, 3)):
                at = rng.randrange(0, header_end)
                patch = rng.choice(specials) if rng.random() < 0.5 else bytes([rng.randrange(256)])
                damaged[at : at + len(patch)] = patch
            if rng.random() < 0.2:
                del damaged[rng.randrange(0, len(damaged)) :]
            _agree_with_reference(bytes(damaged))
