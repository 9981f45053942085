"""Inference throughput: images per second for ResNet50 mean-variance ensembles.

Builds modules with random weights (ResNet50, 10 targets) in a temporary
registry and times :meth:`mimir.inference.predictor.Predictor.predict_arrays` (upload,
forward passes of every member, output conversion and mixture) on random
uint8 images. Preprocessing is not included.

    python benchmarks/inference.py                     # CPU (or auto), 1 and 3 members, batch 1/8/32
    python benchmarks/inference.py --device cuda --batch-sizes 1 32 128
    python benchmarks/inference.py --precision fp32 --members 1 --min-time 5

torch threads are left at their default unless --threads is given (on a shared,
busy machine one thread per process can be much faster than spinning threads).
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--members", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--width", type=int, default=64, help="ResNet50 width (64 = standard)")
    ap.add_argument("--targets", type=int, default=10)
    ap.add_argument("--min-time", type=float, default=2.0, help="seconds to time each setting (at least one batch)")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's default)")
    ap.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from mimir.inference.predictor import Predictor
    from mimir.models.modules import TargetSpec, write_module
    from mimir.models.resnet import mean_variance_resnet50

    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="mimir-bench-"))
    targets = [TargetSpec(name=f"t{i}", unit="u", mean=0.0, sd=1.0) for i in range(args.targets)]
    torch.manual_seed(0)
    member_sds = [mean_variance_resnet50(args.targets, args.width).state_dict() for _ in range(max(args.members))]
    rows = []
    device_text = ""
    for k in args.members:
        folder = tmp / f"ens{k}"
        write_module(folder, name=f"ens{k}", version="bench", targets=targets, state_dicts=member_sds[:k])
        p = Predictor([str(folder)], device=args.device, precision=args.precision, verify=False)
        device_text = p.describe_device()
        rng = np.random.default_rng(0)
        for b in args.batch_sizes:
            images = rng.integers(0, 256, size=(b, 3, 256, 256), dtype=np.uint8)
            p.predict_arrays(images)  # warm-up (cudnn autotune, allocator, oneDNN primitives)
            if p.device.type == "cuda":
                torch.cuda.synchronize()
            n, t0 = 0, time.perf_counter()
            while True:
                p.predict_arrays(images)  # returns host arrays: synchronised
                n += 1
                elapsed = time.perf_counter() - t0
                if elapsed >= args.min_time:
                    break
            ips = n * b / elapsed
            rows.append({"members": k, "batch": b, "images_per_s": ips, "forwards_per_s": ips * k, "batches": n})
            print(f"  members={k} batch={b:4d}: {ips:8.2f} images/s ({n} batches in {elapsed:.1f} s)", file=sys.stderr)
        del p

    header = f"ResNet50 width {args.width}, {args.targets} targets, on {device_text}; torch {torch.__version__}"
    print(header)
    print(f"{'members':>7}  {'batch':>5}  {'images/s':>9}  {'member forwards/s':>17}")
    for r in rows:
        print(f"{r['members']:>7}  {r['batch']:>5}  {r['images_per_s']:>9.2f}  {r['forwards_per_s']:>17.2f}")
    if args.json:
        args.json.write_text(json.dumps({"setup": header, "cpu_count": os.cpu_count(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
