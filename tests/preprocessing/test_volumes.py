"""NIfTI volumes (``--volumes``): the same fusion as the image, bit for bit, and exact scanner geometry.

The geometry test reads the source zip independently (pydicom: each water
slice's ImagePositionPatient, PixelSpacing and pixels), picks voxels of the
written water volume in the middle of each station (away from overlaps,
where fading and intensity correction change values), maps them to scanner
coordinates with the file's affine, and checks that the value there is the
source's at that position: the pixel itself for a station copied onto the
grid, the linear interpolation between the two source slices around it for
a resampled one. An affine off by one voxel (or one slice) fails it.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest

nib = pytest.importorskip("nibabel")

from mimir import __version__  # noqa: E402
from mimir.batch.volumes import convert_subject  # noqa: E402
from mimir.errors import MissingSeriesError  # noqa: E402
from mimir.preprocessing.fusion import OUT_SPACING, TRIM_SLICES, fuse_channel, fuse_stations  # noqa: E402
from mimir.preprocessing.pipeline import PIPELINE_VERSION, preprocess, read_station_lists, read_stations  # noqa: E402
from mimir.preprocessing.projection import body_mask  # noqa: E402
from mimir.preprocessing.reader import read_signal_slices  # noqa: E402
from mimir.preprocessing.stations import pair_contrast  # noqa: E402
from mimir.preprocessing.volumes import CONTRASTS, parse_contrasts, read_subject  # noqa: E402
from mimir.synth import generate_subject  # noqa: E402

ALL = tuple(CONTRASTS)


def _convert(zip_path: Path, out: Path, contrasts: tuple[str, ...] = ALL) -> dict:
    convert_subject(zip_path, out, contrasts, cache=False)
    stem = zip_path.name[:-4]
    return json.loads((out / f"{stem}_volumes.json").read_text())


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """A small subject converted with all five contrasts: (zip, output folder, sidecar)."""
    root = tmp_path_factory.mktemp("vol-small")
    zip_path = generate_subject(root, seed=5, small=True).zip_path
    return zip_path, root / "out", _convert(zip_path, root / "out")


def _load(out: Path, zip_path: Path, contrast: str):  # noqa: ANN202
    return nib.load(str(out / f"{zip_path.name[:-4]}_{contrast}.nii.gz"))


@pytest.mark.parametrize("kernels", ["1", "0"])
def test_water_and_fat_equal_the_fused_volumes_bit_for_bit(small, kernels, monkeypatch) -> None:
    """The file's numbers are fuse_stations' (what the image is made from), on the compiled and NumPy paths."""
    zip_path, out, _ = small
    monkeypatch.setenv("MIMIR_KERNELS", kernels)
    ref = fuse_stations(read_stations(zip_path))
    for name in ("water", "fat"):
        img = _load(out, zip_path, name)
        assert img.get_data_dtype() == np.float64
        data = np.asanyarray(img.dataobj)
        assert data.dtype == np.float64 and data.shape == getattr(ref, name).shape
        assert np.array_equal(data, getattr(ref, name))  # bit for bit (float64 == float64, no NaN)
        assert data.tobytes() == np.ascontiguousarray(getattr(ref, name)).tobytes()


def test_in_and_opp_go_through_the_same_fusion(small, monkeypatch) -> None:
    zip_path, out, _ = small
    stations, grouped = read_station_lists(zip_path, ("water", "fat", "in", "opp"))
    water = fuse_stations(stations).water
    for name, marker in (("in", "_in"), ("opp", "_opp")):
        channel = pair_contrast(grouped, stations, marker, name, zip_path)
        data = np.asanyarray(_load(out, zip_path, name).dataobj)
        assert np.array_equal(data, fuse_channel(channel, stations))
        monkeypatch.setenv("MIMIR_KERNELS", "0")
        assert np.array_equal(data, fuse_channel(channel, stations))  # NumPy path: the same bits
        monkeypatch.setenv("MIMIR_KERNELS", "1")
        assert data.shape == water.shape
    # The synthetic in-phase signal is water + fat per pixel (each rounded to an integer): so is the fused one,
    # away from the seams, where each contrast's own intensity correction acts.
    ip = np.asanyarray(_load(out, zip_path, "in").dataobj)
    fat = fuse_stations(stations).fat
    body = (water + fat) > 200
    assert np.median(np.abs(ip - (water + fat))[body]) <= 1.0


def test_fat_fraction_rule(small) -> None:
    zip_path, out, _ = small
    ref = fuse_stations(read_stations(zip_path))
    ff = np.asanyarray(_load(out, zip_path, "ff").dataobj)
    assert ff.dtype == np.float32
    body = body_mask(ref.water, ref.fat)
    expected = (ref.fat / body.signal).astype(np.float32)
    assert np.array_equal(ff[body.mask], np.clip(expected[body.mask], 0, 1))
    assert np.all(ff[~body.mask] == 0)
    assert 0.0 <= ff.min() and ff.max() <= 1.0 and ff[body.mask].mean() > 0.05


def test_header_and_sidecar(small) -> None:
    zip_path, out, side = small
    img = _load(out, zip_path, "water")
    hdr = img.header
    assert int(hdr["qform_code"]) == 1 and int(hdr["sform_code"]) == 1
    assert hdr.get_xyzt_units()[0] == "mm"
    assert np.allclose(img.get_qform(), img.get_sform(), atol=1e-5)
    descrip = hdr["descrip"].item().decode()
    assert f"mimir {__version__}" in descrip and PIPELINE_VERSION in descrip
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
    assert side["format"] == "mimir-volumes-1" and side["pipeline_version"] == PIPELINE_VERSION
    assert side["source"]["sha256"] == hashlib.sha256(zip_path.read_bytes()).hexdigest()
    assert side["source"]["file"] == zip_path.name
    assert set(side["files"]) == set(ALL)
    for name, entry in side["files"].items():
        assert (out / entry["file"]).stat().st_size == entry["bytes"]
    assert len(side["stations"]) == 6 and side["qc"]["status"] in ("ok", "warn", "fail")
    assert np.allclose(side["affine_ras_mm"], img.affine)


def test_simpleitk_reads_the_same_geometry_and_values(small) -> None:
    sitk = pytest.importorskip("SimpleITK")
    zip_path, out, _ = small
    for name in ("water", "ff"):
        path = out / f"{zip_path.name[:-4]}_{name}.nii.gz"
        n_img = nib.load(str(path))
        s_img = sitk.ReadImage(str(path))
        data = np.asanyarray(n_img.dataobj)
        assert np.array_equal(sitk.GetArrayFromImage(s_img).transpose(2, 1, 0), data)
        assert np.allclose(s_img.GetSpacing(), n_img.header.get_zooms(), atol=1e-6)
        shape = np.array(data.shape)
        for idx in ([0, 0, 0], list(shape - 1), [3, 7, 11]):
            lps = np.array(s_img.TransformIndexToPhysicalPoint([int(i) for i in idx]))
            ras = n_img.affine @ np.array([*idx, 1.0])
            assert np.allclose(lps, [-ras[0], -ras[1], ras[2]], atol=1e-4)


def _source_water(zip_path: Path) -> dict[int, dict]:
    """Per water series number: slices sorted head first (z, IPP x, IPP y, row and column spacing, pixels)."""
    series: dict[int, list] = {}
    with zipfile.ZipFile(zip_path) as zf:
        for info in zf.infolist():
            if not info.filename.endswith(".dcm"):
                continue
            ds = pydicom.dcmread(io.BytesIO(zf.read(info)))
            if not str(ds.SeriesDescription).endswith("_W"):
                continue
            ipp = [float(v) for v in ds.ImagePositionPatient]
            series.setdefault(int(ds.SeriesNumber), []).append(
                (ipp, [float(v) for v in ds.PixelSpacing], ds.pixel_array.astype(np.float64)))
    out = {}
    for number, items in series.items():
        items.sort(key=lambda t: -t[0][2])
        out[number] = {
            "z": np.array([t[0][2] for t in items]),
            "x0": items[0][0][0], "y0": items[0][0][1],
            "spacing": items[0][1],
            "pixels": np.stack([t[2] for t in items]),
        }
    return out


def _check_world_positions(zip_path: Path, out: Path, side: dict, skip: set[int] = frozenset()) -> int:
    """Voxels in each station's middle: value at the affine's world position == the source's there."""
    img = _load(out, zip_path, "water")
    data = np.asanyarray(img.dataobj)
    source = _source_water(zip_path)
    rng = np.random.default_rng(0)
    # The geometry itself: corners from the source's positions, voxel size from the grid.
    used = [source[s["series"]["water"]] for s in side["stations"]]
    top = max(u["z"][0] for u in used)
    assert np.isclose((img.affine @ [0, 0, data.shape[2] - 1, 1])[2], top - TRIM_SLICES * OUT_SPACING[2], atol=1e-4)
    assert np.isclose(-(img.affine @ [0, 0, 0, 1])[0], min(u["x0"] for u in used), atol=1e-4)
    assert np.isclose(-(img.affine @ [0, 0, 0, 1])[1], min(u["y0"] for u in used), atol=1e-4)
    assert np.allclose(np.abs(np.diag(img.affine)[:2]), [u["spacing"][0] for u in used][0], rtol=1e-6)
    inv = np.linalg.inv(img.affine)
    checked = 0
    for k_station, st in enumerate(side["stations"], start=1):
        if k_station in skip:
            continue
        src = source[st["series"]["water"]]
        z = src["z"]
        n = len(z)
        z_hi, z_lo = z[int(0.3 * n)], z[int(0.7 * n)]  # the middle of the station, away from its overlaps
        k_lo = int(np.ceil((inv @ [0, 0, z_lo, 1])[2]))
        k_hi = int(np.floor((inv @ [0, 0, z_hi, 1])[2]))
        assert k_hi > k_lo
        for _ in range(40):
            i, j, k = int(rng.integers(0, data.shape[0])), int(rng.integers(0, data.shape[1])), int(rng.integers(k_lo, k_hi + 1))
            X, Y, Z, _w = img.affine @ [i, j, k, 1]
            x, y = -X, -Y  # RAS+ -> DICOM LPS
            col = (x - src["x0"]) / src["spacing"][1]
            row = (y - src["y0"]) / src["spacing"][0]
            if not (0 <= round(row) < src["pixels"].shape[1] and 0 <= round(col) < src["pixels"].shape[2]):
                continue  # outside this station's field of view (a narrower station)
            assert abs(row - round(row)) < 1e-3 and abs(col - round(col)) < 1e-3
            r, c = int(round(row)), int(round(col))
            s = int(np.searchsorted(-z, -Z, side="right")) - 1  # source slice at or above Z
            s = min(max(s, 0), n - 2)
            t = (z[s] - Z) / (z[s] - z[s + 1])
            a, b = src["pixels"][s, r, c], src["pixels"][s + 1, r, c]
            expected = a + (b - a) * t
            # A station copied onto the grid may sit up to 0.01 voxel off it (RESAMPLE_TOLERANCE): its pixel
            # then stands for a position 0.01 slice away, which the interpolated value does not know.
            off_grid = abs(b - a) * 0.011 if min(abs(t), abs(1 - t)) < 0.011 else 0.0
            # In plane the grid's 2.23214293 mm and the source's 2.2321429 mm differ by 1.3e-8 relative: a
            # resampled station's pixels are taken up to ~3e-6 of a pixel off, times the local contrast.
            block = src["pixels"][s : s + 2, max(r - 1, 0) : r + 2, max(c - 1, 0) : c + 2]
            in_plane = 1e-5 * float(block.max() - block.min())
            got = data[i, j, k]
            tol = 1e-4 * max(1.0, abs(expected)) + off_grid + in_plane
            assert abs(got - expected) <= tol, (k_station, i, j, k, t, got, expected)
            checked += 1
    return checked


