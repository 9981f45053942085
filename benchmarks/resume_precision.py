"""A batch run resumed under another precision redoes its subjects, and run.json says what was run.

``mimir batch`` with the built-in ``phantom-demo`` module on a few images, on
``--device`` (``cuda:N`` runs as ``--gpu N``):

1. the default (``--precision auto``): run.json must record ``fp32`` and the device type;
2. the same folder with ``--precision bf16``: every subject redone, every record bf16;
3. (not with ``--quick``) the default again: every subject redone, and
   predictions.csv the same bytes as after step 1.

Prints one line per check and a Markdown table; ``--json`` writes them; exits 1 if a check fails.

    python benchmarks/resume_precision.py --device cuda:0
    python benchmarks/resume_precision.py --device cpu --quick     # seconds
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


def _run(data: Path, out: Path, device: str, precision: str) -> tuple[Any, dict[str, Any], list[dict[str, Any]]]:
    from mimir.batch.runner import run_batch

    where = {"gpus": [int(device.split(":")[1]) if ":" in device else 0]} if device.startswith("cuda") else {
        "device": device}
    res = run_batch(data, out, modules=["phantom-demo"], precision=precision, workers=1, batch_size=4, **where)
    run = json.loads((out / "run.json").read_text())
    records = [json.loads(p.read_text()) for p in sorted((out / "records").glob("*/*.json"))]
    return res, run, records


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N (default cuda) or cpu")
    ap.add_argument("--subjects", type=int, default=8, help="images (default 8)")
    ap.add_argument("--quick", action="store_true", help="2 images, steps 1 and 2 only (seconds)")
    ap.add_argument("--json", type=Path, help="also write the checks to this JSON file")
    args = ap.parse_args(argv)
    n = 2 if args.quick else args.subjects
    device_type = "cuda" if args.device.startswith("cuda") else args.device
    checks: list[tuple[str, bool, str]] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mimir-resume-") as tmp:
        data, out = Path(tmp) / "data", Path(tmp) / "out"
        data.mkdir()
        rng = np.random.default_rng(0)
        for i in range(n):  # plain images: the check is about records, not preprocessing
            np.save(data / f"img{i}.npy", rng.integers(0, 256, (3, 256, 256), dtype=np.uint8))

        res, run, records = _run(data, out, args.device, "auto")
        first = (out / "predictions.csv").read_bytes()
        checks.append(("default run records fp32 and the device type",
                       (run["precision"], run["device_type"]) == ("fp32", device_type)
                       and {r["key"]["precision"] for r in records} == {"fp32"},
                       f"run.json precision {run['precision']}, device_type {run['device_type']}, "
                       f"devices {run['devices']}"))
        try:
            res, run, records = _run(data, out, args.device, "bf16")
            checks.append(("resumed with --precision bf16: every subject redone, every record bf16",
                           res.processed == n and res.done_before == 0 and run["precision"] == "bf16"
                           and {r["key"]["precision"] for r in records} == {"bf16"},
                           f"processed {res.processed} of {n}, done before {res.done_before}, devices {run['devices']}"))
        except Exception as exc:  # noqa: BLE001 - e.g. a GPU without native bf16: reported as a check
            checks.append(("resumed with --precision bf16", False, f"{type(exc).__name__}: {exc}"))
        if not args.quick:
            res, run, records = _run(data, out, args.device, "auto")
            checks.append(("back to the default: every subject redone, predictions.csv as after the first run",
                           res.processed == n and (out / "predictions.csv").read_bytes() == first,
                           f"processed {res.processed} of {n}"))
    ok = all(passed for _, passed, _ in checks)
    print(f"\n### Resume across precision: mimir batch on {args.device}, {n} images, phantom-demo, "
          f"{time.strftime('%Y-%m-%d')}\n")
    print("| check | result | detail |")
    print("|---|---|---|")
    for name, passed, detail in checks:
        print(f"| {name} | {'pass' if passed else 'FAIL'} | {detail} |")
    if args.json:
        args.json.write_text(json.dumps({"device": args.device, "images": n, "ok": ok,
                                         "seconds": time.perf_counter() - t0,
                                         "checks": [{"check": c, "pass": p, "detail": d} for c, p, d in checks]},
                                        indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
