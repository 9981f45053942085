"""Fat-water swap detection and QC false positives on synthetic subjects.

Every subject is drawn by :mod:`mimir.synth`, written as a real field-20201 zip,
read back through the pipeline (DICOM reading, station pairing) and judged by
:func:`mimir.preprocessing.qc.assess` with the thresholds in
:mod:`mimir.preprocessing.qc`. Three groups, each with its own seeds:

- **whole**: ``fat_water_swap`` with ``swap_station`` 1..6 (``--n-whole`` per station);
  detected = ``fat_water_swap:station=N`` on the swapped station;
- **partial**: ``fat_water_swap_partial`` for each region (left, right, slices:
  stations 1..6; arms: stations 2-3), ``--n-partial`` per region and station;
  detected = ``fat_water_swap`` or ``fat_water_swap_partial`` on the swapped
  station. The target (>= 90 %) applies to swaps covering >= 20 % of the
  station's body voxels (``body_fraction`` in the truth); smaller ones are
  reported separately;
- **normal**: every variant without a swap that preprocesses (regular, rescan,
  missing_slice, wf_shape_mismatch, no_manifest, manifest_csv, no_overlap),
  ``--n-normal`` each; a false positive is any swap flag.

Thresholds were chosen on the tuning seeds (``--set tuning``, which also prints
the distributions of the decision numbers) and are measured on the test seeds
(``--set test``), which were not looked at while choosing them.

    python benchmarks/qc.py --set tuning --small
    python benchmarks/qc.py --set test --small --n-whole 100 --n-partial 25 --n-normal 100
    python benchmarks/qc.py --timing 5      # QC share of preprocessing time, full-size subjects

``--small`` uses the reduced-size subjects (same code path, about 10x faster).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mimir.errors import MimirError
from mimir.preprocessing import qc
from mimir.preprocessing.pipeline import read_stations
from mimir.synth import build_study, study_zip_bytes

#: First seed of each set; groups and cases are offset from it so no seed is reused.
SET_SEEDS = {"tuning": 1_000_000, "test": 2_000_000}
NORMAL_VARIANTS = (None, "rescan", "missing_slice", "wf_shape_mismatch", "no_manifest", "manifest_csv", "no_overlap")
REGIONS = {"left": range(1, 7), "right": range(1, 7), "slices": range(1, 7), "arms": (2, 3)}


def judge(seed: int, variant: str | None, small: bool, tmp: Path, **swap: object) -> tuple[qc.QCRecord | None, dict]:
    """(QC record or None when the zip is refused, the truth's variant details) of one subject."""
    study = build_study(seed, variant=variant, small=small, **swap)  # type: ignore[arg-type]
    path = tmp / f"{study.eid}_20201_2_0.zip"
    path.write_bytes(study_zip_bytes(study))
    try:
        return qc.assess(read_stations(path)), dict(study.truth["variant_details"] or {})  # type: ignore[arg-type]
    except MimirError:
        return None, {}
    finally:
        path.unlink()


def swap_flag_stations(record: qc.QCRecord) -> dict[int, str]:
    """station -> "whole" / "partial" for the swap flags of a record."""
    out = {}
    for flag in record.flags:
        code, _, detail = flag.partition(":")
        if code in ("fat_water_swap", "fat_water_swap_partial"):
            out[int(detail.split("=")[1])] = "whole" if code == "fat_water_swap" else "partial"
    return out


def pct(k: int, n: int) -> str:
    return f"{k}/{n} ({100.0 * k / n:.1f} %)" if n else "-"


def run(args: argparse.Namespace) -> None:
    base = SET_SEEDS[args.set]
    tmp = Path(tempfile.mkdtemp(prefix="qc-bench-", dir=args.scratch))
    numbers: dict[str, list[float]] = defaultdict(list)  # edge_low by group, for the tuning printout
    seams: dict[str, list[float]] = defaultdict(list)
    t0 = time.perf_counter()
    size = "small" if args.small else "full-size"
    print(f"# {args.set} set, {size} subjects, first seed {base}; thresholds whole > {qc.WHOLE_EDGE_LOW}, "
          f"partial > {qc.PARTIAL_EDGE_LOW} (seam bonus {qc.SEAM_BONUS})")

    print("\n## whole-station swaps (fat_water_swap, swap_station=N)")
    print("| station | seeds | detected as fat_water_swap | any swap flag on it | flags on other stations |")
    print("|---|---|---|---|---|")
    for st in range(1, 7):
        seed0 = base + 10_000 * st
        hit = anyhit = other = n = 0
        for k in range(args.n_whole):
            rec, _ = judge(seed0 + k, "fat_water_swap", args.small, tmp, swap_station=st)
            if rec is None:
                continue
            n += 1
            flags = swap_flag_stations(rec)
            hit += flags.get(st) == "whole"
            anyhit += st in flags
            other += any(s != st for s in flags)
            numbers["whole"].append(rec.stations[st - 1].edge_low or 0.0)
        print(f"| {st} | {seed0}-{seed0 + args.n_whole - 1} | {pct(hit, n)} | {pct(anyhit, n)} | {pct(other, n)} |")

    print("\n## partial swaps (fat_water_swap_partial), detected = any swap flag on the swapped station")
    print("| region | station | seeds | covering >= 20 % of body: detected | < 20 %: detected | flags on other stations |")
    print("|---|---|---|---|---|---|")
    tot_big = [0, 0]
    for r_i, (region, stations) in enumerate(REGIONS.items()):
        for st in stations:
            seed0 = base + 100_000 + 10_000 * (6 * r_i + st)
            big, small_ = [0, 0], [0, 0]
            other = n = 0
            for k in range(args.n_partial):
                rec, det = judge(seed0 + k, "fat_water_swap_partial", args.small, tmp, swap_station=st,
                                 swap_region=region)
                if rec is None:
                    continue
                n += 1
                flags = swap_flag_stations(rec)
                cell = big if float(det.get("body_fraction", 0.0)) >= 0.2 else small_
                cell[0] += st in flags
                cell[1] += 1
                other += any(s != st for s in flags)
                numbers["partial>=20%" if cell is big else "partial<20%"].append(rec.stations[st - 1].edge_low or 0.0)
            tot_big[0] += big[0]
            tot_big[1] += big[1]
            print(f"| {region} | {st} | {seed0}-{seed0 + args.n_partial - 1} | {pct(*big)} | {pct(*small_)} | "
                  f"{pct(other, n)} |")
    print(f"| all | | | {pct(*tot_big)} | | |")

    print("\n## subjects without a swap: false positives (any swap flag)")
    print("| variant | seeds | refused | swap flags (false positives) | other flags raised |")
    print("|---|---|---|---|---|")
    fp_total = n_total = 0
    for v_i, variant in enumerate(NORMAL_VARIANTS):
        seed0 = base + 400_000 + 10_000 * v_i
        fp = n = refused = 0
        other: dict[str, int] = defaultdict(int)
        for k in range(args.n_normal):
            rec, _ = judge(seed0 + k, variant, args.small, tmp)
            if rec is None:
                refused += 1
                continue
            n += 1
            fp += bool(swap_flag_stations(rec))
            for flag in rec.flags:
                if not flag.startswith("fat_water_swap"):
                    other[flag.split(":")[0]] += 1
            for s in rec.stations:
                numbers["normal"].append(s.edge_low or 0.0)
                if s.seam_corr is not None:
                    seams["normal"].append(s.seam_corr)
        fp_total += fp
        n_total += n
        others = ", ".join(f"{c} {m}" for c, m in sorted(other.items())) or "-"
        print(f"| {variant or 'regular'} | {seed0}-{seed0 + args.n_normal - 1} | {refused} | {pct(fp, n)} | {others} |")
    print(f"| all | | | {pct(fp_total, n_total)} | |")

    if args.set == "tuning":
        print("\n## decision numbers on the tuning set (edge_low of the swapped station; all stations for normal)")
        print("| group | n | min | 1 % | 50 % | 99 % | max |")
        print("|---|---|---|---|---|---|---|")
        for group, vals in numbers.items():
            a = np.array(vals)
            q = np.percentile(a, [0, 1, 50, 99, 100])
            print(f"| {group} | {a.size} | " + " | ".join(f"{x:.3f}" for x in q) + " |")
        if seams["normal"]:
            a = np.array(seams["normal"])
            print(f"\nseam correlation, normal subjects: min {a.min():.3f}, 1 % {np.percentile(a, 1):.3f}, "
                  f"median {np.median(a):.3f}")
    print(f"\n({time.perf_counter() - t0:.0f} s)")
    os.rmdir(tmp)


def timing(args: argparse.Namespace) -> None:
    """CPU time of QC against the rest of preprocessing, full-size regular subjects."""
    from mimir.preprocessing.fusion import fuse_stations
    from mimir.preprocessing.projection import make_image

    tmp = Path(tempfile.mkdtemp(prefix="qc-time-", dir=args.scratch))
    rows = []
    for k in range(args.timing):
        study = build_study(700_000 + k, small=False)
        path = tmp / f"{study.eid}_20201_2_0.zip"
        path.write_bytes(study_zip_bytes(study))
        best = [np.inf, np.inf]
        for _ in range(3):
            t = time.process_time()
            stations = read_stations(path)
            volumes = fuse_stations(stations)
            make_image(volumes.water, volumes.fat)
            t_pre = time.process_time() - t
            t = time.process_time()
            qc.assess(stations)
            t_qc = time.process_time() - t
            best = [min(best[0], t_pre), min(best[1], t_qc)]
        rows.append(best)
        path.unlink()
        print(f"subject {700_000 + k}: preprocessing {best[0]:.3f} s CPU, QC {best[1] * 1000:.0f} ms CPU "
              f"(+{100 * best[1] / best[0]:.1f} %)")
    a = np.array(rows)
    print(f"median: preprocessing {np.median(a[:, 0]):.3f} s, QC {np.median(a[:, 1]) * 1000:.0f} ms, "
          f"+{100 * np.median(a[:, 1] / a[:, 0]):.1f} % (min of 3 repeats each, process CPU time)")
    os.rmdir(tmp)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", choices=tuple(SET_SEEDS), default="test")
    ap.add_argument("--small", action="store_true", help="reduced-size subjects")
    ap.add_argument("--n-whole", type=int, default=20, help="subjects per swapped station")
    ap.add_argument("--n-partial", type=int, default=10, help="subjects per region and station")
    ap.add_argument("--n-normal", type=int, default=20, help="subjects per variant without a swap")
    ap.add_argument("--timing", type=int, default=0, metavar="N", help="only time QC on N full-size subjects")
    ap.add_argument("--scratch", default=".scratch", help="folder for the temporary zips")
    args = ap.parse_args()
    Path(args.scratch).mkdir(parents=True, exist_ok=True)
    logging.getLogger("mimir").setLevel(logging.ERROR)  # the repairs of the variants are expected
    if args.timing:
        timing(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
