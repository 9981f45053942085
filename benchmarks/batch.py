"""Batch throughput: subjects per second of ``mimir batch`` (local engine) by worker count, cold and warm cache.

Generates full-size synthetic subjects (:mod:`mimir.synth`, about 55 MB each),
installs a random-weight module (ResNet50 of ``--width``, 3 targets) in a
temporary registry, and for each worker count runs

- **cold**: an empty image cache, ``--subjects`` distinct subjects (every zip
  is read, checked and fused);
- **warm**: the cache filled by the cold run, ``--warm-copies`` hard-linked
  names per subject (same bytes, so every subject is a cache hit: the zip is
  hashed and its image loaded);

and reports, per run, the steady throughput (subjects finished after the
first result, divided by the time from the first result to the last, so
process start-up is left out), the end-to-end throughput (all subjects over
the engine's wall time), and the share of time the inference stage waited
for images. It also times inference alone (:class:`mimir.inference.predictor.Predictor`
on random images at the same batch size and thread count) to show what
limits a warm run.

    python benchmarks/batch.py                                 # 16 subjects, workers 1 2
    python benchmarks/batch.py --workers 1 2 4 8 --device cuda --subjects 64
    python benchmarks/batch.py --quick                         # small subjects, for a smoke test

Data are kept in ``--data`` (default ``.scratch/bench-batch``) and reused.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mimir.batch.progress import Monitor  # noqa: E402


class TimingMonitor(Monitor):
    """Records the time of every finished subject."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def advance(self, ok: bool, failure: str | None = None) -> None:
        super().advance(ok, failure)
        self.times.append(time.monotonic())

    def steady_rate(self) -> float:
        """Subjects finished after the first batch's results / time from those to the last result.

        Results of one batch arrive together (within 50 ms); with fewer than
        two such bursts there is no steady state to measure (NaN).
        """
        t = self.times
        if not t:
            return float("nan")
        first = 1
        while first < len(t) and t[first] - t[first - 1] < 0.05:
            first += 1
        span = t[-1] - t[first - 1]
        return (len(t) - first) / span if first < len(t) and span > 0 else float("nan")


def _generate(folder: str, seed: int, small: bool, eid: int) -> None:
    from mimir.synth import generate_subject

    generate_subject(folder, seed=seed, small=small, eid=eid)
    (Path(folder) / f"{eid}.truth.json").unlink(missing_ok=True)


def make_data(root: Path, n: int, small: bool, copies: int, jobs: int = 1) -> tuple[Path, Path]:
    """(cold folder with n distinct subjects, warm folder with ``copies`` hard links per subject)."""
    from concurrent.futures import ProcessPoolExecutor

    cold = root / ("small" if small else "full") / f"cold{n}"
    warm = root / ("small" if small else "full") / f"warm{n}x{copies}"
    cold.mkdir(parents=True, exist_ok=True)
    eids = [2_000_000 + i for i in range(n)]
    missing = [(i, e) for i, e in enumerate(eids) if not (cold / f"{e}_20201_2_0.zip").exists()]
    if missing:
        print(f"  generating {len(missing)} subject(s) with {jobs} process(es)", file=sys.stderr)
        with ProcessPoolExecutor(max_workers=max(1, jobs)) as pool:
            list(pool.map(_generate, [str(cold)] * len(missing), [100 + i for i, _ in missing],
                          [small] * len(missing), [e for _, e in missing]))
    warm.mkdir(parents=True, exist_ok=True)
    for eid in eids:
        for c in range(copies):
            link = warm / f"{eid + 1_000_000 * (c + 1)}_20201_2_0.zip"
            if not link.exists():
                os.link(cold / f"{eid}_20201_2_0.zip", link)
    return cold, warm


