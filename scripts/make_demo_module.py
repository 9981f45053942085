#!/usr/bin/env python
"""Reproduce the built-in ``phantom-demo`` module end to end.

Steps (each can be run alone; ``all`` runs them in order)::

    python scripts/make_demo_module.py data  --out .scratch/demo-train   # synthetic training images + targets.csv
    python scripts/make_demo_module.py train --out .scratch/demo-train   # mimir train ... -> mimir/data/modules/phantom-demo
    python scripts/make_demo_module.py all   --out .scratch/demo-train

``data`` draws full-size synthetic subjects with seeds ``TRAIN_SEED0 ..
TRAIN_SEED0 + n - 1`` (``mimir.synth``), turns each into its ``mimir-v1``
image with the pipeline's own functions (see ``scripts/synth_images.py``;
identical to preprocessing the subject's zip, which ``--check`` verifies on a
few subjects), and writes ``images/<eid>_20201_2_0.npy`` plus ``targets.csv``
(the six truth values per subject). It resumes: images already written are
kept.

``csv`` rewrites ``targets.csv`` from the subjects written so far (to train on
a partial set when generation is stopped early).

``train`` runs exactly the ``mimir train`` command in :data:`TRAIN_ARGS`
(printed before it starts). The accuracy table of the result on 200 unseen
subjects is made by ``benchmarks/demo_accuracy.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

#: First seed of the training subjects (benchmarks use seeds from 500000 on, ``mimir demo`` from 900000).
TRAIN_SEED0 = 10_000
#: Default number of training subjects.
TRAIN_N = 2000
MODULE_DIR = ROOT / "mimir" / "data" / "modules" / "phantom-demo"

#: The training command (after ``mimir train IMAGES TARGETS.csv -o MODULE_DIR``).
TRAIN_ARGS = [
    "--name", "phantom-demo",
    "--version", "1.1",
    "--members", "4",
    "--arch", "resnet50",
    "--width", "8",
    "--iterations", "5000",
    "--batch-size", "16",
    "--lr", "1e-3",
    "--val-fraction", "0.2",
    "--calibration", "ci95",
    "--seed", "0",
    "--device", "cpu",
    "--threads", "1",
    "--workers", "2",
    "--force",
    "--keep-checkpoints",
    "--units", "weight_kg=kg,height_cm=cm,vat_volume_l=L,asat_volume_l=L,liver_fat_percent=percent,"
    "thigh_muscle_volume_l=L",
    "--description",
    "Demonstration module trained on synthetic phantom subjects (mimir synth); slim ResNet50 (width 8) ensemble.",
    "--intended-use",
    "synthetic-demo",
    "--intended-use-note",
    "Synthetic demonstration only: shows the mimir pipeline working on mimir synth phantoms. "
    "Its predictions on real UK Biobank images are meaningless.",
]


def _one(args: tuple[int, str]) -> tuple[int, dict[str, float] | None]:
    import numpy as np

    from mimir.utils.atomic import atomic_path, write_text
    from synth_images import DEMO_TARGETS, study_image

    seed, out = args
    images = Path(out) / "images"
    truth_dir = Path(out) / "truth"
    eid = 1_000_000 + seed
    npy = images / f"{eid}_20201_2_0.npy"
    tj = truth_dir / f"{eid}.json"
    if npy.is_file() and tj.is_file():
        return seed, json.loads(tj.read_text())
    try:
        image, truth = study_image(seed)
    except Exception as exc:  # a seed the generator cannot draw is skipped, and said so
        print(f"seed {seed} skipped: {type(exc).__name__}: {exc}", flush=True)
        return seed, None
    values = {k: float(truth[k]) for k in DEMO_TARGETS}
    with atomic_path(npy, suffix=".npy") as tmp:
        np.save(tmp, image, allow_pickle=False)
    write_text(tj, json.dumps(values) + "\n")
    return seed, values


def make_data(out: Path, n: int, seed0: int, workers: int, check: bool) -> None:
    """Write ``n`` training images and ``targets.csv`` into ``out``."""
    from multiprocessing import Pool

    from synth_images import check_identical

    out.mkdir(parents=True, exist_ok=True)
    if check:
        check_identical([seed0, seed0 + 1], str(out / "check"))
        print("fast path identical to the zip pipeline on 2 subjects", flush=True)
    seeds = list(range(seed0, seed0 + n))
    rows: dict[int, dict[str, float]] = {}
    t0 = time.time()
    with Pool(workers) as pool:
        for k, (seed, values) in enumerate(pool.imap_unordered(_one, [(s, str(out)) for s in seeds], chunksize=4)):
            if values is not None:
                rows[seed] = values
            if (k + 1) % 50 == 0 or k + 1 == n:
                print(f"{k + 1}/{n} subjects ({time.time() - t0:.0f} s)", flush=True)
    skipped = [sd for sd in seeds if sd not in rows]
    if skipped:
        print(f"{len(skipped)} seeds could not be drawn: {skipped[:10]}", flush=True)
    write_targets_csv(out, seed0, None if skipped else n)


def write_targets_csv(out: Path, seed0: int = TRAIN_SEED0, n: int | None = None) -> int:
    """``targets.csv`` for seeds ``seed0 .. seed0 + n - 1`` (default: the longest run of
    consecutive seeds from ``seed0`` whose image and truth are written); returns the count."""
    from mimir.utils.atomic import write_text
    from synth_images import DEMO_TARGETS

    lines = ["name," + ",".join(DEMO_TARGETS)]
    k = 0
    while n is None or k < n:
        eid = 1_000_000 + seed0 + k
        name = f"{eid}_20201_2_0"
        tj = out / "truth" / f"{eid}.json"
        if not ((out / "images" / f"{name}.npy").is_file() and tj.is_file()):
            if n is not None:
                raise SystemExit(f"subject seed {seed0 + k} is missing in {out}; run the data step first")
            break
        v = json.loads(tj.read_text())
        lines.append(name + "," + ",".join(repr(float(v[t])) for t in DEMO_TARGETS))
        k += 1
    write_text(out / "targets.csv", "\n".join(lines) + "\n")
    print(f"wrote {out / 'targets.csv'} (seeds {seed0}-{seed0 + k - 1}, {k} subjects)", flush=True)
    return k


def _rel(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(ROOT))
    except ValueError:
        return str(p)


def train_command(out: Path, module_dir: Path) -> list[str]:
    """The exact ``mimir train`` command line (paths relative to the repository root)."""
    exe = Path(sys.executable).parent / "mimir"
    prog = [str(exe)] if exe.is_file() else [sys.executable, "-c", "from mimir.cli import main; main()"]
    return [
        *prog, "train", _rel(out / "images"), _rel(out / "targets.csv"), "-o", _rel(module_dir),
        "--work-dir", _rel(out / "checkpoints"), *TRAIN_ARGS,
    ]


def run_train(out: Path, module_dir: Path, extra: list[str]) -> None:
    cmd = train_command(out, module_dir) + extra
    print("$ " + shlex.join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=("data", "csv", "train", "all"))
    ap.add_argument("--out", type=Path, default=ROOT / ".scratch" / "demo-train", help="work folder")
    ap.add_argument("--n", type=int, default=TRAIN_N, help="training subjects")
    ap.add_argument("--seed0", type=int, default=TRAIN_SEED0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--check", action="store_true", help="verify the fast path against real zips first")
    ap.add_argument("--module-dir", type=Path, default=MODULE_DIR)
    ap.add_argument("extra", nargs="*", help="extra mimir train options (after --)")
    a = ap.parse_args(argv)
    if a.step in ("data", "all"):
        make_data(a.out, a.n, a.seed0, a.workers, a.check)
    if a.step == "csv":
        write_targets_csv(a.out, a.seed0)
    if a.step in ("train", "all"):
        run_train(a.out, a.module_dir, a.extra)


if __name__ == "__main__":
    main()
