"""Reading cost of each DICOM encoding relative to the plain file UK Biobank ships.

One full-size synthetic subject is rewritten in every encoding of
:mod:`mimir.synth.encodings`; for each, the CPU time of reading the water and
fat slices (``read_signal_slices``) and of the whole zip -> image
(``preprocess``, cache off) is measured (``time.process_time``, minimum of
``--repeat`` runs, one process), checked to give the identical image, and
printed with its slowdown against the plain file.

    python benchmarks/encodings.py              # full-size subject, 3 repeats
    python benchmarks/encodings.py --small      # quick check
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path


def _cpu(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--small", action="store_true", help="a small subject (fast, less representative)")
    parser.add_argument("--dir", type=Path, default=None, help="keep the zips here")
    args = parser.parse_args()

    import numpy as np

    from mimir.preprocessing.pipeline import preprocess
    from mimir.preprocessing.reader import read_signal_slices
    from mimir.synth import generate_subject
    from mimir.synth.encodings import ENCODINGS, encoding_available, reencode_zip

    from mimir.utils.memory import reuse_freed_memory

    reuse_freed_memory()  # as a batch worker: freed blocks are reused, so no encoding pays the first page faults
    work = args.dir or Path(tempfile.mkdtemp(prefix="mimir-enc-"))
    work.mkdir(parents=True, exist_ok=True)
    plain = generate_subject(work, seed=args.seed, small=args.small).zip_path
    reference = preprocess(plain, cache=False)
    read_signal_slices(plain)  # warm-up: the baseline must not carry the process's first-call costs
    base_read = _cpu(lambda: read_signal_slices(plain), args.repeat)
    base_total = _cpu(lambda: preprocess(plain, cache=False), args.repeat)
    print(f"{'encoding':<27} {'read s':>7} {'x plain':>8} {'total s':>8} {'x plain':>8}  image")
    print(f"{'plain (as shipped)':<27} {base_read:7.3f} {1:8.2f} {base_total:8.3f} {1:8.2f}  reference")
    for name in ENCODINGS:
        if not encoding_available(name):
            print(f"{name:<27} skipped: no encoder here (pip install 'ukb-mimir[codecs]')")
            continue
        path = reencode_zip(plain, work / f"{name}.zip", name)
        same = np.array_equal(preprocess(path, cache=False), reference)
        t_read = _cpu(lambda p=path: read_signal_slices(p), args.repeat)
        t_total = _cpu(lambda p=path: preprocess(p, cache=False), args.repeat)
        print(f"{name:<27} {t_read:7.3f} {t_read / base_read:8.2f} {t_total:8.3f} {t_total / base_total:8.2f}  "
              f"{'identical' if same else 'DIFFERENT'}")
    size = "small" if args.small else "full-size"
    print(f"{size} subject, CPU time, min of {args.repeat}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores; python {sys.version.split()[0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
