"""Cost of writing the NIfTI volumes (``--volumes``) against preprocessing itself, per subject; gzip levels.

On full-size synthetic subjects, in one process pinned to one core (as a
``mimir batch`` worker), cache off, CPU time (user + system; the machine may
be shared), minimum over ``--repeats`` passes:

- ``preprocess``: zip -> image (what every run pays);
- ``convert``: zip -> image + volumes + sidecar (``convert_subject``), for the
  default contrasts (water, fat, ff) and for all five;
- ``extra``: convert - preprocess, the price of ``--volumes``, and its ratio to preprocess;
- the bytes written, and the process's peak resident memory;
- ``--levels``: for the first subject's water volume, the gzip stream's CPU time and size at each level,
  with python-isal (levels 0-3) and with zlib (levels 1, 6), the data as written (float64) and as float32.

    python benchmarks/volumes.py --n 2 --dir /tmp/bench-subjects
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
import time
import zlib
from pathlib import Path


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def _min_cpu(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(repeats):
        t0 = _cpu()
        fn()
        best = min(best, _cpu() - t0)
    return best


def _levels(zip_path: Path) -> None:
    import numpy as np

    from mimir.outputs.nifti import SLAB_SLICES
    from mimir.preprocessing.volumes import read_subject

    water = read_subject(zip_path, ("water",)).signal("water")
    print(f"\ngzip of one water volume {water.shape} (CPU s, MB; min of 2):")
    try:
        from isal import isal_zlib
    except ImportError:
        isal_zlib = None
    for dtype in (np.float64, np.float32):
        data = water.astype(dtype)
        slabs = [np.ascontiguousarray(data[:, :, k : k + SLAB_SLICES].transpose(2, 1, 0))
                 for k in range(0, data.shape[2], SLAB_SLICES)]
        raw_mb = data.nbytes / 1e6
        libs = ([("isal", isal_zlib, lv) for lv in (0, 1, 2, 3)] if isal_zlib else []) + [("zlib", zlib, lv) for lv in (1, 6)]
        for name, lib, level in libs:
            size = 0

            def run() -> None:
                nonlocal size
                c = lib.compressobj(level, lib.DEFLATED, 31)
                size = sum(len(c.compress(memoryview(s).cast("B"))) for s in slabs) + len(c.flush())

            t = _min_cpu(run, 2)
            print(f"  {np.dtype(dtype).name:8s} {name} level {level}: {t:5.2f} s  {size / 1e6:6.1f} MB "
                  f"of {raw_mb:.0f} MB ({size / data.nbytes:.0%})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2, help="full-size synthetic subjects (default 2)")
    ap.add_argument("--dir", type=Path, default=None, help="where the subjects are made (kept for reuse)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-levels", action="store_true", help="skip the gzip level table")
    args = ap.parse_args()

    from mimir.batch.volumes import convert_subject
    from mimir.preprocessing.pipeline import preprocess
    from mimir.preprocessing.volumes import CONTRASTS, DEFAULT_CONTRASTS
    from mimir.synth import generate_subject

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    work = args.dir or Path(tempfile.mkdtemp(prefix="mimir-vol-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    zips = []
    for seed in range(1, args.n + 1):
        found = sorted(work.glob(f"100{seed:04d}_20201_2_0.zip"))
        zips.append(found[0] if found else generate_subject(work, seed).zip_path)
    print(f"{platform.node()} {platform.processor() or platform.machine()}, Python {sys.version.split()[0]}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; one core, cache off, CPU s (min of {args.repeats})")
    out = Path(tempfile.mkdtemp(prefix="mimir-vol-out-"))
    for z in zips:
        pre = _min_cpu(lambda: preprocess(z, cache=False), args.repeats)
        print(f"{z.name}: preprocess {pre:.2f} s")
        for contrasts in (DEFAULT_CONTRASTS, tuple(CONTRASTS)):
            written: list[Path] = []

            def run() -> None:
                nonlocal written
                written = convert_subject(z, out, contrasts, cache=False).written

            conv = _min_cpu(run, args.repeats)
            size = sum(p.stat().st_size for p in written)
            print(f"  --contrasts {','.join(contrasts):22s} convert {conv:.2f} s, extra {conv - pre:.2f} s "
                  f"= {(conv - pre) / pre:.1f} x preprocess; {size / 1e6:.0f} MB written")
            for p in written:
                p.unlink()
    print(f"peak resident memory of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    if not args.no_levels:
        _levels(zips[0])


if __name__ == "__main__":
    main()
