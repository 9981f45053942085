"""Preprocessing speed on full-size synthetic subjects: warm per subject, cold first subject, read time.

Three figures, each with the time spent only reading and decoding the zip's
water/fat slices beside it (the floor that the rest is measured against):

- warm: one process pinned to one core preprocesses the subjects one after
  the other, as a `mimir batch` worker does (cache off); per subject the
  minimum over ``--repeats`` passes, CPU time (user + system) and wall time;
- cold: a fresh ``python`` process per try, from interpreter start to the
  first image (imports, first-touch memory and the subject itself);
  minimum over ``--cold-repeats`` tries;
- stages (``--stages``): CPU time of each step for the first subject (min of ``--repeats``).

The machine may be shared: CPU times and minima are the figures to compare;
wall times are printed beside them. ``MIMIR_KERNELS=0`` in the environment
measures the plain NumPy path instead of the compiled C kernels (see
``mimir.preprocessing.accel``).

    python benchmarks/preprocess.py --n 3 --dir /tmp/bench-subjects
    python benchmarks/preprocess.py --n 3 --stages
    python benchmarks/preprocess.py --n 1 --first-prediction   # + time to the first prediction (needs torch)
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_COLD = """
import time
t0 = time.perf_counter()
from mimir.preprocessing.pipeline import preprocess
preprocess({path!r}, cache=False)
print(time.perf_counter() - t0)
"""


_FIRST = """
import time
t0 = time.perf_counter()
import mimir.cli
t1 = time.perf_counter()
import torch
t2 = time.perf_counter()
from mimir.inference.predictor import Predictor
predictor = Predictor(["phantom-demo"], device="cpu")
t3 = time.perf_counter()
from mimir.preprocessing.pipeline import preprocess
image = preprocess({path!r}, cache=False)
t4 = time.perf_counter()
predictor.predict_arrays(image[None])
t5 = time.perf_counter()
print(t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)
"""


def _first_prediction(path: str, repeats: int) -> None:
    """Time to the first prediction: ``mimir predict ZIP -m phantom-demo --no-cache`` in a fresh process
    (interpreter start to exit, CPU on the machine's cores), and the same steps timed in a fresh interpreter."""
    env = _subprocess_env()
    best_cpu = best_wall = float("inf")
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "mimir", "predict", path, "-m", "phantom-demo", "--no-cache"],
                       check=True, env=env, capture_output=True)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        best_cpu = min(best_cpu, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))
        best_wall = min(best_wall, wall)
    steps = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", _FIRST.format(path=path)], check=True, env=env,
                             capture_output=True, text=True)
        steps.append([float(x) for x in out.stdout.split()])
    names = ("import the CLI", "import torch", "load the module (4 members)", "preprocess the subject",
             "forward pass")
    print(f"\ntime to first prediction: mimir predict ZIP -m phantom-demo --no-cache, fresh process, min of {repeats}:")
    print(f"  wall {best_wall:.2f} s   cpu {best_cpu:.2f} s")
    print("  its steps in a fresh interpreter (wall s, min):")
    for i, name in enumerate(names):
        print(f"    {name:<30} {min(row[i] for row in steps):6.3f}")


def _pin_one_core() -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})


def _clock() -> tuple[float, float]:
    return time.process_time(), time.perf_counter()


def _warm(zip_paths: list[str], repeats: int, queue: mp.Queue) -> None:
    _pin_one_core()
    from mimir.preprocessing.pipeline import preprocess
    from mimir.preprocessing.reader import read_signal_slices
    from mimir.utils.memory import reuse_freed_memory

    reuse_freed_memory()
    preprocess(zip_paths[0], cache=False)  # first-call costs belong to the cold figure
    for path in zip_paths:
        best = [float("inf")] * 4
        for _ in range(repeats):
            c0, w0 = _clock()
            read_signal_slices(path)
            c1, w1 = _clock()
            preprocess(path, cache=False)
            c2, w2 = _clock()
            best = [min(a, b) for a, b in zip(best, (c2 - c1, w2 - w1, c1 - c0, w1 - w0))]
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        queue.put((path, *best, peak_mb))


