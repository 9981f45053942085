"""Accuracy and calibration of the built-in demo module on unseen synthetic subjects.

Draws ``--n`` full-size synthetic subjects with seeds ``--seed0 ..`` (never
used in training: the demo module was trained on seeds 10000-11999), writes
each as a real UK Biobank-style zip, runs every zip through the full
pipeline (DICOM reading, fusion, projection) and the inference engine, and
compares the calibrated predictions with the truth files.

Per target it prints N, the sd of the truth across the subjects, MAE, MAE as
a percentage of that sd (quality bar: at most 10 %, 20 % for liver fat), R2,
ICC(2,1), and the coverage of the 95 % intervals (quality bar: 90-98 %)::

    python benchmarks/demo_accuracy.py                      # 200 subjects, seeds 500000-500199
    python benchmarks/demo_accuracy.py --n 20 --markdown table.md

Each zip is preprocessed by ``mimir.preprocessing.pipeline.preprocess`` as soon as it is
written; its image (``.npy``) and truth file are kept in ``--work`` (default
``.scratch/bench-demo``) and reused when the script runs again, the 50 MB zip
is removed unless ``--keep-zips``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: MAE limits as a fraction of the truth's sd (the issue's quality bar).
MAE_LIMIT = {"liver_fat_percent": 0.20}
DEFAULT_MAE_LIMIT = 0.10
COVERAGE_RANGE = (0.90, 0.98)


def _prepare(args: tuple[int, str, bool]) -> str:
    """Generate subject ``seed`` as a zip and preprocess it; returns the path of its image (.npy).

    The image is made from the zip by :func:`mimir.preprocessing.pipeline.preprocess` (the
    full pipeline); the 50 MB zip is then removed unless ``keep_zip``.
    """
    seed, work, keep_zip = args
    import numpy as np

    from mimir.utils.atomic import atomic_path
    from mimir.preprocessing.pipeline import preprocess
    from mimir.synth import generate_subject

    eid = 1_000_000 + seed
    npy = Path(work) / f"{eid}_20201_2_0.npy"
    truth_path = Path(work) / f"{eid}.truth.json"
    if npy.is_file() and truth_path.is_file():
        return str(npy)
    subject = generate_subject(work, seed)
    image = preprocess(subject.zip_path, cache=False)
    with atomic_path(npy, suffix=".npy") as tmp:
        np.save(tmp, image, allow_pickle=False)
    if not keep_zip:
        subject.zip_path.unlink()
    return str(npy)


def prepare(n: int, seed0: int, work: Path, workers: int, keep_zips: bool = False) -> list[str]:
    """Generate the subjects' zips and images (unless present); the images' paths."""
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    seeds = list(range(seed0, seed0 + n))
    zips: list[str] = []
    with Pool(workers) as pool:
        for k, z in enumerate(pool.imap(_prepare, [(s, str(work), keep_zips) for s in seeds])):
            zips.append(z)
            if (k + 1) % 20 == 0:
                print(f"prepared {k + 1}/{n} subjects ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    return zips


def evaluate(
    n: int, seed0: int, work: Path, module: str, workers: int, keep_zips: bool = False
) -> dict[str, dict[str, float]]:
    """Per-target figures of ``module`` on subjects ``seed0 .. seed0 + n - 1``."""
    from mimir.inference.predictor import Predictor
    from mimir.training.calibration import coverage
    from mimir.training.metrics import agreement

    zips = prepare(n, seed0, work, workers, keep_zips)
    predictor = Predictor([module], device="cpu")
    results = predictor.predict_files(zips, cache=False)
    failed = [r for r in results if not r.ok]
    if failed:
        raise SystemExit(f"{len(failed)} subjects failed, e.g. {failed[0].error}")
    truths = [json.loads((work / f"{r.name.split('_')[0]}.truth.json").read_text()) for r in results]
    out: dict[str, dict[str, float]] = {}
    for j, target in enumerate(predictor.layout):
        y = np.array([float(t[target.name]) for t in truths])
        m = np.array([r.predictions[j].value for r in results])
        v = np.array([r.predictions[j].variance for r in results])
        a = agreement(y, m)
        sd = float(np.std(y, ddof=1))
        limit = MAE_LIMIT.get(target.name, DEFAULT_MAE_LIMIT)
        cov = coverage(y, m, v, 0.95)
        out[target.name] = {
            "unit": target.unit,
            "n": a["n"],
            "sd": sd,
            "mae": a["mae"],
            "mae_over_sd": a["mae"] / sd,
            "mae_limit": limit,
            "r2": a["r2"],
            "icc": a["icc"],
            "mape_percent": a["mape_percent"],
            "coverage95": cov,
            "pass_mae": a["mae"] / sd <= limit,
            "pass_coverage": COVERAGE_RANGE[0] <= cov <= COVERAGE_RANGE[1],
        }
    return out


def markdown(rows: dict[str, dict[str, float]], n: int, seed0: int, module: str) -> str:
    """The table as Markdown."""
    lines = [
        f"Module `{module}` on {n} unseen synthetic subjects (seeds {seed0}-{seed0 + n - 1}), "
        "full pipeline from zip:",
        "",
        "| target | unit | sd | MAE | MAE / sd | bar | R2 | ICC | 95 % coverage | bar |",
        "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- |",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['unit']} | {r['sd']:.3g} | {r['mae']:.3g} | {100 * r['mae_over_sd']:.1f} % | "
            f"{'ok' if r['pass_mae'] else 'MISSED'} (<= {100 * r['mae_limit']:.0f} %) | {r['r2']:.3f} | "
            f"{r['icc']:.3f} | {100 * r['coverage95']:.1f} % | {'ok' if r['pass_coverage'] else 'MISSED'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed0", type=int, default=500_000)
    ap.add_argument("--module", default="phantom-demo")
    ap.add_argument("--work", type=Path, default=ROOT / ".scratch" / "bench-demo")
    ap.add_argument("--workers", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    ap.add_argument("--markdown", type=Path, help="also write the table to this file")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON")
    ap.add_argument("--prepare-only", action="store_true", help="only generate and preprocess the subjects")
    ap.add_argument("--keep-zips", action="store_true", help="keep the 50 MB zips after preprocessing")
    a = ap.parse_args(argv)
    if a.prepare_only:
        prepare(a.n, a.seed0, a.work, a.workers, a.keep_zips)
        return 0
    rows = evaluate(a.n, a.seed0, a.work, a.module, a.workers, a.keep_zips)
    text = markdown(rows, a.n, a.seed0, a.module)
    print(text)
    if a.markdown:
        a.markdown.write_text(text)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=2) + "\n")
    ok = all(r["pass_mae"] and r["pass_coverage"] for r in rows.values())
    print("quality bar: " + ("met" if ok else "NOT met"))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
