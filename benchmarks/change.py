"""False-flag rate, z calibration and power of ``mimir change`` on synthetic follow-up pairs.

Draws pairs of visits of the same synthetic subject (``mimir synth --follow-up``):
``--n-null`` pairs with no true change (the same body acquired twice: new
positioning, shading and noise) and ``--n-change`` pairs for each change of
:data:`SIZES` (weight, liver fat, VAT, thigh muscle). Each visit goes through the
full pipeline (zip written at deflate level 0 to save time, DICOM reading, fusion,
projection) and the module (default ``phantom-demo``); the predictions are
written as mimir's long CSV, read back with :func:`mimir.analysis.read_predictions`
and paired with :func:`mimir.analysis.change.visit_change`, as ``mimir change`` does.

Per change and target it prints the pairs, the mean true change, the share
flagged at the 95 % level (with no true change: the false-flag rate, ideally
about 5 %; with one: the power), the sd of z (ideally 1 with no change) and the
sd of ``(change - true change) / se`` (ideally 1 always)::

    nice python benchmarks/change.py --markdown change.md      # 150 null pairs + 4 x 40 changed
    python benchmarks/change.py --n-null 10 --n-change 5 --small

Seeds from ``--seed0`` (default 600000; the demo module was trained on
10000-11999). Images and truth files are kept in ``--work`` and reused.
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

#: The changes of the changed pairs and their sizes (see mimir.synth.followup.CHANGE_HELP).
SIZES: dict[str, float] = {"weight": 0.05, "liver_fat": 1.5, "vat": 0.04, "thigh_muscle": -0.03}
#: |true change| below which a target counts as unchanged (unit of the target).
UNCHANGED = 1e-6
#: The target each change is aimed at (its flagged share is the power).
AIMED = {"weight": "weight_kg", "liver_fat": "liver_fat_percent", "vat": "vat_volume_l",
         "thigh_muscle": "thigh_muscle_volume_l"}


def _prepare(args: tuple[int, str, float, int, str, bool]) -> list[str]:
    """Both visits of subject ``seed`` as images (``.npy``) plus truth files; returns the images' paths."""
    seed, change, size, _, work, small = args
    from mimir.preprocessing.pipeline import preprocess
    from mimir.synth.study import build_study
    from mimir.synth.zips import study_zip_bytes
    from mimir.utils.atomic import atomic_path, write_bytes, write_text

    out = []
    for instance in (2, 3):
        eid = 1_000_000 + seed
        npy = Path(work) / f"{eid}_20201_{instance}_0.npy"
        truth = Path(work) / f"{eid}_{instance}.truth.json"
        out.append(str(npy))
        if npy.is_file() and truth.is_file():
            fu = json.loads(truth.read_text()).get("follow_up")
            if instance == 2 or (fu["change"] == change and (change == "none" or fu["size"] == size)):
                continue  # made by an earlier run with the same change
        kw = {} if instance == 2 else {"instance": 3, "change": change, "change_size": None if change == "none" else size}
        study = build_study(seed, small=small, **kw)
        zpath = Path(work) / f"{eid}_20201_{instance}_0.zip"
        write_bytes(zpath, study_zip_bytes(study, compresslevel=0))
        image = preprocess(zpath, cache=False)
        with atomic_path(npy, suffix=".npy") as tmp:
            np.save(tmp, image, allow_pickle=False)
        zpath.unlink()
        write_text(truth, json.dumps(study.truth) + "\n")
    return out


