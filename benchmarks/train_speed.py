"""Training speed of the mean-variance ResNet50: iterations and images per second.

One iteration is exactly what ``mimir train`` does per step: draw a batch,
shift it (nearest-edge fill), forward, the mean-variance loss, backward and
an Adam step, on (B, 3, 256, 256) images. Also prints inference images per
second and the fp32 size of one member::

    python benchmarks/train_speed.py                       # widths 8 12 16 64, batch 16, CPU
    python benchmarks/train_speed.py --widths 8 --threads 1 2 --device cpu
    python benchmarks/train_speed.py --device cuda --widths 8 64 --batch-size 32
    python benchmarks/train_speed.py --widths 8 --threads 1 --processes 2 --iterations 30   # like --workers 2

With ``--processes P`` the measurement runs in P processes at once (as
``mimir train --workers P`` trains P networks at once); the it/s printed is
their sum.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def measure(width: int, batch: int, device: str, iterations: int, targets: int = 6) -> dict[str, float]:
    """Median seconds per training iteration and images/s of training and inference."""
    import torch

    from mimir.models.resnet import mean_variance_resnet50
    from mimir.training.data import random_shifts, shift_images
    from mimir.training.loss import mean_variance_loss

    dev = torch.device(device)
    torch.manual_seed(0)
    net = mean_variance_resnet50(targets, width).to(dev).train()
    params = sum(p.numel() for p in net.parameters())
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    images = torch.randint(0, 256, (64, 3, 256, 256), dtype=torch.uint8, device=dev)
    y = torch.randn(64, targets, device=dev)
    rng = np.random.default_rng(0)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    times = []
    for it in range(iterations + 2):  # two warm-up iterations
        idx = torch.from_numpy(rng.integers(0, 64, size=batch)).to(dev)
        sync()
        t = time.perf_counter()
        x = shift_images(images[idx], random_shifts(batch, 16, 0, 0, it)).to(torch.float32)
        loss = mean_variance_loss(net(x), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()
        times.append(time.perf_counter() - t)
    step = float(np.median(times[2:]))
    net.eval()
    with torch.inference_mode():
        x = images[:batch].to(torch.float32)
        net(x)
        sync()
        t = time.perf_counter()
        for _ in range(3):
            net(x)
        sync()
        infer = (time.perf_counter() - t) / 3
    return {
        "width": width,
        "params": params,
        "member_mb": params * 4 / 1e6,
        "it_per_s": 1.0 / step,
        "train_img_per_s": batch / step,
        "infer_img_per_s": batch / infer,
    }


def _measure_in_process(args: tuple[int, int, int, str, int]) -> dict[str, float]:
    threads, width, batch, device, iterations = args
    import torch

    if threads:
        torch.set_num_threads(threads)
    return measure(width, batch, device, iterations)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", type=int, nargs="+", default=[8, 12, 16, 64])
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, nargs="+", default=[0], help="CPU threads (0 = torch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--processes", type=int, default=1, help="measure in this many processes at once (sum printed)")
    a = ap.parse_args(argv)
    import torch

    print(f"device {a.device}, batch {a.batch_size}, torch {torch.__version__}")
    print(f"processes {a.processes}")
    print("threads | width | params | MB/member | it/s | train img/s | inference img/s")
    for threads in a.threads:
        if threads:
            torch.set_num_threads(threads)
        for w in a.widths:
            if a.processes > 1:
                import multiprocessing as mp

                with mp.get_context("spawn").Pool(a.processes) as pool:
                    rs = pool.map(_measure_in_process, [(threads, w, a.batch_size, a.device, a.iterations)] * a.processes)
                r = {**rs[0], **{k: sum(x[k] for x in rs) for k in ("it_per_s", "train_img_per_s", "infer_img_per_s")}}
            else:
                r = measure(w, a.batch_size, a.device, a.iterations)
            print(
                f"{threads or torch.get_num_threads():>7} | {w:>5} | {r['params']:>9,} | {r['member_mb']:>9.2f} | "
                f"{r['it_per_s']:>5.2f} | {r['train_img_per_s']:>11.1f} | {r['infer_img_per_s']:>15.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
