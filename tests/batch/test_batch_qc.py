"""QC in ``mimir batch``: columns in the outputs, in the records, counted in run.json, kept on resume."""

from __future__ import annotations

import json
from pathlib import Path

from test_batch import batch, make_module, outputs, read_csv, record_files

from mimir.synth import generate_subject

COMMON = ["--device", "cpu", "-b", "1", "--threads", "1"]


def test_batch_writes_qc_and_keeps_it_on_resume(tmp_path: Path) -> None:
    data = tmp_path / "data"
    generate_subject(data, 4201, small=True)
    generate_subject(data, 4202, variant="fat_water_swap", small=True, swap_station=3)
    generate_subject(data, 4203, variant="rescan", small=True)
    rescan_station = json.loads((data / "1004203.truth.json").read_text())["variant_details"]["station"]
    module = make_module(tmp_path / "mod")
    out = tmp_path / "out"

    r = batch([str(data), "-o", str(out), "-m", module, *COMMON, "-w", "1"])
    assert r.exit_code == 0, (r.stdout, r.stderr)
    rows = read_csv(out / "predictions.csv")
    assert list(rows[0])[:5] == ["name", "eid", "instance", "qc_status", "qc_flags"]
    qc = {row["name"]: (row["qc_status"], row["qc_flags"]) for row in rows}
    assert qc == {  # flagged subjects are predicted and written like the others
        "1004201_20201_2_0": ("ok", ""),
        "1004202_20201_2_0": ("fail", "fat_water_swap:station=3"),
        "1004203_20201_2_0": ("warn", f"rescan_replaced:station={rescan_station}"),
    }
    assert all(row["AtlasVatVolume_mean_in_L"] for row in rows)
    doc = json.loads((out / "predictions.json").read_text())
    assert doc[1]["qc"] == {"status": "fail", "flags": ["fat_water_swap:station=3"]}
    run = json.loads((out / "run.json").read_text())
    assert (run["counts"]["qc_flagged"], run["counts"]["qc_warn"], run["counts"]["qc_fail"]) == (2, 1, 1)
    records = {json.loads(p.read_text())["name"]: json.loads(p.read_text()) for p in record_files(out)}
    assert records["1004202_20201_2_0"]["row"]["qc_flags"] == "fat_water_swap:station=3"
    assert records["1004202_20201_2_0"]["json"]["qc"]["status"] == "fail"

    # resume after losing two records (and with the image cache emptied): the same bytes come out
    before = outputs(out)
    for p in record_files(out)[:2]:
        p.unlink()
    r = batch([str(data), "-o", str(out), "-m", module, *COMMON, "-w", "1", "--no-cache"])
    assert r.exit_code == 0, (r.stdout, r.stderr)
    assert outputs(out) == before
    assert json.loads((out / "run.json").read_text())["counts"]["qc_flagged"] == 2
