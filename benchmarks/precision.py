"""How far a device's numbers are from the CPU's: the default (exact fp32) and the bf16 opt-in.

The reference is ``--device cpu`` (fp32). Against it, on ``--device`` (default
``cuda``; ``cpu`` compares the CPU's bf16 autocast, the stand-in used where no
GPU is lent), this measures for the built-in ``phantom-demo`` module on
synthetic subjects:

- ``default``: the device's default settings (exact fp32; on CUDA with TF32
  off). The promise checked: every mean within 1e-3 of the predicted sd of
  the CPU's (``|mean - mean_cpu| / sd_cpu``) and every variance within 1e-3
  relative;
- ``bf16``: ``--precision bf16``, the opt-in, whose deviation is measured
  (and documented in docs/precision.md), not bounded;

with the OOD scores' relative change beside each. Prints one Markdown table;
``--json`` writes the figures; exits 1 when ``default`` breaks the promise.

    python benchmarks/precision.py                    # CUDA against the CPU (40 small subjects)
    python benchmarks/precision.py --device cpu       # the CPU's bf16 against its fp32
    python benchmarks/precision.py --subjects 4       # seconds
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: The promise for the default settings: means within this many predicted sds, variances within this relative.
TOLERANCE = 1e-3
MODULE = "phantom-demo"


def subject_images(folder: Path, n: int, *, seed0: int = 700_000, small: bool = True) -> np.ndarray:
    """``n`` synthetic subjects (seeds ``seed0``..) preprocessed on the CPU: (n, 3, 256, 256) uint8."""
    from mimir.preprocessing.pipeline import load_input
    from mimir.synth import generate_subject

    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for i in range(n):
        s = generate_subject(folder, seed=seed0 + i, small=small)
        images.append(load_input(s.zip_path, cache=False))
    return np.stack(images)


def run(images: np.ndarray, device: str, precision: str, batch_size: int = 16) -> dict[str, np.ndarray]:
    """Means and variances (B, T) in display units and OOD scores (B,) of ``phantom-demo`` on ``device``."""
    from mimir.inference.predictor import Predictor

    p = Predictor([MODULE], device=device, precision=precision, batch_size=batch_size)
    lm = p.loaded[0]
    means, variances, scores = [], [], []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        padded = np.zeros((batch_size, *chunk.shape[1:]), dtype=np.uint8)  # fixed shape, as mimir batch does
        padded[: len(chunk)] = chunk
        (raw, feats), = p._forward(padded)
        mean, var = p._combine(lm, raw)
        means.append(mean[: len(chunk)])
        variances.append(var[: len(chunk)])
        scores.append(lm.reference.scores(feats)[: len(chunk)])
    return {"mean": np.concatenate(means), "variance": np.concatenate(variances), "ood": np.concatenate(scores),
            "described": p.describe_device(), "targets": [t.name for t in lm.spec.targets]}  # type: ignore[dict-item]


def deviation(ref: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """How far ``other`` is from ``ref``: mean shifts in predicted sds, variance and OOD changes, relative."""
    sd = np.sqrt(ref["variance"])
    shift = np.abs(other["mean"] - ref["mean"]) / sd
    var_rel = np.abs(other["variance"] / ref["variance"] - 1)
    ood_rel = other["ood"] / ref["ood"] - 1
    return {
        "mean_shift_sd_max": float(shift.max()),
        "mean_shift_sd_mean": float(shift.mean()),
        "mean_shift_sd_max_by_target": dict(zip(ref["targets"], map(float, shift.max(axis=0)))),
        "variance_rel_max": float(var_rel.max()),
        "ood_rel_mean": float(ood_rel.mean()),
        "ood_rel_max": float(np.abs(ood_rel).max()),
        "within_tolerance": bool(shift.max() <= TOLERANCE and var_rel.max() <= TOLERANCE),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="the device compared with the CPU (default cuda)")
    ap.add_argument("--subjects", type=int, default=40, help="small synthetic subjects (default 40)")
    ap.add_argument("--full", action="store_true", help="full-size subjects (slower to make)")
    ap.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here: use --device cpu to measure the CPU's bf16", file=sys.stderr)
        return 1
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mimir-precision-") as tmp:
        images = subject_images(Path(tmp), args.subjects, small=not args.full)
    cpu = run(images, "cpu", "fp32")
    rows = {"default": run(images, args.device, "auto")}
    bf16_note = ""
    try:
        rows["bf16"] = run(images, args.device, "bf16")
    except Exception as exc:  # noqa: BLE001 - a GPU without native bf16: say so, keep the default's figures
        bf16_note = f"bf16 not measured: {exc}"
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"), "device": args.device, "subjects": args.subjects,
        "full_size": args.full, "module": MODULE, "tolerance": TOLERANCE, "torch": torch.__version__,
        "reference": cpu["described"],
    }
    print(f"\n### {MODULE} on {args.device} against --device cpu: {args.subjects} "
          f"{'full-size' if args.full else 'small'} synthetic subjects, {result['date']}, torch {torch.__version__}\n")
    print("| settings | device | max shift of a mean (predicted sd) | mean shift | max variance change | "
          "OOD score change (mean / max) | within 1e-3 |")
    print("|---|---|---:|---:|---:|---:|---|")
    for name, r in rows.items():
        d = deviation(cpu, r)
        d["described"] = r["described"]
        result[name] = d
        print(f"| {name} | {r['described']} | {d['mean_shift_sd_max']:.2e} | {d['mean_shift_sd_mean']:.2e} | "
              f"{d['variance_rel_max']:.2%} | {d['ood_rel_mean']:+.2%} / {d['ood_rel_max']:.2%} | "
              f"{'yes' if d['within_tolerance'] else 'no'} |")
    if bf16_note:
        result["bf16_note"] = bf16_note
        print(f"\n{bf16_note}")
    result["total_s"] = time.perf_counter() - t0
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    ok = result["default"]["within_tolerance"]
    print(f"\ndefault settings {'agree' if ok else 'DO NOT agree'} with the CPU within {TOLERANCE:g} "
          f"of the predicted sd ({result['total_s']:.0f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
