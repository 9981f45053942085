"""QC record: fat-water swap detection, repair flags, JSON round trip, the image cache, ``mimir qc``."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from mimir.preprocessing import qc
from mimir.preprocessing.pipeline import (
    PIPELINE_VERSION,
    preprocess_with_qc,
    read_stations,
)
from mimir.synth import build_study, generate_subject

SEEDS = (4101, 4102)  # never used to choose the thresholds (benchmarks/qc.py tunes on seeds 1000000+)


def _swaps(record: qc.QCRecord) -> list[str]:
    return [f for f in record.flags if f.startswith("fat_water_swap")]


@pytest.fixture(scope="module")
def judge(tmp_path_factory):
    """``judge(seed, variant, **swap)`` -> (QC record, truth) of a small synthetic subject."""
    root = tmp_path_factory.mktemp("qc")

    def get(seed, variant=None, **swap):
        sub = generate_subject(root / f"{seed}-{variant}-{sorted(swap.items())}", seed, variant=variant, small=True,
                               **swap)
        return qc.assess(read_stations(sub.zip_path)), sub.truth

    return get


@pytest.mark.parametrize("station", [1, 3, 4, 6])
def test_whole_station_swap_is_flagged_on_its_station(judge, station):
    for seed in SEEDS:
        record, truth = judge(seed, "fat_water_swap", swap_station=station)
        assert truth["variant_details"]["station"] == station
        assert _swaps(record) == [f"fat_water_swap:station={station}"]
        assert record.status == "fail"
        numbers = record.stations[station - 1]
        assert numbers.edge_low > qc.WHOLE_EDGE_LOW and numbers.edge_ff < 0.5
        # the seams on either side of the swapped station turn negative
        if station > 1:
            assert record.stations[station - 2].seam_corr < 0
        if station < 6:
            assert numbers.seam_corr < 0


@pytest.mark.parametrize("region,station", [("left", 5), ("right", 2), ("arms", 2), ("slices", 4), ("left", 1)])
def test_partial_swap_is_flagged_on_its_station(judge, region, station):
    for seed in SEEDS:
        record, truth = judge(seed, "fat_water_swap_partial", swap_station=station, swap_region=region)
        details = truth["variant_details"]
        assert details["region"] == region and details["body_fraction"] >= 0.2
        assert _swaps(record) == [f"fat_water_swap_partial:station={station}"]
        assert record.status == "warn"
        assert qc.PARTIAL_EDGE_LOW < record.stations[station - 1].edge_low <= qc.WHOLE_EDGE_LOW


def test_default_swap_variant_is_still_detected(judge):
    record, truth = judge(SEEDS[0], "fat_water_swap")
    assert f"station={truth['variant_details']['station']}" in ";".join(_swaps(record))


@pytest.mark.parametrize(
    "variant", [None, "rescan", "missing_slice", "wf_shape_mismatch", "no_manifest", "manifest_csv", "no_overlap"]
)
def test_no_swap_flag_on_normal_variants(judge, variant):
    for seed in SEEDS:
        record, truth = judge(seed, variant)
        assert _swaps(record) == []
        assert all(s.edge_low < qc.PARTIAL_EDGE_LOW for s in record.stations)
        details = truth["variant_details"] or {}
        expected = {
            None: [], "no_manifest": [], "manifest_csv": [],
            "rescan": [f"rescan_replaced:station={details.get('station')}"],
            "missing_slice": [f"slices_dropped:station={details.get('station')},n=1"],
        }
        if variant in expected:
            assert record.flags == expected[variant]
            assert record.status == ("ok" if not expected[variant] else "warn")
        elif variant == "wf_shape_mismatch":
            code = "wf_shape_cropped:station={}" if details["fat_differs_in"] == "rows" else "slices_dropped:station={},n=1"
            assert record.flags == [code.format(details["station"])]
        else:  # no_overlap
            a, b = details["stations"]
            assert record.flags == [f"no_overlap:stations={a}-{b}"]
            assert record.stations[a - 1].seam_corr is None


def test_record_json_round_trip_and_status():
    record = qc.QCRecord(stations=[qc.StationQC(1, 0.9, 0.01, 300, 0.95), qc.StationQC(2, None, None, 0)])
    record.add("rescan_replaced:station=2")
    assert record.status == "warn"
    record.add("fat_water_swap:station=1", "rescan_replaced:station=2")
    assert record.status == "fail" and record.flags == ["rescan_replaced:station=2", "fat_water_swap:station=1"]
    text = json.dumps(record.to_json(), allow_nan=False)
    assert qc.QCRecord.from_json(json.loads(text)) == record
    with pytest.raises(ValueError):
        qc.QCRecord.from_json({"status": "bad", "flags": [], "version": qc.QC_VERSION})
    assert qc.status_of(["out_of_distribution:demo"]) == "warn"
    assert qc.status_of([]) == "ok"


def test_seam_decides_which_neighbour_when_both_are_borderline():
    mk = qc.StationQC
    numbers = [mk(1, 0.9, 0.0, 500, 0.9), mk(2, 0.4, qc.PARTIAL_EDGE_LOW - qc.SEAM_BONUS / 2, 500, -0.8), mk(3, 0.9, 0.02, 500)]
    assert qc.swap_flags(numbers) == ["fat_water_swap_partial:station=2"]
    numbers[0] = mk(1, 0.9, 0.0, 500, 0.9)
    numbers[1] = mk(2, 0.4, qc.PARTIAL_EDGE_LOW - qc.SEAM_BONUS / 2, 500, 0.8)  # positive seam: no bonus
    assert qc.swap_flags(numbers) == []
    assert qc.swap_flags([mk(1, None, None, 0)]) == []  # an empty station is not judged


def test_qc_record_survives_the_cache(tmp_path, monkeypatch):
    from mimir.preprocessing import cache, pipeline

    sub = generate_subject(tmp_path, SEEDS[0], variant="fat_water_swap", small=True, swap_station=2)
    image, record = preprocess_with_qc(sub.zip_path)
    assert record.flags == ["fat_water_swap:station=2"]
    entry = cache.entry_path(cache.file_sha256(sub.zip_path), PIPELINE_VERSION)
    assert entry.is_file() and f"format{cache.CACHE_FORMAT}" in str(entry)
    monkeypatch.setattr(pipeline, "read_stations", lambda p: (_ for _ in ()).throw(AssertionError("decoded")))
    image2, record2 = preprocess_with_qc(sub.zip_path)
    assert np.array_equal(image, image2) and record2 == record
    monkeypatch.undo()
    # an entry whose QC record is of another QC version is recomputed
    cache.store(cache.file_sha256(sub.zip_path), PIPELINE_VERSION, image, {"qc": {**record.to_json(), "version": "x"}})
    calls = []
    real = pipeline.read_stations
    monkeypatch.setattr(pipeline, "read_stations", lambda p: calls.append(p) or real(p))
    assert preprocess_with_qc(sub.zip_path)[1] == record and len(calls) == 1


def test_synth_swap_options_are_checked():
    from mimir.errors import UsageError

    with pytest.raises(UsageError):
        build_study(1, variant="rescan", small=True, swap_station=2)
    with pytest.raises(UsageError):
        build_study(1, variant="fat_water_swap", small=True, swap_station=7)
    with pytest.raises(UsageError):
        build_study(1, variant="fat_water_swap_partial", small=True, swap_region="head")


def test_mimir_qc_command(tmp_path):
    from typer.testing import CliRunner

    from mimir.cli import app
    from mimir.preprocessing.qc_table import QC_COLUMNS

    data = tmp_path / "data"
    generate_subject(data, SEEDS[0], small=True)
    generate_subject(data, SEEDS[1], variant="fat_water_swap", small=True, swap_station=4)
    generate_subject(data, 4103, variant="truncated", small=True)
    out = tmp_path / "qc.csv"
    r = CliRunner().invoke(app, ["qc", str(data), "-o", str(out)])
    assert r.exit_code == 2, r.output  # one unreadable input
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == list(QC_COLUMNS)
    by_name = {row["name"]: row for row in rows}
    assert len(rows) == 3  # the unreadable input keeps its row
    ok, swapped, broken = (by_name[f"{1000000 + s}_20201_2_0"] for s in (SEEDS[0], SEEDS[1], 4103))
    assert (ok["qc_status"], ok["qc_flags"], ok["error"]) == ("ok", "", "")
    assert (swapped["qc_status"], swapped["qc_flags"]) == ("fail", "fat_water_swap:station=4")
    assert float(swapped["s4_edge_low"]) > qc.WHOLE_EDGE_LOW and float(swapped["s3_seam_corr"]) < 0
    assert float(ok["s4_edge_low"]) < qc.PARTIAL_EDGE_LOW and ok["s6_seam_corr"] == ""
    assert broken["qc_status"] == "" and "truncated" in broken["error"]
    r = CliRunner().invoke(app, ["qc", str(data), "-o", str(tmp_path / "qc.txt")])
    assert r.exit_code == 1 and "csv" in r.output


def test_a_failing_qc_never_costs_the_image(tmp_path, monkeypatch):
    from mimir.preprocessing import pipeline

    sub = generate_subject(tmp_path, SEEDS[0], variant="rescan", small=True)
    monkeypatch.setattr(pipeline.qc_mod, "assess", lambda s: 1 / 0)
    image, record = preprocess_with_qc(sub.zip_path, cache=False)
    assert image.shape == (3, 256, 256)
    assert record.status == "warn" and record.flags[-1] == "qc_incomplete"
    assert record.flags[0].startswith("rescan_replaced:station=")