def _stages(path: str, repeats: int, queue: mp.Queue) -> None:
    """CPU seconds per step of one subject, the minimum over ``repeats`` passes (after a first, cold one)."""
    _pin_one_core()

    from mimir.preprocessing import fusion, geometry, pipeline, projection, qc, stations
    from mimir.preprocessing.pipeline import preprocess
    from mimir.preprocessing.reader import read_signal_slices
    from mimir.utils.hashing import file_sha256
    from mimir.utils.memory import reuse_freed_memory

    reuse_freed_memory()
    preprocess(path, cache=False)
    best: dict[str, float] = {}

    def record(name: str, seconds: float) -> None:
        best[name] = min(best.get(name, float("inf")), seconds)

    def step(name, fn, *args):  # type: ignore[no-untyped-def]
        t = time.process_time()
        out = fn(*args)
        record(name, time.process_time() - t)
        return out

    def pair(grouped):  # type: ignore[no-untyped-def]
        sset = stations.pair_water_fat(grouped, path)
        geometry.check_geometry(sset, path)
        return sset

    def image(sset):  # type: ignore[no-untyped-def]
        placed = fusion.place_stations(sset)
        if placed is None:  # the NumPy path (MIMIR_KERNELS=0): fused volumes, then the image
            fused = step("fusion: resample, fade + correct, paste (NumPy)", fusion.fuse_stations, sset)
            return step("image: mask, Otsu, projections, fat fraction (NumPy)", projection.make_image,
                        fused.water, fused.fat)
        return step("image from placed: projections, Otsu, mask, FF",
                    projection.make_image_from_placed, placed)

    for _ in range(repeats):
        step("cache key (sha256 of the zip)", file_sha256, path)
        slices = step("read + decode water/fat slices", read_signal_slices, path)
        grouped = step("stations: sort and stack", stations.group_stations, slices, path)
        sset = step("stations: pair water/fat, check geometry", pair, grouped)
        step("QC record", qc.assess, sset)
        if fusion.place_stations(sset) is not None:
            step("fusion: resample, trim, fade + correct (placed)", fusion.place_stations, sset)
        image(sset)
        del slices, grouped, sset
        step("preprocess() total, cache off", lambda: preprocess(path, cache=False))
    assert pipeline.PIPELINE_VERSION
    queue.put(list(best.items()))


def _subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _cold(path: str, repeats: int) -> tuple[float, float]:
    """(min CPU s, min wall s) of a fresh interpreter from start to the first image."""
    best_cpu = best_wall = float("inf")
    env = _subprocess_env()
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", _COLD.format(path=path)], check=True, env=env, capture_output=True)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        best_cpu, best_wall = min(best_cpu, cpu), min(best_wall, wall)
    return best_cpu, best_wall


def subjects(workdir: Path, n: int, seed: int) -> list[str]:
    """Full-size synthetic subject zips (generated once, reused from ``workdir``)."""
    from mimir.synth import generate_subject

    paths = []
    for i in range(n):
        zip_path = workdir / f"{1000000 + seed + i}_20201_2_0.zip"
        if not zip_path.exists():
            generate_subject(workdir, seed=seed + i)
        paths.append(str(zip_path))
    return paths


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3, help="number of subjects")
    parser.add_argument("--seed", type=int, default=100, help="first seed")
    parser.add_argument("--dir", type=Path, default=None, help="reuse/keep subjects here")
    parser.add_argument("--repeats", type=int, default=3, help="warm passes per subject (minimum kept)")
    parser.add_argument("--cold-repeats", type=int, default=3, help="fresh processes for the cold figure")
    parser.add_argument("--stages", action="store_true", help="also print CPU time per step")
    parser.add_argument("--first-prediction", action="store_true",
                        help="also time mimir predict on the first subject in a fresh process (phantom-demo, CPU)")
    args = parser.parse_args()

    workdir = args.dir or Path(tempfile.mkdtemp(prefix="mimir-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    paths = subjects(workdir, args.n, args.seed)
    ctx = mp.get_context("spawn")
    from mimir.preprocessing import kernels

    path_mode = "compiled kernels (C)" if kernels.enabled() else (
        "NumPy only (MIMIR_KERNELS=0)" if kernels.available() else "NumPy only (the C extension is not built)"
    )
    print(f"preprocessing, {path_mode}; one core of {os.cpu_count()}; {platform.machine()}; "
          f"python {sys.version.split()[0]}; {time.strftime('%Y-%m-%d')}")

    if args.stages:
        queue = ctx.Queue()
        proc = ctx.Process(target=_stages, args=(paths[0], args.repeats, queue))
        proc.start()
        rows = queue.get()
        proc.join()
        print(f"\nstages of {Path(paths[0]).name} (CPU s, min of {args.repeats}):")
        for name, t in rows:
            print(f"  {name:<55} {t:7.3f}")

    queue = ctx.Queue()
    proc = ctx.Process(target=_warm, args=(paths, args.repeats, queue))
    proc.start()
    print(f"\nwarm, min of {args.repeats}:")
    print(f"  {'subject':<26} {'cpu s':>7} {'wall s':>7} {'read cpu':>9} {'read wall':>9} {'ratio':>6} {'peak MB':>8}")
    warm = []
    for _ in paths:
        path, cpu, wall, rcpu, rwall, peak = queue.get()
        warm.append((cpu, wall, rcpu, rwall))
        print(f"  {Path(path).name:<26} {cpu:7.3f} {wall:7.3f} {rcpu:9.3f} {rwall:9.3f} {cpu / rcpu:6.2f} {peak:8.0f}")
    proc.join()
    cpu, wall, rcpu, rwall = (min(w[i] for w in warm) for i in range(4))
    print(f"  {'best subject':<26} {cpu:7.3f} {wall:7.3f} {rcpu:9.3f} {rwall:9.3f} {cpu / rcpu:6.2f}")

    if args.cold_repeats > 0:
        ccpu, cwall = _cold(paths[0], args.cold_repeats)
        print(f"\ncold first subject in a fresh process (interpreter start to image), min of {args.cold_repeats}:")
        print(f"  cpu {ccpu:.3f} s   wall {cwall:.3f} s   (read + decode of that subject, warm: cpu {warm[0][2]:.3f} s)")
    if args.first_prediction:
        _first_prediction(paths[0], max(1, args.cold_repeats))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
