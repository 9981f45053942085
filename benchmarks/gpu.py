"""The GPU path end to end: inference images/s by precision, members and batch, and `mimir batch --gpu 0`.

Prepared to run once, unattended, on a fresh GPU machine (one GPU, ~16
cores) in under 8 minutes; prints Markdown tables ready for the README and,
with ``--json``, writes every figure to a file.

Part 1, inference alone (random uint8 images already in host memory):
ResNet50 of width 64 (MIMIR's network, ``mimir.models.resnet``) ensembles of
1 and 5 members at batch 32/128/256, in

- ``fp32 eager``: the plain ``net(x)`` forward of a float32 NCHW tensor
  already on the device (the original MIMIR's way; the reference);
- ``mimir fp32`` and ``mimir bf16+cl``: :class:`mimir.inference.predictor.Predictor`
  (uint8 upload, forward of every member, outputs back in float64), in
  float32, and in bfloat16 autocast with channels_last (mimir's default on CUDA);
- ``bf16+cl compiled``: the same network under ``torch.compile`` (1 member,
  the largest batch; its compile time is printed; ``--no-compile`` skips it);

with the peak GPU memory of each setting.

Part 2, ``mimir batch`` (local engine, ``gpus=[0]`` as ``--gpu 0``) on
full-size synthetic subjects, generated first on all cores: subjects/s at
1, 8 and 15 preprocessing workers (cold image cache), the share of time the
GPU was busy (``nvidia-smi`` samples; the inference stage's computing share
beside it), and which stage waited (inference waiting for images = the CPU
side limits; workers blocked = the GPU side limits).

    python benchmarks/gpu.py                              # the full run (CUDA)
    python benchmarks/gpu.py --subjects 64 --no-compile   # shorter
    python benchmarks/gpu.py --device cpu --quick         # seconds: a smoke test, not a measurement
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGETS = 10


# ----------------------------------------------------------------------------- part 1


def _sync(device) -> None:  # type: ignore[no-untyped-def]
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(fn, batch: int, device, min_time: float) -> float:  # type: ignore[no-untyped-def]
    """Images/s of ``fn()`` (one batch per call), after one warm-up call."""
    fn()
    _sync(device)
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        _sync(device)
        elapsed = time.perf_counter() - t0
        if elapsed >= min_time:
            return n * batch / elapsed


def _peak_reset(device) -> None:  # type: ignore[no-untyped-def]
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mib(device) -> float | None:  # type: ignore[no-untyped-def]
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def inference_rows(args: argparse.Namespace, tmp: Path) -> list[dict]:
    import numpy as np
    import torch

    from mimir.inference.predictor import Predictor
    from mimir.models.modules import TargetSpec, write_module
    from mimir.models.resnet import mean_variance_resnet50

    device = torch.device(args.device)
    torch.manual_seed(0)
    targets = [TargetSpec(name=f"t{i}", unit="u", mean=0.0, sd=1.0) for i in range(TARGETS)]
    states = [mean_variance_resnet50(TARGETS, args.width).state_dict() for _ in range(max(args.members))]
    rng = np.random.default_rng(0)
    rows: list[dict] = []

    def add(members: int, batch: int, mode: str, rate: float, extra: dict | None = None) -> None:
        row = {"members": members, "batch": batch, "mode": mode, "images_per_s": rate,
               "peak_gpu_mib": _peak_mib(device)} | (extra or {})
        rows.append(row)
        mem = "" if row["peak_gpu_mib"] is None else f", peak {row['peak_gpu_mib']:.0f} MiB"
        print(f"  members={members} batch={batch} {mode}: {rate:.1f} images/s{mem}", file=sys.stderr, flush=True)

    for k in args.members:
        folder = tmp / f"ens{k}"
        write_module(folder, name=f"ens{k}", version="bench", targets=targets, state_dicts=states[:k])
        nets = []
        for sd in states[:k]:
            net = mean_variance_resnet50(TARGETS, args.width)
            net.load_state_dict(sd)
            nets.append(net.to(device).eval())
        for b in args.batch_sizes:
            images = rng.integers(0, 256, size=(b, 3, 256, 256), dtype=np.uint8)
            x = torch.from_numpy(images).to(device).float()

            def eager() -> None:
                with torch.inference_mode():
                    for net in nets:
                        net(x)

            _peak_reset(device)
            add(k, b, "fp32 eager", _rate(eager, b, device, args.min_time))
            for precision in ("fp32", "bf16"):
                if precision == "bf16" and device.type == "cpu" and not args.quick:
                    continue  # bf16 autocast on CPU is not mimir's default there
                p = Predictor([str(folder)], device=args.device, precision=precision, verify=False)
                _peak_reset(device)
                mode = "mimir fp32" if precision == "fp32" else "mimir bf16+cl"
                add(k, b, mode, _rate(lambda: p.predict_arrays(images), b, device, args.min_time))
                del p
        del nets
        if device.type == "cuda":
            torch.cuda.empty_cache()

    if args.compile:
        net = mean_variance_resnet50(TARGETS, args.width)
        net.load_state_dict(states[0])
        net = net.to(device).eval()
        cl = device.type == "cuda"
        if cl:
            net = net.to(memory_format=torch.channels_last)
        compiled = torch.compile(net)
        for b in args.compile_batch_sizes or args.batch_sizes[-1:]:
            x = torch.from_numpy(rng.integers(0, 256, size=(b, 3, 256, 256), dtype=np.uint8)).to(device).float()
            if cl:
                x = x.contiguous(memory_format=torch.channels_last)

            def run() -> None:
                with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
                    compiled(x)

            _peak_reset(device)
            t0 = time.perf_counter()
            run()
            _sync(device)
            compile_s = time.perf_counter() - t0
            add(1, b, "bf16+cl compiled", _rate(run, b, device, args.min_time), {"compile_s": compile_s})
    return rows


# ----------------------------------------------------------------------------- part 2


def _generate(folder: str, seed: int, small: bool) -> None:
    from mimir.synth import generate_subject

    s = generate_subject(folder, seed=seed, small=small)
    s.truth_path.unlink(missing_ok=True)


def make_subjects(folder: Path, n: int, small: bool, jobs: int) -> float:
    """Generate ``n`` subjects (seeds 500..) with ``jobs`` processes; return the seconds it took."""
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    missing = [500 + i for i in range(n) if not (folder / f"{1000500 + i}_20201_2_0.zip").exists()]
    if missing:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            list(pool.map(_generate, [str(folder)] * len(missing), missing, [small] * len(missing)))
    return time.perf_counter() - t0


class GpuSampler:
    """Mean GPU utilisation (%) from ``nvidia-smi`` samples every 200 ms; None where there is none."""

    def __init__(self, index: int) -> None:
        self.samples: list[float] = []
        self._proc = None
        exe = shutil.which("nvidia-smi")
        if exe:
            self._proc = subprocess.Popen(
                [exe, f"--id={index}", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "200"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            )
            self._thread = threading.Thread(target=self._read, daemon=True)
            self._thread.start()

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            try:
                self.samples.append(float(line.strip()))
            except ValueError:
                pass

    def stop(self) -> float | None:
        if self._proc is None:
            return None
        self._proc.terminate()
        self._proc.wait()
        return sum(self.samples) / len(self.samples) / 100 if self.samples else None


def batch_rows(args: argparse.Namespace, tmp: Path) -> tuple[list[dict], float]:
    import torch

    from mimir.batch.runner import run_batch
    from mimir.models.modules import TargetSpec, write_module
    from mimir.models.resnet import mean_variance_resnet50

    data = args.data / ("small" if args.quick else "full")
    gen_s = make_subjects(data, args.subjects, args.quick, args.jobs)
    print(f"  {args.subjects} subjects ready in {gen_s:.1f} s ({args.jobs} processes)", file=sys.stderr, flush=True)
    torch.manual_seed(0)
    targets = [TargetSpec(name=f"t{i}", unit="u", mean=0.0, sd=1.0) for i in range(TARGETS)]
    module = tmp / "batch-module"
    states = [mean_variance_resnet50(TARGETS, args.width).state_dict() for _ in range(args.batch_members)]
    for state in states:  # untrained features are huge: a zero head keeps every output finite (same cost)
        state["fc.weight"].zero_()
        state["fc.bias"].zero_()
    write_module(module, name="bench", version="1", targets=targets, state_dicts=states)
    cuda = args.device.startswith("cuda")
    zips = sorted(data.glob("*_20201_2_0.zip"))
    rows = []
    for w in args.workers:
        n = min(len(zips), max(args.min_subjects, args.per_worker * w))
        folder = tmp / f"in-w{w}"
        folder.mkdir()
        for z in zips[:n]:
            os.symlink(z, folder / z.name)
        os.environ["MIMIR_CACHE"] = str(tmp / f"cache-w{w}")  # a cold image cache
        out = tmp / f"out-w{w}"
        sampler = GpuSampler(0) if cuda else None
        t0 = time.perf_counter()
        options = {"gpus": [0]} if cuda else {"device": args.device}
        res = run_batch(folder, out, modules=[str(module)], workers=w, batch_size=args.batch_size, **options)
        wall = time.perf_counter() - t0
        gpu_busy = sampler.stop() if sampler else None
        run = json.loads((out / "run.json").read_text())
        stages = run.get("stage_seconds", {})
        engine_wall = run.get("engine_wall_s") or wall
        row = {
            "workers": w, "subjects": res.processed, "failed": res.failed, "wall_s": wall,
            "subjects_per_s": res.processed / engine_wall if engine_wall else float("nan"),
            "gpu_busy_share": gpu_busy,
            "inference_computing_share": stages.get("inference_computing", 0.0) / engine_wall if engine_wall else None,
            "inference_wait_share": run.get("inference_wait_share"),
            "workers_blocked_share": (stages.get("preprocessing_blocked", 0.0)
                                      / max(stages.get("preprocessing", 0.0) + stages.get("preprocessing_blocked", 0.0), 1e-9)),
            "devices": run.get("devices"),
        }
        rows.append(row)
        print(f"  workers={w}: {row['subjects_per_s']:.2f} subjects/s ({res.processed} subjects, {res.failed} failed)",
              file=sys.stderr, flush=True)
    return rows, gen_s


def _waits(r: dict) -> str:
    wait, blocked = r["inference_wait_share"], r["workers_blocked_share"]
    if wait is None:
        return "n/a"
    if max(wait, blocked) < 0.05:
        return "neither (balanced)"
    return "inference waits for images (CPU-bound)" if wait >= blocked else "workers wait for inference (GPU-bound)"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0%}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--quick", action="store_true",
                    help="seconds: width 16, batch 2, 1 member, 2 small subjects, 1 worker (a smoke test, not a measurement)")
    ap.add_argument("--width", type=int, default=None, help="ResNet50 width (default 64; 16 with --quick)")
    ap.add_argument("--members", type=int, nargs="+", default=None, help="ensemble sizes (default 1 5)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default 32 128 256")
    ap.add_argument("--min-time", type=float, default=None, help="seconds per inference setting (default 2)")
    ap.add_argument("--no-compile", dest="compile", action="store_false", help="skip torch.compile")
    ap.add_argument("--compile-batch-sizes", type=int, nargs="+", default=None,
                    help="batch sizes timed under torch.compile (default: the largest; each one compiles anew)")
    ap.add_argument("--subjects", type=int, default=None, help="synthetic subjects for the batch part (default 200)")
    ap.add_argument("--workers", type=int, nargs="+", default=None, help="worker counts (default 1 8 15)")
    ap.add_argument("--per-worker", type=int, default=25,
                    help="subjects per worker in a run (capped by --subjects; 1 worker needs fewer for a rate)")
    ap.add_argument("--min-subjects", type=int, default=30, help="at least this many subjects per run")
    ap.add_argument("--batch-size", type=int, default=32, help="mimir batch --batch-size")
    ap.add_argument("--batch-members", type=int, default=5, help="members of the module used by mimir batch")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes generating subjects")
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "mimir-gpu-bench",
                    help="where the synthetic subjects are kept (reused)")
    ap.add_argument("--skip-batch", action="store_true", help="inference only")
    ap.add_argument("--skip-inference", action="store_true", help="mimir batch only")
    ap.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    args = ap.parse_args(argv)

    q = args.quick
    args.width = args.width or (16 if q else 64)
    args.members = args.members or ([1] if q else [1, 5])
    args.batch_sizes = args.batch_sizes or ([2] if q else [32, 128, 256])
    args.min_time = args.min_time if args.min_time is not None else (0.05 if q else 2.0)
    args.subjects = args.subjects or (2 if q else 200)
    args.workers = args.workers or ([1] if q else [1, 8, 15])
    if q:
        args.min_subjects, args.per_worker, args.batch_size, args.batch_members = 2, 2, 2, 1
        args.compile = False if args.device == "cpu" else args.compile

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here: run with --device cpu --quick for a smoke test", file=sys.stderr)
        return 1
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="mimir-gpu-bench-"))
    os.environ["MIMIR_HOME"] = str(tmp / "home")
    device_name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "CPU"
    header = (f"{time.strftime('%Y-%m-%d')}, {device_name}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
              f"ResNet50 width {args.width}, {TARGETS} targets" + (" (QUICK: not a measurement)" if q else ""))
    print(header, file=sys.stderr)
    result: dict = {"setup": header}
    try:
        if not args.skip_inference:
            rows = inference_rows(args, tmp)
            result["inference"] = rows
            base = {(r["members"], r["batch"]): r["images_per_s"] for r in rows if r["mode"] == "fp32 eager"}
            print(f"\n### Inference alone: {header}\n")
            print("| members | batch | mode | images/s | vs fp32 eager | peak GPU MiB |")
            print("|---:|---:|---|---:|---:|---:|")
            for r in rows:
                ref = base.get((r["members"], r["batch"]))
                mem = "n/a" if r["peak_gpu_mib"] is None else f"{r['peak_gpu_mib']:.0f}"
                comp = f" (compile {r['compile_s']:.0f} s)" if "compile_s" in r else ""
                print(f"| {r['members']} | {r['batch']} | {r['mode']}{comp} | {r['images_per_s']:.1f} | "
                      f"{r['images_per_s'] / ref:.2f}x | {mem} |" if ref else "")
        if not args.skip_batch:
            rows, gen_s = batch_rows(args, tmp)
            result["batch"], result["generate_s"] = rows, gen_s
            print(f"\n### mimir batch --gpu 0, full-size synthetic subjects, cold cache, batch {args.batch_size}, "
                  f"{args.batch_members}-member module\n" if not q else "\n### mimir batch (quick)\n")
            print("| workers | subjects | subjects/s | GPU busy | inference computing | inference waits | "
                  "workers blocked | which stage waits |")
            print("|---:|---:|---:|---:|---:|---:|---:|---|")
            for r in rows:
                print(f"| {r['workers']} | {r['subjects']} | {r['subjects_per_s']:.2f} | {_pct(r['gpu_busy_share'])} | "
                      f"{_pct(r['inference_computing_share'])} | {_pct(r['inference_wait_share'])} | "
                      f"{_pct(r['workers_blocked_share'])} | {_waits(r)} |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["total_s"] = time.perf_counter() - started
    print(f"\ntotal {result['total_s']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
