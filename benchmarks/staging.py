"""What staging costs per subject: copying a full-size zip to local disk and verifying it (size, MD5, zip CRCs).

``mimir batch --stage`` does this in a thread of the main process, ahead of
the workers; this script times :func:`mimir.batch.staging.copy_verified` on
full-size synthetic subjects (the source file in the page cache, so this is
the CPU cost of verification plus a local copy, not the speed of a network
mount), CPU and wall seconds, minimum over repeats, beside the subject's
size. Compare with the warm preprocessing time per subject in
docs/performance.md.

    python benchmarks/staging.py --n 2 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from mimir.batch.rap import Expected
from mimir.batch.staging import copy_verified
from mimir.synth import generate_subject


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2, help="full-size subjects")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None, help="reuse subjects here (made when absent)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = args.dir or Path(tmp) / "src"
        src.mkdir(parents=True, exist_ok=True)
        zips = sorted(src.glob("*_20201_2_0.zip"))[: args.n]
        for seed in range(100, 100 + args.n - len(zips)):
            zips.append(generate_subject(src, seed).zip_path)
        for z in zips:
            size = z.stat().st_size
            best_cpu = best_wall = float("inf")
            for _ in range(args.repeats):
                dest = Path(tmp) / z.name
                c0, w0 = time.process_time(), time.perf_counter()
                copy_verified(str(z), dest, Expected(size))
                best_cpu = min(best_cpu, time.process_time() - c0)
                best_wall = min(best_wall, time.perf_counter() - w0)
                os.unlink(dest)
            print(f"{z.name}: {size / 1e6:.1f} MB, copy + verify {best_cpu:.3f} s CPU, {best_wall:.3f} s wall "
                  f"(min of {args.repeats})")


if __name__ == "__main__":
    main()
