"""The GPU path end to end: inference images/s by precision, members and batch, and `mimir batch --gpu N`.

Prepared to run once, unattended, on a fresh GPU machine (one GPU, ~16
cores, no network) in under 8 minutes (``benchmarks/gpu_check.sh`` runs it
with the other GPU checks); prints each part's Markdown table as soon as the
part is done and, with ``--json``, rewrites the JSON file after every figure,
so a later failure (or a time limit) loses nothing measured before it.

Part 1, inference alone (random uint8 images already in host memory):
ResNet50 of width 64 (MIMIR's network, ``mimir.models.resnet``) ensembles of
1 and 5 members at batch 32/128/256, in

- ``fp32 eager``: the plain ``net(x)`` forward of a float32 NCHW tensor
  already on the device (the original MIMIR's way; the reference);
- ``mimir fp32`` (the default) and ``mimir bf16+cl`` (the opt-in):
  :class:`mimir.inference.predictor.Predictor` (uint8 upload, forward of
  every member, outputs back in float64), in float32, and in bfloat16 autocast
  with channels_last;
- ``fp32 compiled``: the same network under ``torch.compile`` (1 member, the
  largest batch; its compile time is printed; ``--no-compile`` skips it). A
  compiler failure (Triton needs gcc and the Python headers) is recorded in
  its row and the JSON, and the run goes on.

Every fp32 figure is exact fp32: TF32 is off for convolutions and matrix
products (:func:`mimir.utils.devices.exact_fp32`), as in mimir itself. The
peak GPU memory of a setting is measured with only that setting's networks
and inputs on the GPU.

Part 2, ``mimir batch`` (local engine, ``gpus=[N]`` as ``--gpu N`` for
``--device cuda:N``) on full-size synthetic subjects, generated before Part 1
(in ``spawn`` processes, before CUDA is initialised): subjects/s at 1, 8 and
15 preprocessing workers (cold image cache), timed from the first result to
the last (start-up, torch import and hashing the weights excluded; the time
to the first result is reported beside it), the share of that time the GPU
was busy (``nvidia-smi`` samples of the same GPU; the inference stage's
computing share beside it), and which stage waited (inference waiting for
images = the CPU side limits; workers blocked = the GPU side limits).

The compiled preprocessing extension (``mimir/preprocessing/_kernels*.so``)
is not part of a copied work tree (git ignores it): the benchmark builds it
in place first (``python setup.py build_ext --inplace``; needs gcc and the
Python headers) and says in its header line whether preprocessing ran
compiled or in NumPy.

Dependencies on a machine without network: torch (with CUDA), numpy,
pydicom, safetensors and mimir's other dependencies must be installed or
carried as wheels: ``pip download --dest .whl torch ...`` on a machine with
network (``.whl/`` is git-ignored), carry the folder, then
``pip install --no-index --find-links .whl -e .`` there
(``benchmarks/gpu_check.sh`` does this when ``import torch`` fails).

    python benchmarks/gpu.py                              # the full run (CUDA)
    python benchmarks/gpu.py --device cuda:1 --subjects 64 --no-compile   # another GPU, shorter
    python benchmarks/gpu.py --device cpu --quick         # seconds: a smoke test, not a measurement
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGETS = 10


# ----------------------------------------------------------------------------- results


class Results:
    """Every figure so far; the JSON file (if any) is rewritten after each one."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.data: dict[str, Any] = {}

    def save(self) -> None:
        if self.path is not None:
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
            tmp.replace(self.path)


# ----------------------------------------------------------------------------- set-up


def ensure_kernels() -> str:
    """``compiled`` or ``numpy``: build the C extension in place when a copied tree lacks it."""
    from mimir.preprocessing import kernels

    if kernels.enabled():
        return "compiled"
    if os.environ.get("MIMIR_KERNELS", "1").strip().lower() in ("0", "off", "false", "no"):
        return "numpy"
    proc = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace", "-q"], cwd=ROOT,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"  could not build the C extension (preprocessing runs in NumPy): {proc.stderr.strip()[-300:]}",
              file=sys.stderr)
        return "numpy"
    probe = subprocess.run([sys.executable, "-c", "from mimir.preprocessing import kernels; "
                            "print(kernels.enabled())"], cwd=ROOT, capture_output=True, text=True)
    return "compiled" if probe.stdout.strip() == "True" else "numpy"


