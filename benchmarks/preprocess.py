"""Preprocessing speed and memory on full-size synthetic subjects, on one core.

Prints, per subject: total seconds (zip -> image, cache off), the seconds
spent only reading and decoding the water/fat slices, their ratio, and the
peak resident memory of the process that did the work.

    python benchmarks/preprocess.py --n 5 --seed 100
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _measure(zip_path: str, queue: mp.Queue) -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    from mimir.dicom_reader import read_signal_slices
    from mimir.pipeline import preprocess

    t0 = time.perf_counter()
    read_signal_slices(zip_path)
    t_read = time.perf_counter() - t0
    t0 = time.perf_counter()
    preprocess(zip_path, cache=False)
    t_total = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put((t_total, t_read, peak_mb))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5, help="number of subjects")
    parser.add_argument("--seed", type=int, default=100, help="first seed")
    parser.add_argument("--dir", type=Path, default=None, help="reuse/keep subjects here")
    args = parser.parse_args()

    from mimir.synth import generate

    workdir = args.dir or Path(tempfile.mkdtemp(prefix="mimir-bench-"))
    subjects = generate(workdir, n=args.n, seed=args.seed)
    ctx = mp.get_context("spawn")  # a fresh process per subject: honest peak memory
    rows = []
    print(f"{'subject':<28} {'total s':>8} {'read s':>8} {'ratio':>6} {'peak MB':>8}")
    for s in subjects:
        queue = ctx.Queue()
        proc = ctx.Process(target=_measure, args=(str(s.zip_path), queue))
        proc.start()
        t_total, t_read, peak = queue.get()
        proc.join()
        rows.append((t_total, t_read, peak))
        print(f"{s.zip_path.name:<28} {t_total:8.3f} {t_read:8.3f} {t_total / t_read:6.2f} {peak:8.0f}")
    tot = statistics.median(r[0] for r in rows)
    rd = statistics.median(r[1] for r in rows)
    print(f"{'median':<28} {tot:8.3f} {rd:8.3f} {tot / rd:6.2f} {max(r[2] for r in rows):8.0f} (max)")
    print(f"cpu: {os.cpu_count()} cores visible, 1 used; python {sys.version.split()[0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