@pytest.mark.parametrize("variant", [None, "missing_slice", "no_overlap", "rescan"])
def test_voxel_world_positions_match_the_source_slices_small(tmp_path: Path, variant: str | None) -> None:
    zip_path = generate_subject(tmp_path, seed=7, small=True, variant=variant).zip_path
    side = _convert(zip_path, tmp_path / "out", ("water",))
    skip: set[int] = set()
    if variant == "missing_slice":
        # mimir stacks a station's slices at even spacing, as the original does: with one slice missing
        # inside it, that station's anatomy is stretched by one slice in n. Its voxels are left out here.
        flags = side["repairs"]["flags"]
        dropped = [f for f in flags if f.startswith("slices_dropped:")]
        assert dropped, flags
        skip = {int(f.split("station=")[1].split(",")[0]) for f in dropped}
    assert _check_world_positions(zip_path, tmp_path / "out", side, skip) >= 60


@pytest.mark.slow
def test_voxel_world_positions_match_the_source_slices_full_size(tmp_path: Path) -> None:
    zip_path = generate_subject(tmp_path, seed=8).zip_path
    side = _convert(zip_path, tmp_path / "out", ("water",))
    assert _check_world_positions(zip_path, tmp_path / "out", side) >= 150
    # and the water volume is the image's, end to end
    data = np.asanyarray(_load(tmp_path / "out", zip_path, "water").dataobj)
    assert np.array_equal(data, fuse_stations(read_stations(zip_path)).water)