def inference_alone(module: str, device: str, batch: int, threads: int | None, seconds: float) -> float:
    """Images per second of inference alone (forward passes and outputs), random images."""
    import numpy as np

    from mimir.batch.stages import InferenceStage

    stage = InferenceStage([module], device=device, batch_size=batch, level=0.95, threads=threads)
    images = np.random.default_rng(0).integers(0, 256, size=(batch, 3, 256, 256), dtype=np.uint8)
    items = [(f"s{i}", f"s{i}.npy", images[i]) for i in range(batch)]
    stage.predict(items)  # warm-up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        stage.predict(items)
        n += batch
    return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--subjects", type=int, default=16, help="distinct subjects of a cold run")
    ap.add_argument("--warm-copies", type=int, default=4, help="names per subject in a warm run")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--width", type=int, default=64, help="ResNet50 width of the module (64 = MIMIR's)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads of the inference process (default: torch's)")
    ap.add_argument("--data", type=Path, default=Path(".scratch/bench-batch"))
    ap.add_argument("--quick", action="store_true", help="small subjects (a smoke test, not a measurement)")
    ap.add_argument("--skip-warm", action="store_true")
    ap.add_argument("--jobs", type=int, default=1, help="processes generating the synthetic subjects")
    ap.add_argument("--repeat", type=int, default=2, help="rounds (interleaved); the best round is shown")
    ap.add_argument("--skip-raw", action="store_true", help="do not time preprocessing alone")
    ap.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)

    import torch

    from mimir.batch.runner import run_batch
    from mimir.models.modules import TargetSpec, write_module
    from mimir.models.resnet import mean_variance_resnet50

    tmp = Path(tempfile.mkdtemp(prefix="mimir-bench-batch-"))
    os.environ["MIMIR_HOME"] = str(tmp / "home")
    cold_dir, warm_dir = make_data(args.data, args.subjects, args.quick, args.warm_copies, args.jobs)
    torch.manual_seed(0)
    targets = [TargetSpec(name=n, unit="u", mean=0.0, sd=1.0) for n in ("a", "b", "c")]
    module = str(tmp / "module")
    members = [mean_variance_resnet50(3, args.width).state_dict()]
    members[0]["fc.weight"].zero_()  # untrained features are huge: a zero head keeps every output finite
    members[0]["fc.bias"].zero_()      # (non-finite predictions fail their subject), at the same cost
    write_module(module, name="bench", version="1", targets=targets, state_dicts=members)

    rows: list[dict] = []
    for rnd in range(args.repeat):
        for w in args.workers:
            cache = tmp / f"cache-r{rnd}-w{w}"
            os.environ["MIMIR_CACHE"] = str(cache)
            if not args.skip_raw:
                rows.append(raw_pool(cold_dir, w) | {"round": rnd})
                _say(rows[-1])
            for mode, data in (("cold", cold_dir), ("warm", warm_dir)):
                if mode == "warm" and args.skip_warm:
                    continue
                mon = TimingMonitor()
                out = tmp / f"out-r{rnd}-w{w}-{mode}"
                cpu0, t0 = _children_cpu(), time.monotonic()
                res = run_batch(data, out, monitor=mon, modules=[module], device=args.device, workers=w,
                                batch_size=args.batch_size, threads=args.threads)
                wall = time.monotonic() - t0
                run = json.loads((out / "run.json").read_text())
                rows.append({
                    "round": rnd, "workers": w, "mode": mode, "subjects": res.processed,
                    "steady_subjects_per_s": mon.steady_rate(), "end_to_end_subjects_per_s": res.throughput,
                    "wall_s": wall, "cores_used": (_children_cpu() - cpu0) / wall,
                    "inference_wait_share": run["inference_wait_share"], "device": ", ".join(res.devices),
                })
                _say(rows[-1])

    limit = inference_alone(module, args.device, args.batch_size, args.threads, seconds=5.0)
    device = next((r["device"] for r in rows if r.get("device")), args.device)
    print(f"mimir batch, local engine: {'small' if args.quick else 'full-size'} synthetic subjects, "
          f"ResNet50 width {args.width}, batch {args.batch_size}, inference on {device}; "
          f"{os.cpu_count()} CPUs; load average at the end {os.getloadavg()[0]:.1f}; best of {args.repeat} round(s)")
    print()
    print(f"| workers | run | subjects/s | vs {args.workers[0]} worker | CPU cores used | inference waits |")
    print("|---:|---|---:|---:|---:|---:|")
    best: dict[tuple[int, str], dict] = {}
    for r in rows:
        k = (r["workers"], r["mode"])
        if k not in best or r["steady_subjects_per_s"] > best[k]["steady_subjects_per_s"]:
            best[k] = r
    for (w, mode), r in sorted(best.items(), key=lambda kv: (["raw", "cold", "warm"].index(kv[0][1]), kv[0][0])):
        base = best.get((args.workers[0], mode), r)["steady_subjects_per_s"]
        wait = r.get("inference_wait_share")
        print(f"| {w} | {_MODES[mode]} | {r['steady_subjects_per_s']:.3f} | {r['steady_subjects_per_s'] / base:.2f}x "
              f"| {r['cores_used']:.2f} | {'' if wait is None else f'{wait:.0%}'} |")
    print()
    print(f"inference alone (same batch size and threads): {limit:.2f} images/s")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "inference_alone_images_per_s": limit}, indent=2) + "\n")
    return 0


_MODES = {
    "raw": "preprocessing alone (a plain process pool, no engine)",
    "cold": "mimir batch, cold cache",
    "warm": "mimir batch, warm cache",
}


def _say(row: dict) -> None:
    wait = row.get("inference_wait_share")
    print(f"  round {row['round']} workers={row['workers']} {row['mode']}: "
          f"{row['steady_subjects_per_s']:.3f} subjects/s, "
          f"{row['cores_used']:.2f} cores" + ("" if wait is None else f", inference waits {wait:.0%}"), file=sys.stderr)


def _children_cpu() -> float:
    """CPU seconds (user + system) of the finished child processes so far."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _preprocess_no_cache(path: str) -> float:
    """Preprocess without the cache; return the CPU seconds it took."""
    from mimir.preprocessing.pipeline import preprocess

    t0 = time.process_time()
    preprocess(path, cache=False)
    return time.process_time() - t0


def _warm_up(_: int) -> None:
    import mimir.preprocessing.pipeline  # noqa: F401


def raw_pool(folder: Path, workers: int) -> dict:
    """Preprocessing alone in a plain spawn process pool: the upper bound for ``workers`` workers."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    paths = sorted(str(p) for p in folder.glob("*_20201_*.zip"))
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        list(pool.map(_warm_up, range(workers)))
        t0 = time.monotonic()
        cpu = sum(pool.map(_preprocess_no_cache, paths))
        wall = time.monotonic() - t0
    return {"workers": workers, "mode": "raw", "subjects": len(paths), "steady_subjects_per_s": len(paths) / wall,
            "wall_s": wall, "cores_used": cpu / wall, "cpu_s_per_subject": cpu / len(paths)}


if __name__ == "__main__":
    raise SystemExit(main())
