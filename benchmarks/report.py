"""``mimir report`` on a synthetic release: 100,000 subjects in under a minute, at most ~20 MB.

Writes a batch-shaped output folder (run.json, predictions.csv with the
built-in phantom-demo module's 6 targets, the QC columns and an OOD score
column, errors.csv, subjects.csv pointing at files that do not exist: no
images needed) and times ``build_report`` on it.

    PYTHONPATH=src python benchmarks/report.py [--subjects 100000] [--flagged 0.05] [--failed 0.01] [--no-qc]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from mimir.batch.report import build_report  # noqa: E402
from mimir.inference.predictions import csv_header, layout_for  # noqa: E402
from mimir.models.registry import get_module  # noqa: E402

QC_CODES = ("fat_water_swap:station=3", "slices_dropped:station=2,n=1", "out_of_distribution:phantom-demo",
            "no_overlap:stations=4-5")


def _images(k: int, work: Path) -> list[Path]:
    """k .npy images of synthetic subjects (small ones, preprocessed; a few seconds each)."""
    from mimir.preprocessing.pipeline import preprocess
    from mimir.synth import generate_subject

    out = []
    for i in range(k):
        subject = generate_subject(work, 700_000 + i, small=True)
        path = work / f"{subject.zip_path.stem}.npy"
        np.save(path, preprocess(subject.zip_path, cache=False))
        out.append(path)
    return out


def make_folder(folder: Path, n: int, flagged: float, failed: float, qc: bool, seed: int = 0,
                images: list[Path] | None = None) -> dict[str, int]:
    """A batch output folder with n subjects; returns the counts written.

    With ``images``, the inputs of subjects are those .npy files in turn
    (so every subject has a preview); without, they do not exist.
    """
    rng = np.random.default_rng(seed)
    spec = get_module("phantom-demo")
    n_failed = int(round(n * failed))
    names = [f"{1000000 + i}_20201_2_0" for i in range(n)]
    fail_idx = set(rng.choice(n, size=n_failed, replace=False).tolist())
    ok = [i for i in range(n) if i not in fail_idx]
    layout = layout_for([(spec.name, spec.version, [(t.name, t.unit, t.field) for t in spec.targets],
                          spec.intended_use)])
    header = csv_header(layout)  # schema 2 (docs/outputs.md)
    cols = {}
    for t in spec.targets:
        mean = rng.normal(t.mean, t.sd, len(ok))
        var = (rng.gamma(4.0, 0.05, len(ok)) * t.sd) ** 2
        sd = np.sqrt(var)
        cols[t.name] = (mean, var, mean - 1.96 * sd, mean + 1.96 * sd)
    is_flagged = rng.random(len(ok)) < flagged
    n_flagged = 0
    with open(folder / "predictions.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(header)
        for j, i in enumerate(ok):
            row: list[object] = [names[i], 1000000 + i, 2]
            if not qc:
                row += ["", ""]
            elif is_flagged[j]:
                n_flagged += 1
                row += ["warn", ";".join(rng.choice(QC_CODES, size=rng.integers(1, 3), replace=False))]
            else:
                row += ["ok", ""]
            row += [0.95, spec.version, spec.intended_use, repr(float(rng.gamma(2.0, 1.0))) if qc else ""]
            for t in spec.targets:
                row += [repr(float(c[j])) for c in cols[t.name]]
            w.writerow(row)
    with open(folder / "errors.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(("name", "path", "stage", "message"))
        for i in sorted(fail_idx):
            w.writerow((names[i], f"/data/{names[i]}.zip", "preprocess",
                        f"/data/{names[i]}.zip: is a truncated or damaged zip. Download the file again."))
    with open(folder / "subjects.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(("name", "path"))
        if images:
            w.writerows((nm, str(images[i % len(images)])) for i, nm in enumerate(names))
        else:
            w.writerows((nm, f"/data/{nm}.zip") for nm in names)
    run = {
        "format": "mimir-batch-run/1", "status": "complete", "versions": {"mimir": "0.1.0"},
        "pipeline_version": "mimir-v1", "input": "/data", "engine": "local", "devices": ["cpu"],
        "precision": "auto", "level": 0.95, "modules": [spec.identity()], "key_digest": "0" * 64,
        "counts": {"inputs": n, "subjects": n, "refused": 0, "done_before": 0, "to_do": n, "processed": n,
                   "predicted": len(ok), "failed": n_failed, "unfinished": 0},
        "started_at": "2026-01-01T00:00:00+0000", "finished_at": "2026-01-01T10:00:00+0000",
        "wall_s": 36000.0, "throughput_subjects_per_s": round(n / 36000.0, 4),
    }
    (folder / "run.json").write_text(json.dumps(run, indent=2) + "\n", encoding="utf-8")
    return {"subjects": n, "predicted": len(ok), "failed": n_failed, "flagged": n_flagged}


def to_long(folder: Path) -> None:
    """Rewrite folder/predictions.csv in the long layout (docs/outputs.md), as ``--format long`` writes it."""
    import pandas as pd

    from mimir.inference.predictions import LONG_HEADER

    spec = get_module("phantom-demo")
    wide = pd.read_csv(folder / "predictions.csv", dtype=str, keep_default_na=False)
    parts = []
    for k, t in enumerate(spec.targets):
        c = f"{t.name}_%s_in_{t.unit}"
        var = wide[c % "variance"].astype(float)
        parts.append(pd.DataFrame({
            "name": wide["name"], "eid": wide["eid"], "instance": wide["instance"], "qc_status": wide["qc_status"],
            "qc_flags": wide["qc_flags"], "module": spec.name, "module_version": spec.version,
            "intended_use": spec.intended_use, "ood_score": wide[f"{spec.name}_ood_score"], "target": t.name,
            "field": "", "unit": t.unit, "mean": wide[c % "mean"], "variance": wide[c % "variance"],
            "sd": np.sqrt(var).map(repr), "ci_low": wide[c % "ci_low"], "ci_high": wide[c % "ci_high"],
            "level": "0.95", "_order": k,
        }))
    long = pd.concat(parts).sort_values(["name", "_order"], kind="stable")[LONG_HEADER]
    long.to_csv(folder / "predictions.csv", index=False, lineterminator="\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=int, default=100_000)
    ap.add_argument("--flagged", type=float, default=0.05, help="share of predicted subjects with QC flags")
    ap.add_argument("--failed", type=float, default=0.01, help="share of subjects in errors.csv")
    ap.add_argument("--no-qc", action="store_true", help="no QC columns (a run before QC existed)")
    ap.add_argument("--keep", help="write the folder here and keep it")
    ap.add_argument("--long", action="store_true", help="predictions.csv in the long layout (--format long)")
    ap.add_argument("--images", type=int, default=0,
                    help="give the subjects .npy inputs made from this many synthetic subjects (previews embedded)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.keep or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        images = None
        if args.images:
            (folder / "inputs").mkdir(exist_ok=True)
            images = _images(args.images, folder / "inputs")
        t0 = time.perf_counter()
        counts = make_folder(folder, args.subjects, args.flagged, args.failed, not args.no_qc, images=images)
        if args.long:
            to_long(folder)
        made = time.perf_counter() - t0
        c0, w0 = time.process_time(), time.perf_counter()
        result = build_report(folder)
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        print(f"folder: {counts} (written in {made:.1f} s); predictions.csv "
              f"{(folder / 'predictions.csv').stat().st_size / 1e6:.1f} MB")
        print(f"report: {result.size_bytes / 1e6:.2f} MB, {wall:.1f} s wall, {cpu:.1f} s CPU; "
              f"predicted {result.predicted}, failed {result.failed}, flagged {result.flagged}, "
              f"thumbnails {result.thumbnails}")
        ok = wall < 60 and result.size_bytes <= 20e6
        print("within limits (< 60 s, <= 20 MB)" if ok else "OUTSIDE the limits (< 60 s, <= 20 MB)")
        return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