def gpu_index(device: str) -> int | None:
    """The GPU index of ``cuda`` / ``cuda:N`` (None for other devices)."""
    if not device.startswith("cuda"):
        return None
    return int(device.split(":", 1)[1]) if ":" in device else 0


def physical_gpu(index: int) -> str:
    """The ``nvidia-smi --id`` of torch's GPU ``index`` (through CUDA_VISIBLE_DEVICES, if set)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        listed = [v.strip() for v in visible.split(",") if v.strip()]
        if index < len(listed):
            return listed[index]
    return str(index)


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


def _free(device) -> None:  # type: ignore[no-untyped-def]
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _peak_reset(device) -> None:  # type: ignore[no-untyped-def]
    """Free what is unused, then count the peak from what is allocated now (the setting's own weights)."""
    import torch

    _free(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mib(device) -> float | None:  # type: ignore[no-untyped-def]
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def inference_rows(args: argparse.Namespace, tmp: Path, results: Results,
                   compile_fn: Callable[..., Any] | None = None) -> list[dict]:
    """Part 1; ``compile_fn`` replaces ``torch.compile`` (tests inject a failure through it)."""
    import numpy as np
    import torch

    from mimir.inference.predictor import Predictor
    from mimir.models.modules import TargetSpec, write_module
    from mimir.models.resnet import mean_variance_resnet50
    from mimir.utils.devices import exact_fp32

    exact_fp32()  # the eager reference too: no TF32 in any fp32 figure
    device = torch.device(args.device)
    torch.manual_seed(0)
    targets = [TargetSpec(name=f"t{i}", unit="u", mean=0.0, sd=1.0) for i in range(TARGETS)]
    states = [mean_variance_resnet50(TARGETS, args.width).state_dict() for _ in range(max(args.members))]
    rng = np.random.default_rng(0)
    rows: list[dict] = results.data.setdefault("inference", [])

    def add(members: int, batch: int, mode: str, rate: float | None, extra: dict | None = None) -> None:
        row = {"members": members, "batch": batch, "mode": mode, "images_per_s": rate,
               "peak_gpu_mib": _peak_mib(device) if rate is not None else None} | (extra or {})
        rows.append(row)
        results.save()
        mem = "" if row["peak_gpu_mib"] is None else f", peak {row['peak_gpu_mib']:.0f} MiB"
        text = f"{rate:.1f} images/s{mem}" if rate is not None else f"FAILED: {row.get('error')}"
        print(f"  members={members} batch={batch} {mode}: {text}", file=sys.stderr, flush=True)

    for k in args.members:
        folder = tmp / f"ens{k}"
        write_module(folder, name=f"ens{k}", version="bench", targets=targets, state_dicts=states[:k])
        images = {b: rng.integers(0, 256, size=(b, 3, 256, 256), dtype=np.uint8) for b in args.batch_sizes}
        nets = []
        for sd in states[:k]:
            net = mean_variance_resnet50(TARGETS, args.width)
            net.load_state_dict(sd)
            nets.append(net.to(device).eval())
        for b in args.batch_sizes:
            _peak_reset(device)
            x = torch.from_numpy(images[b]).to(device).float()

            def eager() -> None:
                with torch.inference_mode():
                    for net in nets:
                        net(x)

            add(k, b, "fp32 eager", _rate(eager, b, device, args.min_time))
            x = None  # off the GPU before the next setting's peak
        nets = []  # off the GPU before mimir's rows: their peaks count only mimir's own networks and inputs
        _free(device)
        for precision in ("fp32", "bf16"):
            if precision == "bf16" and device.type == "cpu" and not args.quick:
                continue  # bf16 autocast on a CPU is not what a GPU user would opt into
            predictor = Predictor([str(folder)], device=args.device, precision=precision, verify=False)
            mode = "mimir fp32" if precision == "fp32" else "mimir bf16+cl"
            for b in args.batch_sizes:
                _peak_reset(device)
                add(k, b, mode, _rate(lambda: predictor.predict_arrays(images[b]), b, device, args.min_time))
            predictor = None
            _free(device)

    if args.compile:
        compile_rows(args, states[0], rng, add, compile_fn or torch.compile)
    return rows


def compile_rows(args: argparse.Namespace, state: dict, rng: Any, add: Callable[..., None],
                 compile_fn: Callable[..., Any]) -> None:
    """``fp32 compiled`` rows; a compiler error is recorded in the row, never raised."""
    import torch

    from mimir.models.resnet import mean_variance_resnet50

    device = torch.device(args.device)
    net = mean_variance_resnet50(TARGETS, args.width)
    net.load_state_dict(state)
    net = net.to(device).eval()
    for b in args.compile_batch_sizes or args.batch_sizes[-1:]:
        _peak_reset(device)
        x = torch.from_numpy(rng.integers(0, 256, size=(b, 3, 256, 256), dtype="uint8")).to(device).float()
        t0 = time.perf_counter()
        try:
            compiled = compile_fn(net)

            def run() -> None:
                with torch.inference_mode():
                    compiled(x)

            run()
            _sync(device)
            compile_s = time.perf_counter() - t0
            add(1, b, "fp32 compiled", _rate(run, b, device, args.min_time), {"compile_s": compile_s})
        except Exception as exc:  # noqa: BLE001 - Triton/Inductor failures: recorded, the run goes on
            message = " ".join(f"{type(exc).__name__}: {exc}".split())[:500]
            add(1, b, "fp32 compiled", None, {"error": message, "compile_s": time.perf_counter() - t0})
            return  # every further batch size would fail the same way
        finally:
            x = None
            _free(device)


# ----------------------------------------------------------------------------- part 2


def make_subjects(folder: Path, n: int, small: bool, jobs: int) -> float:
    """Generate ``n`` subjects (seeds 500..) in ``jobs`` spawn processes; return the seconds it took.

    ``spawn``, not ``fork``: a forked child of a process that has initialised CUDA cannot use it (and
    may hang); this runs before Part 1 anyway. A few subjects are made in this process.
    """
    from functools import partial

    from mimir.synth import generate_subject

    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    missing = [500 + i for i in range(n) if not (folder / f"{1000500 + i}_20201_2_0.zip").exists()]
    make = partial(generate_subject, small=small)  # a partial of a library function: picklable under spawn
    if len(missing) <= 2 or jobs <= 1:
        for seed in missing:
            make(folder, seed)
    elif missing:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
            list(pool.map(make, [folder] * len(missing), missing))
    return time.perf_counter() - t0


class GpuSampler:
    """GPU utilisation (%) from ``nvidia-smi`` samples every 200 ms, with their times; nothing where there is none."""

    def __init__(self, gpu: str) -> None:
        self.samples: list[tuple[float, float]] = []
        self._proc = None
        exe = shutil.which("nvidia-smi")
        if exe:
            self._proc = subprocess.Popen(
                [exe, f"--id={gpu}", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "200"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            )
            self._thread = threading.Thread(target=self._read, daemon=True)
            self._thread.start()

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            try:
                self.samples.append((time.perf_counter(), float(line.strip())))
            except ValueError:
                pass

    def stop(self, start: float | None, end: float | None) -> float | None:
        """Mean busy share (0..1) of the samples taken between ``start`` and ``end`` (perf_counter times)."""
        if self._proc is None:
            return None
        self._proc.terminate()
        self._proc.wait()
        if start is None or end is None:
            return None
        inside = [u for t, u in self.samples if start <= t <= end]
        return sum(inside) / len(inside) / 100 if inside else None


def _timing_monitor() -> Any:
    """A silent batch monitor that remembers when the first and the last subject finished."""
    from mimir.batch.progress import Monitor

    class Timing(Monitor):
        first: float | None = None
        last: float | None = None
        first_count = 0  # subjects that came with the first result (one batch arrives at once)

        def advance(self, ok: bool, failure: str | None = None) -> None:
            now = time.perf_counter()
            if self.first is None:
                self.first = now
            if now - self.first < 0.05:
                self.first_count += 1
            self.last = now
            super().advance(ok, failure)

    return Timing()


def batch_rows(args: argparse.Namespace, tmp: Path, results: Results) -> list[dict]:
    import torch

    from mimir.batch.runner import run_batch
    from mimir.models.modules import TargetSpec, write_module
    from mimir.models.resnet import mean_variance_resnet50

    torch.manual_seed(0)
    targets = [TargetSpec(name=f"t{i}", unit="u", mean=0.0, sd=1.0) for i in range(TARGETS)]
    module = tmp / "batch-module"
    states = [mean_variance_resnet50(TARGETS, args.width).state_dict() for _ in range(args.batch_members)]
    for state in states:  # untrained features are huge: a zero head keeps every output finite (same cost)
        state["fc.weight"].zero_()
        state["fc.bias"].zero_()
    write_module(module, name="bench", version="1", targets=targets, state_dicts=states)
    index = gpu_index(args.device)
    zips = sorted(args.subject_dir.glob("*_20201_2_0.zip"))
    rows: list[dict] = results.data.setdefault("batch", [])
    for w in args.workers:
        n = min(len(zips), max(args.min_subjects, args.per_worker * w))
        folder = tmp / f"in-w{w}"
        folder.mkdir()
        for z in zips[:n]:
            os.symlink(z, folder / z.name)
        os.environ["MIMIR_CACHE"] = str(tmp / f"cache-w{w}")  # a cold image cache
        out = tmp / f"out-w{w}"
        sampler = GpuSampler(physical_gpu(index)) if index is not None else None
        monitor = _timing_monitor()
        t0 = time.perf_counter()
        options = {"gpus": [index]} if index is not None else {"device": args.device}
        res = run_batch(folder, out, modules=[str(module)], workers=w, batch_size=args.batch_size, monitor=monitor,
                        **options)
        wall = time.perf_counter() - t0
        first, last = monitor.first, monitor.last
        gpu_busy = sampler.stop(first, last) if sampler else None
        run = json.loads((out / "run.json").read_text())
        stages = run.get("stage_seconds", {})
        steady = (last - first) if first is not None and last is not None else 0.0
        engine_wall = run.get("engine_wall_s") or wall
        row = {
            "workers": w, "subjects": res.processed, "failed": res.failed, "wall_s": wall,
            "first_result_s": (first - t0) if first is not None else None,
            "steady_s": steady,
            # from the first result to the last: start-up, imports and hashing the weights are not in it
            # (None when every result came at once: too few subjects for a rate)
            "subjects_per_s": (res.processed - monitor.first_count) / steady if steady > 0.05 else None,
            "subjects_per_s_whole_run": res.processed / engine_wall if engine_wall else None,
            "gpu_busy_share": gpu_busy,
            "inference_computing_share": stages.get("inference_computing", 0.0) / engine_wall if engine_wall else None,
            "inference_wait_share": run.get("inference_wait_share"),
            "workers_blocked_share": (stages.get("preprocessing_blocked", 0.0)
                                      / max(stages.get("preprocessing", 0.0) + stages.get("preprocessing_blocked", 0.0), 1e-9)),
            "devices": run.get("devices"),
            "precision": run.get("precision"),
        }
        rows.append(row)
        results.save()
        rate = "n/a" if row["subjects_per_s"] is None else f"{row['subjects_per_s']:.2f}"
        print(f"  workers={w}: {rate} subjects/s after the first result ({res.processed} subjects, "
              f"{res.failed} failed)", file=sys.stderr, flush=True)
    return rows


# ----------------------------------------------------------------------------- tables


def _waits(r: dict) -> str:
    wait, blocked = r["inference_wait_share"], r["workers_blocked_share"]
    if wait is None:
        return "n/a"
    if max(wait, blocked) < 0.05:
        return "neither (balanced)"
    return "inference waits for images (CPU-bound)" if wait >= blocked else "workers wait for inference (GPU-bound)"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0%}"


def _num(x: float | None, fmt: str = ".2f") -> str:
    return "n/a" if x is None else format(x, fmt)


def print_inference_table(rows: list[dict], header: str) -> None:
    base = {(r["members"], r["batch"]): r["images_per_s"] for r in rows if r["mode"] == "fp32 eager"}
    print(f"\n### Inference alone: {header}\n")
    print("| members | batch | mode | images/s | vs fp32 eager | peak GPU MiB |")
    print("|---:|---:|---|---:|---:|---:|")
    for r in rows:
        ref = base.get((r["members"], r["batch"]))
        mem = "n/a" if r["peak_gpu_mib"] is None else f"{r['peak_gpu_mib']:.0f}"
        if r["images_per_s"] is None:
            print(f"| {r['members']} | {r['batch']} | {r['mode']} | failed: {r.get('error', '')[:160]} | | |")
            continue
        comp = f" (compile {r['compile_s']:.0f} s)" if "compile_s" in r else ""
        vs = f"{r['images_per_s'] / ref:.2f}x" if ref else "n/a"
        print(f"| {r['members']} | {r['batch']} | {r['mode']}{comp} | {r['images_per_s']:.1f} | {vs} | {mem} |")
    sys.stdout.flush()


def print_batch_table(rows: list[dict], title: str) -> None:
    print(f"\n### {title}\n")
    print("| workers | subjects | subjects/s (from 1st result) | 1st result after | GPU busy | inference computing | "
          "inference waits | workers blocked | which stage waits |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['workers']} | {r['subjects']} | {_num(r['subjects_per_s'])} | {_num(r['first_result_s'], '.1f')} s | "
              f"{_pct(r['gpu_busy_share'])} | {_pct(r['inference_computing_share'])} | "
              f"{_pct(r['inference_wait_share'])} | {_pct(r['workers_blocked_share'])} | {_waits(r)} |")
    sys.stdout.flush()


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None, *, compile_fn: Callable[..., Any] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N (default cuda) or cpu")
    ap.add_argument("--quick", action="store_true",
                    help="seconds: width 16, batch 2, 1 member, 2 small subjects, 1 worker (a smoke test, not a measurement)")
    ap.add_argument("--width", type=int, default=None, help="ResNet50 width (default 64; 16 with --quick)")
    ap.add_argument("--members", type=int, nargs="+", default=None, help="ensemble sizes (default 1 5)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default 32 128 256")
    ap.add_argument("--min-time", type=float, default=None, help="seconds per inference setting (default 2)")
    ap.add_argument("--compile", dest="compile", action="store_true", default=None,
                    help="time torch.compile (the default on CUDA)")
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
    ap.add_argument("--json", type=Path, help="also write every figure to this JSON file (rewritten after each)")
    args = ap.parse_args(argv)

    q = args.quick
    args.width = args.width or (16 if q else 64)
    args.members = args.members or ([1] if q else [1, 5])
    args.batch_sizes = args.batch_sizes or ([2] if q else [32, 128, 256])
    args.min_time = args.min_time if args.min_time is not None else (0.05 if q else 2.0)
    args.subjects = args.subjects or (2 if q else 200)
    args.workers = args.workers or ([1] if q else [1, 8, 15])
    if args.compile is None:
        args.compile = not (q and args.device == "cpu")
    if q:
        args.min_subjects, args.per_worker, args.batch_size, args.batch_members = 2, 2, 2, 1

    started = time.perf_counter()
    results = Results(args.json)
    preprocessing = ensure_kernels()
    # the subjects first, in spawn processes, before this process initialises CUDA
    args.subject_dir = args.data / ("small" if q else "full")
    if not args.skip_batch:
        gen_s = make_subjects(args.subject_dir, args.subjects, q, args.jobs)
        results.data["generate_s"] = gen_s
        print(f"  {args.subjects} subjects ready in {gen_s:.1f} s ({args.jobs} processes)", file=sys.stderr, flush=True)

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here: run with --device cpu --quick for a smoke test", file=sys.stderr)
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="mimir-gpu-bench-"))
    os.environ["MIMIR_HOME"] = str(tmp / "home")
    device_name = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else "CPU"
    header = (f"{time.strftime('%Y-%m-%d')}, {device_name} ({args.device}), {os.cpu_count()} CPUs, "
              f"torch {torch.__version__}, ResNet50 width {args.width}, {TARGETS} targets, exact fp32"
              f"{' (TF32 off)' if args.device.startswith('cuda') else ''}, "
              f"preprocessing {preprocessing}" + (" (QUICK: not a measurement)" if q else ""))
    print(header, file=sys.stderr)
    results.data["setup"] = header
    results.save()
    try:
        if not args.skip_inference:
            print_inference_table(inference_rows(args, tmp, results, compile_fn), header)
        if not args.skip_batch:
            rows = batch_rows(args, tmp, results)
            title = (f"mimir batch --gpu {gpu_index(args.device)}, full-size synthetic subjects, cold cache, "
                     f"batch {args.batch_size}, {args.batch_members}-member module"
                     if not q else "mimir batch (quick)")
            print_batch_table(rows, title)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        results.data["total_s"] = time.perf_counter() - started
        results.save()
    print(f"\ntotal {results.data['total_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