def run(n_null: int, n_change: int, seed0: int, work: Path, module: str, workers: int, small: bool,
        level: float = 0.95) -> list[dict[str, object]]:
    """Figures per (change, target) on freshly drawn pairs."""
    from mimir.analysis.change import visit_change
    from mimir.analysis.tables import read_predictions
    from mimir.inference.predictor import Predictor
    from mimir.outputs.writers import long_csv_text

    work.mkdir(parents=True, exist_ok=True)
    jobs: list[tuple[int, str, float, int, str, bool]] = []
    seed = seed0
    for change, n in [("none", n_null)] + [(c, n_change) for c in SIZES]:
        for _ in range(n):
            jobs.append((seed, change, SIZES.get(change, 0.0), 0, str(work), small))
            seed += 1
    t0 = time.time()
    images: list[str] = []
    with Pool(workers) as pool:
        for k, pair in enumerate(pool.imap(_prepare, jobs)):
            images.extend(pair)
            if (k + 1) % 20 == 0:
                print(f"prepared {k + 1}/{len(jobs)} pairs ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    prep_s = time.time() - t0
    results = Predictor([module], device="cpu").predict_files(images, cache=False)
    failed = [r for r in results if not r.ok]
    if failed:
        raise SystemExit(f"{len(failed)} visits failed, e.g. {failed[0].error}")
    csv = work / "predictions_long.csv"
    csv.write_text(long_csv_text(results))
    table, unpaired = visit_change(read_predictions(csv), 2, 3, level=level)
    assert unpaired == 0, unpaired
    kind = {1_000_000 + s: c for s, c, *_ in jobs}
    deltas = {}
    for s, *_ in jobs:
        t = json.loads((work / f"{1_000_000 + s}_3.truth.json").read_text())
        deltas[1_000_000 + s] = t["follow_up"]["delta"]
    table["kind"] = table["eid"].map(kind)
    table["true_change"] = [deltas[e][t] for e, t in zip(table["eid"], table["target"])]
    rows: list[dict[str, object]] = []
    for change in ["none", *SIZES]:
        for target, g in table[table["kind"] == change].groupby("target", sort=False):
            true = g["true_change"].to_numpy(float)
            se = g["change_se"].to_numpy(float)
            z_err = (g["change"].to_numpy(float) - true) / se
            changed = np.abs(true) > UNCHANGED
            rows.append({
                "change": change, "size": SIZES.get(change, 0.0), "target": target, "unit": str(g["unit"].iloc[0]),
                "pairs": int(len(g)), "changed_pairs": int(changed.sum()),
                "mean_true_change": float(true.mean()), "rms_se": float(np.sqrt(np.mean(se**2))),
                "flagged_share": float(g["flagged"].mean()), "sd_z": float(g["z"].std(ddof=1)),
                "sd_z_about_truth": float(np.std(z_err, ddof=1)),
                "mean_z_about_truth": float(np.mean(z_err)),
            })
    print(f"prepared {len(jobs)} pairs in {prep_s:.0f} s, predicted in {time.time() - t0 - prep_s:.0f} s",
          file=sys.stderr)
    return rows


def markdown(rows: list[dict[str, object]], args: argparse.Namespace) -> str:
    """The table as Markdown."""
    lines = [
        f"`mimir change` on synthetic follow-up pairs of module `{args.module}` ({args.n_null} pairs with no true "
        f"change, {args.n_change} per change; seeds from {args.seed0}; {'small' if args.small else 'full-size'} "
        "subjects, full pipeline from zip), 95 % level:",
        "",
        "| change (size) | target | pairs | mean true change | rms se | flagged | sd z | sd (change - truth) / se |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        size = "" if r["change"] == "none" else f" ({r['size']:+g})"
        what = ("false flags" if r["changed_pairs"] == 0 else "power" if AIMED.get(str(r["change"])) == r["target"]
                else "side effect")
        lines.append(
            f"| {r['change']}{size} | {r['target']} | {r['pairs']} | {r['mean_true_change']:+.3g} {r['unit']} | "
            f"{r['rms_se']:.3g} | {100 * float(r['flagged_share']):.1f} % ({what}) | {r['sd_z']:.2f} | "
            f"{r['sd_z_about_truth']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-null", type=int, default=150)
    ap.add_argument("--n-change", type=int, default=40)
    ap.add_argument("--seed0", type=int, default=600_000)
    ap.add_argument("--module", default="phantom-demo")
    ap.add_argument("--small", action="store_true", help="small subjects (fast; the demo module is biased on them)")
    ap.add_argument("--work", type=Path, default=ROOT / ".scratch" / "bench-change")
    ap.add_argument("--workers", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    ap.add_argument("--markdown", type=Path, help="also write the table to this file")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON")
    a = ap.parse_args(argv)
    rows = run(a.n_null, a.n_change, a.seed0, a.work, a.module, a.workers, a.small)
    text = markdown(rows, a)
    print(text)
    if a.markdown:
        a.markdown.write_text(text)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
