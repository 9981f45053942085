"""Preprocessing speed and memory on full-size synthetic subjects, on one core.

One process pinned to one core preprocesses the subjects one after the other,
as a `mimir batch` worker does (cache off). Per subject it prints the total
seconds (zip -> image), the seconds spent only reading and decoding the
water/fat slices from the zip, their ratio, and the process's peak resident
memory so far. The first subject is the cold start of a fresh process.

    python benchmarks/preprocess.py --n 6 --seed 100
    python benchmarks/preprocess.py --fresh      # a new process per subject (all cold)
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _measure(zip_paths: list[str], queue: mp.Queue) -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})
    from mimir.preprocessing.reader import read_signal_slices
    from mimir.utils.memory import reuse_freed_memory
    from mimir.preprocessing.pipeline import preprocess

    reuse_freed_memory()
    for path in zip_paths:
        t0 = time.perf_counter()
        read_signal_slices(path)
        t_read = time.perf_counter() - t0
        t0 = time.perf_counter()
        preprocess(path, cache=False)
        t_total = time.perf_counter() - t0
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        queue.put((path, t_total, t_read, peak_mb))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=6, help="number of subjects")
    parser.add_argument("--seed", type=int, default=100, help="first seed")
    parser.add_argument("--dir", type=Path, default=None, help="reuse/keep subjects here")
    parser.add_argument("--fresh", action="store_true", help="a new process for every subject")
    args = parser.parse_args()

    from mimir.synth import generate

    workdir = args.dir or Path(tempfile.mkdtemp(prefix="mimir-bench-"))
    paths = []
    for i in range(args.n):
        zip_path = workdir / f"{1000000 + args.seed + i}_20201_2_0.zip"
        if not zip_path.exists():
            generate(workdir, n=1, seed=args.seed + i)
        paths.append(str(zip_path))

    ctx = mp.get_context("spawn")
    groups = [[p] for p in paths] if args.fresh else [paths]
    rows = []
    print(f"{'subject':<26} {'total s':>8} {'read s':>8} {'ratio':>6} {'peak MB':>8}")
    for group in groups:
        queue = ctx.Queue()
        proc = ctx.Process(target=_measure, args=(group, queue))
        proc.start()
        for _ in group:
            path, t_total, t_read, peak = queue.get()
            rows.append((t_total, t_read, peak))
            print(f"{Path(path).name:<26} {t_total:8.3f} {t_read:8.3f} {t_total / t_read:6.2f} {peak:8.0f}")
        proc.join()
    steady = rows if args.fresh or len(rows) < 2 else rows[1:]
    tot = statistics.median(r[0] for r in steady)
    rd = statistics.median(r[1] for r in steady)
    label = "median (all cold)" if args.fresh else "median (2nd subject on)"
    print(f"{label:<26} {tot:8.3f} {rd:8.3f} {tot / rd:6.2f} {max(r[2] for r in rows):8.0f}")
    print(f"one core of {os.cpu_count()}; {platform.processor() or platform.machine()}; python {sys.version.split()[0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