def test_a_misplaced_affine_would_fail(small, tmp_path: Path) -> None:
    """The check above is sharp: one slice of error in the affine's z is caught."""
    zip_path, out, side = small
    moved = tmp_path / "moved"
    moved.mkdir()
    img = _load(out, zip_path, "water")
    aff = img.affine.copy()
    aff[2, 3] += OUT_SPACING[2]
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), aff), str(moved / f"{zip_path.name[:-4]}_water.nii.gz"))
    with pytest.raises(AssertionError):
        _check_world_positions(zip_path, moved, side)


def test_default_read_skips_in_and_opp(small) -> None:
    """Reading in-phase and opposed-phase costs nothing unless asked for: the default reads water and fat only."""
    zip_path, _, _ = small
    default = read_signal_slices(zip_path)
    everything = read_signal_slices(zip_path, ("water", "fat", "in", "opp"))
    assert {s.description[-2:] for s in default} == {"_W", "_F"}
    assert len(everything) == 2 * len(default)
    subject = read_subject(zip_path, ("water", "ff"))
    assert subject.extra == {}
    assert np.array_equal(subject.image, preprocess(zip_path, cache=False))


def test_missing_in_phase_series_is_one_line(small, tmp_path: Path) -> None:
    zip_path, _, _ = small
    stripped = tmp_path / "1000099_20201_2_0.zip"
    with zipfile.ZipFile(zip_path) as src, zipfile.ZipFile(stripped, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith(".dcm") and b"_in" in data[:4096]:
                continue
            if "manifest" in info.filename:
                continue
            dst.writestr(info, data)
    with pytest.raises(MissingSeriesError, match=r"no in-phase \(_in\) series at station 1"):
        read_subject(stripped, ("water", "in"))
    assert read_subject(stripped, ("water", "fat", "ff")).image.shape == (3, 256, 256)


def test_parse_contrasts() -> None:
    assert parse_contrasts(None) == ("water", "fat", "ff")
    assert parse_contrasts("ff, water") == ("water", "ff")
    assert parse_contrasts("all") == ALL
    from mimir.errors import UsageError

    with pytest.raises(UsageError, match="unknown contrast"):
        parse_contrasts("water,t1")
