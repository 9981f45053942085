"""The synthetic-subject generator: zip shape, determinism, variants and truth.

Zips are read back with zipfile + pydicom only (not with mimir's own reader).
All tests use ``small=True`` subjects except the ones marked ``slow``.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from mimir.synth import (
    FULL_STATIONS,
    MANIFEST_HEADER,
    PIXEL_SPACING,
    SMALL_STATIONS,
    VARIANTS,
    build_study,
    default_eid,
    generate,
    generate_subject,
    study_zip_bytes,
)
from mimir.synth.body import DENSITIES, TISSUES, Body, _tissues, compute_truth, draw_params
from mimir.synth.dicom_writer import ds

SEED = 3
TRUTH_KEYS = ("eid", "seed", "variant", "small", "sex", "weight_kg", "height_cm", "vat_volume_l",
              "asat_volume_l", "liver_fat_percent", "thigh_muscle_volume_l", "variant_details")


# -- helpers ------------------------------------------------------------------

def read_zip(path: Path) -> tuple[dict[int, list[pydicom.Dataset]], list[str], zipfile.ZipFile]:
    """Series number -> slices (file order), member names, and the open zip."""
    zf = zipfile.ZipFile(path)
    series: dict[int, list[pydicom.Dataset]] = defaultdict(list)
    names = zf.namelist()
    for name in names:
        if name.endswith(".dcm"):
            ds = pydicom.dcmread(io.BytesIO(zf.read(name)))
            series[int(ds.SeriesNumber)].append(ds)
    return dict(series), names, zf


def volume(slices: list[pydicom.Dataset]) -> np.ndarray:
    """Pixel arrays of a series sorted head first: (slices, rows, cols)."""
    order = sorted(slices, key=lambda d: -float(d.ImagePositionPatient[2]))
    return np.stack([d.pixel_array for d in order])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def small_subject(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("synth-small")
    sub = generate_subject(out, SEED, small=True)
    series, names, zf = read_zip(sub.zip_path)
    return sub, series, names, zf


@pytest.fixture(scope="module")
def regular_small_study():
    return build_study(SEED, small=True)


# -- DICOM encoding -------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False))
def test_ds_formatting(value: float) -> None:
    text = ds(value)
    assert len(text) <= 16
    assert re.fullmatch(r"-?\d+\.\d+", text)
    assert float(text) == pytest.approx(value, abs=1e-6)


# -- determinism ----------------------------------------------------------------

def test_same_seed_same_bytes(tmp_path: Path) -> None:
    a = generate_subject(tmp_path / "a", SEED, small=True)
    b = generate_subject(tmp_path / "b", SEED, small=True)
    assert sha256(a.zip_path) == sha256(b.zip_path)
    assert a.truth_path.read_bytes() == b.truth_path.read_bytes()
    assert a.zip_path.name == f"{1_000_000 + SEED}_20201_2_0.zip"
    assert a.truth_path.name == f"{1_000_000 + SEED}.truth.json"


def test_different_seeds_differ(tmp_path: Path) -> None:
    subs = generate(tmp_path, 2, seed=10, small=True)
    assert [s.truth["eid"] for s in subs] == [1_000_010, 1_000_011]
    assert [s.truth["seed"] for s in subs] == [10, 11]
    assert sha256(subs[0].zip_path) != sha256(subs[1].zip_path)
    for key in ("weight_kg", "height_cm", "vat_volume_l", "asat_volume_l", "liver_fat_percent",
                "thigh_muscle_volume_l"):
        assert subs[0].truth[key] != subs[1].truth[key]


def test_eid_default_and_override(tmp_path: Path) -> None:
    assert default_eid(0) == 1_000_000 and default_eid(123) == 1_000_123
    sub = generate_subject(tmp_path, 5, small=True, eid=2345678)
    assert sub.zip_path.name == "2345678_20201_2_0.zip"
    assert json.loads(sub.truth_path.read_text())["eid"] == 2345678
    with pytest.raises(Exception):
        default_eid(9_000_000)


def test_truth_does_not_depend_on_variant_or_size() -> None:
    base = build_study(SEED, small=True).truth
    for variant in ("rescan", "fat_water_swap"):
        other = build_study(SEED, variant=variant, small=True).truth
        for key in ("weight_kg", "vat_volume_l", "asat_volume_l", "liver_fat_percent", "thigh_muscle_volume_l"):
            assert other[key] == base[key]


# -- zip structure ----------------------------------------------------------------

def test_members_flat_deflated_shuffled_fixed_time(small_subject) -> None:
    sub, series, names, zf = small_subject
    assert all("/" not in n for n in names)
    for info in zf.infolist():
        assert info.compress_type == zipfile.ZIP_DEFLATED
        assert info.date_time == zf.infolist()[0].date_time
    dcm = [n for n in names if n.endswith(".dcm")]
    assert "manifest.cvs" in names and len(names) == len(dcm) + 1
    numbers = [int(n.split(".")[-3]) for n in dcm]  # <series uid>.<instance>.dcm
    assert numbers != sorted(numbers)  # shuffled


def test_series_layout_small(small_subject) -> None:
    sub, series, names, zf = small_subject
    assert sorted(series) == list(range(1, 25))
    times = []
    for number in range(1, 25):
        station, j = (number - 1) // 4 + 1, (number - 1) % 4
        slices = series[number]
        kind = ("in", "opp", "F", "W")[j]
        prefix = "Dixon_noBH" if station in (1, 5, 6) else "Dixon_BH_17s"
        rows, n, spacing = SMALL_STATIONS[station - 1]
        assert {d.SeriesDescription for d in slices} == {f"{prefix}_{kind}"}
        assert len(slices) == n
        assert len({d.SeriesInstanceUID for d in slices}) == 1
        assert {(d.Rows, d.Columns) for d in slices} == {(rows, 64)}
        assert sorted(int(d.InstanceNumber) for d in slices) == list(range(1, n + 1))
        for d in slices:
            assert f"{d.SOPInstanceUID}.dcm" in names
            assert "M" in list(d.ImageType)
            assert [float(v) for v in d.PixelSpacing] == [2.2321429, 2.2321429]
            assert [float(v) for v in d.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
            assert float(d.ImagePositionPatient[0]) == pytest.approx(-64 * PIXEL_SPACING / 2, abs=1e-4)
            assert float(d.ImagePositionPatient[1]) == pytest.approx(-rows * PIXEL_SPACING / 2, abs=1e-4)
            assert float(d.SliceLocation) == float(d.ImagePositionPatient[2])
            assert float(d.SliceThickness) == spacing
        z = sorted((float(d.ImagePositionPatient[2]) for d in slices), reverse=True)
        assert np.allclose(np.diff(z), -spacing)
        times.append(slices[0].SeriesTime)
        assert re.fullmatch(r"\d{6}\.\d{6}", slices[0].SeriesTime)
    assert times == sorted(times) and len(set(times)) == 24
    # stations go down in z, head first
    tops = [max(float(d.ImagePositionPatient[2]) for d in series[4 * s + 4]) for s in range(6)]
    assert tops == sorted(tops, reverse=True)


def test_dicom_attributes(small_subject) -> None:
    sub, series, names, zf = small_subject
    d = series[8][0]
    assert d.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert d.file_meta.MediaStorageSOPInstanceUID == d.SOPInstanceUID
    assert d.preamble == b"\0" * 128
    assert (d.BitsAllocated, d.BitsStored, d.HighBit, d.PixelRepresentation) == (16, 12, 11, 0)
    assert d.SamplesPerPixel == 1 and d.PhotometricInterpretation == "MONOCHROME2"
    assert "RescaleSlope" not in d and "RescaleIntercept" not in d
    assert d.Modality == "MR" and d.Manufacturer == "SIEMENS" and d.ManufacturerModelName == "Aera"
    assert float(d.MagneticFieldStrength) == 1.5
    assert d.PatientID and str(d.PatientID) != str(sub.truth["eid"])
    assert str(d.PatientName) == str(d.PatientID)
    assert d.StudyInstanceUID and d.StudyDate and len(d.StudyDate) == 8
    uids = [d.SOPInstanceUID for s in series.values() for d in s]
    assert len(set(uids)) == len(uids)
    assert all(u.startswith("1.2.826.0.1.3680043.10.") and len(u) <= 64 for u in uids)
    px = d.pixel_array
    assert px.dtype == np.uint16 and px.max() <= 4095


def test_pixels_body_bed_noise(small_subject) -> None:
    sub, series, names, zf = small_subject
    water = volume(series[12])  # station 3 water: abdomen
    fat = volume(series[11])
    rows = water.shape[1]
    assert water.max() > 500 and fat.max() > 500  # tissue
    assert (water[:, :5, :5] > 0).any()  # Rician floor: background not exactly zero
    assert water[:, :5, :5].mean() < 40
    # the bed: a flat band inside the 22 posterior rows, below the body
    y = -rows * PIXEL_SPACING / 2 + PIXEL_SPACING * np.arange(rows)
    bed_rows = (y > 22.5) & (y < 26.5)
    assert bed_rows.any()
    band = water[:, bed_rows, 5:-5]
    assert 100 < np.median(band) < 320
    # in-phase is water + fat, opposed-phase |water - fat|
    inp, opp = volume(series[9]).astype(int), volume(series[10]).astype(int)
    assert np.abs(inp - (water.astype(int) + fat)).max() <= 2
    assert np.abs(opp - np.abs(water.astype(int) - fat)).max() <= 2


def test_stations_have_different_shading(regular_small_study) -> None:
    water = {s.station: s for s in regular_small_study.series if s.kind == "W"}
    ratios = []
    for i in range(1, 6):
        a, b = water[i], water[i + 1]
        for ka, za in enumerate(a.z):
            kb = int(np.argmin(np.abs(b.z - za)))
            if abs(b.z[kb] - za) < 1.0:
                ra, rb = a.pixels.shape[1], b.pixels.shape[1]
                off = (ra - rb) // 2
                ma = a.pixels[ka, off:off + rb].astype(float).mean() if ra >= rb else None
                mb = b.pixels[kb].astype(float).mean()
                if ma:
                    ratios.append(ma / mb)
    assert ratios and max(abs(r - 1) for r in ratios) > 0.03


def test_manifest_quirks(small_subject) -> None:
    sub, series, names, zf = small_subject
    text = zf.read("manifest.cvs").decode("ascii")
    lines = text.split("\n")
    assert lines[0] == ",".join(MANIFEST_HEADER)
    assert lines[0].startswith("filename,patientid,series discription,studyid,study date")
    assert text.endswith("\n\n\n") and lines[-1] == "" and lines[-2] == ""
    rows = [ln for ln in lines[1:] if ln]
    n_dcm = sum(1 for n in names if n.endswith(".dcm"))
    assert len(rows) == n_dcm
    for ln in rows:
        fields = ln.split(",")
        assert len(fields) == len(MANIFEST_HEADER) + 1
        assert fields[0] in names
        assert re.fullmatch(r"[A-Z][a-z]{2} \d{1,2}", fields[4])
        assert re.fullmatch(r" \d{4} \d{1,2}:\d{2}:\d{2} (AM|PM)", fields[5])


# -- truth ----------------------------------------------------------------------

def test_truth_file_contents(small_subject) -> None:
    sub, *_ = small_subject
    truth = json.loads(sub.truth_path.read_text())
    assert truth == json.loads(json.dumps(sub.truth))
    for key in TRUTH_KEYS:
        assert key in truth
    assert truth["small"] is True and truth["variant"] is None and truth["variant_details"] == {}
    assert truth["sex"] in ("M", "F")
    # weight recomputed from the tissue volumes and densities
    vols, dens = truth["tissue_volumes_l"], truth["densities_kg_per_l"]
    assert dens == DENSITIES
    assert truth["weight_kg"] == pytest.approx(sum(vols[c] * dens[c] for c in dens), rel=1e-9)
    # landmarks lie inside the imaged range, head to foot in order
    lm = truth["landmarks_z_mm"]
    assert lm["chin"] > lm["liver_top"] > lm["femoral_head_top"] > lm["knee"]


@pytest.mark.parametrize("seed", [0, 1, 2, 4, 5, 6, 7, 8])
def test_truth_plausible(seed: int) -> None:
    body = Body(draw_params(seed))
    t = compute_truth(body)
    assert 35 < t["weight_kg"] < 140
    assert 150 <= t["height_cm"] <= 195
    assert 0.2 < t["vat_volume_l"] < 8
    assert 1 < t["asat_volume_l"] < 17
    assert 0.5 <= t["liver_fat_percent"] <= 30
    assert 4 < t["thigh_muscle_volume_l"] < 20
    vols = t["tissue_volumes_l"]
    assert t["weight_kg"] == pytest.approx(sum(vols[c] * DENSITIES[c] for c in DENSITIES))
    # the whole body, about 1 kg/L on average
    assert 0.85 < t["weight_kg"] / sum(vols.values()) < 1.1


def test_truth_population_spread() -> None:
    truths = [compute_truth(Body(draw_params(s))) for s in range(9)]
    for key, lo, hi in (("weight_kg", 10, None), ("vat_volume_l", 1.0, None), ("asat_volume_l", 2.0, None),
                        ("thigh_muscle_volume_l", 2.0, None)):
        values = [t[key] for t in truths]
        assert max(values) - min(values) > lo, key
    ff = [t["liver_fat_percent"] for t in truths]
    assert np.median(ff) < np.mean(ff)  # skewed towards low values


def test_liver_signal_encodes_fat_fraction() -> None:
    for ff in (0.005, 0.1, 0.3):
        liver = _tissues(ff)["liver"]
        assert liver.fat / (liver.water + liver.fat) == pytest.approx(ff)
    for tissue in TISSUES.values():
        assert sum(tissue.composition.values()) == pytest.approx(1.0)
        assert set(tissue.composition) <= set(DENSITIES)


def test_truth_tracks_the_drawn_body() -> None:
    """More subcutaneous fat gives more ASAT; more visceral load gives more VAT; more muscle, more thigh."""
    p = draw_params(SEED)
    base = compute_truth(Body(p))
    p2 = draw_params(SEED)
    p2.sc_mm *= 1.5
    p2.visceral = min(p2.visceral + 0.2, 1.0)
    p2.muscle *= 1.2
    more = compute_truth(Body(p2))
    assert more["asat_volume_l"] > base["asat_volume_l"] * 1.2
    assert more["vat_volume_l"] > base["vat_volume_l"] * 1.1
    assert more["thigh_muscle_volume_l"] > base["thigh_muscle_volume_l"] * 1.1
    assert more["weight_kg"] > base["weight_kg"]


# -- variants --------------------------------------------------------------------

def test_variant_names() -> None:
    assert set(VARIANTS) >= {"rescan", "missing_slice", "wf_shape_mismatch", "no_manifest", "manifest_csv",
                             "fat_water_swap", "truncated", "wf_position_mismatch", "missing_station",
                             "no_overlap", "no_dicom"}
    with pytest.raises(Exception, match="unknown variant"):
        build_study(SEED, variant="nope", small=True)


def test_variant_rescan(tmp_path: Path, regular_small_study) -> None:
    sub = generate_subject(tmp_path, SEED, variant="rescan", small=True)
    series, names, zf = read_zip(sub.zip_path)
    assert sorted(series) == list(range(1, 29))
    det = sub.truth["variant_details"]
    bad, good = det["corrupted_series"], det["good_series"]
    assert good == [b + 4 for b in bad]
    station = det["station"]
    assert 1 <= station <= 5 and bad[0] == 4 * (station - 1) + 1
    bad_w, good_w = series[bad[3]], series[good[3]]
    assert bad_w[0].SeriesDescription == good_w[0].SeriesDescription
    pos = lambda s: sorted(tuple(float(v) for v in d.ImagePositionPatient) for d in s)  # noqa: E731
    assert pos(bad_w) == pos(good_w)  # same position
    assert good_w[0].SeriesTime > bad_w[0].SeriesTime
    regular = next(s for s in regular_small_study.series if s.station == station and s.kind == "W")
    assert np.array_equal(volume(good_w), regular.pixels)  # the later one is right
    diff = np.abs(volume(bad_w).astype(float) - regular.pixels).mean()
    assert diff > 0.2 * regular.pixels.mean()  # the earlier one visibly wrong
    times = [series[n][0].SeriesTime for n in range(1, 29)]
    assert times == sorted(times)


def test_variant_missing_slice(tmp_path: Path) -> None:
    sub = generate_subject(tmp_path, SEED, variant="missing_slice", small=True)
    series, names, zf = read_zip(sub.zip_path)
    det = sub.truth["variant_details"]
    assert det["station"] in (2, 3, 4)
    number = det["series_number"]
    assert number == 4 * det["station"]  # the water series
    n = SMALL_STATIONS[det["station"] - 1][1]
    assert len(series[number]) == n - 1 == det["slices"]
    assert len(series[number - 1]) == n  # fat complete
    zs = {float(d.ImagePositionPatient[2]) for d in series[number]}
    assert det["dropped_z_mm"] not in zs
    manifest_rows = [ln for ln in zf.read("manifest.cvs").decode().split("\n")[1:] if ln]
    assert len(manifest_rows) == sum(len(s) for s in series.values())


def test_variant_wf_shape_mismatch(tmp_path: Path) -> None:
    seen = set()
    for seed in range(SEED, SEED + 6):
        study = build_study(seed, variant="wf_shape_mismatch", small=True)
        det = study.truth["variant_details"]
        seen.add(det["fat_differs_in"])
        w = next(s for s in study.series if s.station == det["station"] and s.kind == "W")
        f = next(s for s in study.series if s.station == det["station"] and s.kind == "F")
        assert f.number == det["series_number"]
        assert f.pixels.shape[1] == w.pixels.shape[1] - det["fat_rows_minus"]
        assert f.pixels.shape[0] == w.pixels.shape[0] - det["fat_slices_minus"]
        assert f.pixels.shape != w.pixels.shape
        assert f.z.max() == w.z.max() and f.x0 == w.x0 and f.y0 == w.y0  # same position
    assert seen == {"rows", "slices"}
    sub = generate_subject(tmp_path, SEED, variant="wf_shape_mismatch", small=True)
    series, _, _ = read_zip(sub.zip_path)
    det = sub.truth["variant_details"]
    fat, water = volume(series[det["series_number"]]), volume(series[det["series_number"] + 1])
    assert fat.shape != water.shape


@pytest.mark.parametrize("variant,expected", [(None, "manifest.cvs"), ("manifest_csv", "manifest.csv"),
                                               ("no_manifest", None)])
def test_variant_manifest_names(variant: str | None, expected: str | None) -> None:
    study = build_study(SEED, variant=variant, small=True)
    names = zipfile.ZipFile(io.BytesIO(study_zip_bytes(study))).namelist()
    manifests = [n for n in names if n.startswith("manifest")]
    assert manifests == ([expected] if expected else [])
    assert sum(n.endswith(".dcm") for n in names) == sum(s.pixels.shape[0] for s in study.series)


def test_variant_fat_water_swap(regular_small_study) -> None:
    regular = {(s.station, s.kind): s.pixels for s in regular_small_study.series}
    kinds = set()
    for seed in range(SEED, SEED + 40):
        study = build_study(seed, variant="fat_water_swap", small=True)
        det = study.truth["variant_details"]
        kinds.add(det["kind"])
        if seed != SEED:
            if {"station", "leg"} <= kinds:
                break
            continue
        got = {(s.station, s.kind): s for s in study.series}
        st = det["station"]
        w, f = got[(st, "W")], got[(st, "F")]
        assert w.description.endswith("_W") and f.description.endswith("_F")
        if det["kind"] == "station":
            assert 1 <= st <= 4
            assert np.array_equal(w.pixels, regular[(st, "F")])
            assert np.array_equal(f.pixels, regular[(st, "W")])
        else:
            assert st in (5, 6)
            cols = (w.x0 + PIXEL_SPACING * np.arange(w.pixels.shape[2])) < 0
            if det["side"] == "left":
                cols = ~cols & ((w.x0 + PIXEL_SPACING * np.arange(w.pixels.shape[2])) > 0)
            assert np.array_equal(w.pixels[:, :, cols], regular[(st, "F")][:, :, cols])
            assert np.array_equal(w.pixels[:, :, ~cols], regular[(st, "W")][:, :, ~cols])
        for other in range(1, 7):
            if other != st:
                assert np.array_equal(got[(other, "W")].pixels, regular[(other, "W")])
    assert kinds == {"station", "leg"}


def test_variant_truncated(tmp_path: Path) -> None:
    sub = generate_subject(tmp_path, SEED, variant="truncated", small=True)
    full = study_zip_bytes(build_study(SEED, small=True))
    data = sub.zip_path.read_bytes()
    assert len(data) == int(len(full) * 0.6) and full.startswith(data)
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(sub.zip_path)


def test_variant_wf_position_mismatch() -> None:
    study = build_study(SEED, variant="wf_position_mismatch", small=True)
    det = study.truth["variant_details"]
    w = next(s for s in study.series if s.station == det["station"] and s.kind == "W")
    f = next(s for s in study.series if s.station == det["station"] and s.kind == "F")
    assert f.number == det["series_number"]
    assert np.allclose(f.z - w.z, 5.0)
    assert not np.allclose([f.x0, f.y0, f.z.max()], [w.x0, w.y0, w.z.max()])


def test_variant_missing_station() -> None:
    study = build_study(SEED, variant="missing_station", small=True)
    assert sorted(s.number for s in study.series) == list(range(1, 21))
    assert {s.station for s in study.series} == {1, 2, 3, 4, 5}
    assert study.truth["variant_details"] == {"missing_station": 6}


def test_variant_no_overlap() -> None:
    study = build_study(SEED, variant="no_overlap", small=True)
    det = study.truth["variant_details"]
    a, b = det["stations"]
    assert b == a + 1
    wa = next(s for s in study.series if s.station == a and s.kind == "W")
    wb = next(s for s in study.series if s.station == b and s.kind == "W")
    overlap = wb.z.max() - (wa.z.max() - wa.pixels.shape[0] * wa.spacing)
    assert overlap <= 0
    assert det["overlap_mm_full_scale"] <= 0


@pytest.mark.parametrize("variant", ["no_manifest", "manifest_csv", "truncated", "no_dicom"])
def test_variant_details_recorded(variant: str) -> None:
    study = build_study(SEED, variant=variant, small=True)
    assert study.truth["variant"] == variant
    assert "manifest" in study.truth["variant_details"]


def test_variant_no_dicom(tmp_path: Path) -> None:
    sub = generate_subject(tmp_path, SEED, variant="no_dicom", small=True)
    names = zipfile.ZipFile(sub.zip_path).namelist()
    assert names and not any(n.endswith(".dcm") for n in names)
    assert "manifest.cvs" in names


# -- CLI ------------------------------------------------------------------------

def test_cli_synth(tmp_path: Path) -> None:
    from mimir.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["synth", str(tmp_path), "--n", "2", "--seed", "7", "--small"])
    assert result.exit_code == 0, result.output
    for eid in (1000007, 1000008):
        assert (tmp_path / f"{eid}_20201_2_0.zip").is_file()
        assert (tmp_path / f"{eid}.truth.json").is_file()
    assert "1000007" in result.output
    bad = runner.invoke(app, ["synth", str(tmp_path / "x"), "--variant", "nope", "--small"])
    assert bad.exit_code == 1
    assert not (tmp_path / "x").exists()


# -- full size ------------------------------------------------------------------

@pytest.mark.slow
def test_full_size_subject(tmp_path: Path) -> None:
    sub = generate_subject(tmp_path, SEED)
    series, names, zf = read_zip(sub.zip_path)
    assert 30e6 < sub.zip_path.stat().st_size < 120e6
    assert sorted(series) == list(range(1, 25))
    tops, bottoms = [], []
    for station, (rows, n, spacing) in enumerate(FULL_STATIONS, start=1):
        w = series[4 * station]
        assert len(w) == n and {(d.Rows, d.Columns) for d in w} == {(rows, 224)}
        d = w[0]
        assert float(d.ImagePositionPatient[0]) == -250.0
        assert float(d.ImagePositionPatient[1]) == pytest.approx(-rows * 2.2321429 / 2, abs=1e-4)
        z = sorted((float(s.ImagePositionPatient[2]) for s in w), reverse=True)
        assert np.allclose(np.diff(z), -spacing)
        tops.append(z[0])
        bottoms.append(z[0] - n * spacing)  # the station's extent ends one spacing below its last slice
    for i in range(5):
        assert 30.0 <= tops[i + 1] - bottoms[i] <= 40.0
    fused = (tops[0] - bottoms[-1]) / 3.0
    assert 355 < fused < 390
    # the bed lies in the 22 posterior rows of the fused grid (174 rows), the body above them
    water = volume(series[12]).astype(float)  # station 3
    y = -174 * 2.2321429 / 2 + 2.2321429 * np.arange(174)
    crop = y >= -174 * 2.2321429 / 2 + 152 * 2.2321429
    assert np.median(water[:, (y > 152) & (y < 166), 20:-20]) > 100
    assert water[:, crop].mean() < 0.5 * water[:, ~crop].mean()
    assert water[:, ~crop][:, -3:].max() > 300  # body tissue just above the cropped rows
    # the same body as the small subject of this seed
    small = build_study(SEED, small=True).truth
    for key in ("weight_kg", "height_cm", "vat_volume_l", "asat_volume_l", "thigh_muscle_volume_l"):
        assert sub.truth[key] == small[key]


@pytest.mark.slow
def test_full_size_missing_slice_has_43() -> None:
    study = build_study(SEED, variant="missing_slice")
    det = study.truth["variant_details"]
    w = next(s for s in study.series if s.number == det["series_number"])
    assert w.kind == "W" and w.pixels.shape[0] == 43
