"""Out-of-distribution flags of the demo module under five kinds of shift.

Reads the image sets made by ``benchmarks/ood_data.py`` (default
``.scratch/ood``), runs the ``phantom-demo`` networks once per image (CPU,
fp32) for predictions and pooled features, fits the OOD reference on the
``reference`` set (training seeds) and the ``calibration`` set (unseen
in-distribution seeds), sets the flag line on the calibration set by 5-fold
cross-fitting (:func:`mimir.models.ood.fit_reference`), and prints per set:

* n, the share flagged ``out_of_distribution:phantom-demo``;
* the share of subjects with a confidently wrong prediction (any target with
  |error| > 3 predicted sd), and the share of those that are flagged;
* the share of subjects whose 95 % interval misses the truth in any target.

The ``test`` set (unseen in-distribution seeds, never used to fit or
calibrate) gives the false-positive rate. ``--write-module`` stores the fitted
reference in the built-in module (``mimir/data/modules/phantom-demo``)::

    python benchmarks/ood_data.py                 # the images (slow: ~2 s per subject)
    python benchmarks/ood.py                      # the table
    python benchmarks/ood.py --write-module       # ... and store the reference in phantom-demo
    python benchmarks/ood.py --use-module         # score with the reference stored in the module

Features are cached per set in ``<data>/features-<set>.npz`` (keyed by the
image names and the module digest).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from ood_data import TARGETS

SHIFT_SETS = ("phantom2", "extreme", "intensity", "small", "nonbody")
LABELS = {
    "reference": "in-distribution, fit (training seeds)",
    "calibration": "in-distribution, flag line",
    "test": "in-distribution, held out",
    "phantom2": "second body phantom",
    "extreme": "bodies outside training ranges",
    "intensity": "coil shading / noise / W-F gain",
    "small": "small=True subjects",
    "nonbody": "non-body images",
}


def set_data(folder: Path, predictor, digest: str) -> dict[str, np.ndarray] | None:
    """Names, truth (N, T), means, variances (N, T) and features (K, N, d) of one set (cached)."""
    files = sorted(folder.glob("*_20201_2_0.npy"))
    if not files:
        return None
    names = np.array([f.name[: -len(".npy")] for f in files])
    cache = folder.parent / f"features-{folder.name}.npz"
    if cache.is_file():
        z = np.load(cache)
        if str(z["digest"]) == digest and np.array_equal(z["names"], names):
            return {k: z[k] for k in z.files}
    truth = {}
    tpath = folder / "truth.csv"
    for f in folder.glob("*.truth.line"):
        row = f.read_text().strip().split(",")
        truth[row[0]] = [float(v) if v else np.nan for v in row[1:]]
    del tpath
    means, variances, feats = [], [], []
    for s in range(0, len(files), 32):
        images = np.stack([np.load(f) for f in files[s : s + 32]])
        (raw, f), = predictor._forward(images, features=True)
        m, v = predictor._combine(predictor.loaded[0], raw)
        means.append(m)
        variances.append(v)
        feats.append(f)
    out = {
        "names": names,
        "truth": np.array([truth.get(n, [np.nan] * len(TARGETS)) for n in names], dtype=np.float64),
        "means": np.concatenate(means),
        "variances": np.concatenate(variances),
        "features": np.concatenate(feats, axis=1),
        "digest": np.array(digest),
    }
    np.savez(cache, **out)
    return out


def seed_ranges(names: np.ndarray) -> str:
    """'10000-10139, 10206-10249' from image names ``<1000000 + seed>_20201_2_0``."""
    seeds = sorted(int(str(n).split("_")[0]) - 1_000_000 for n in names)
    out, start, prev = [], seeds[0], seeds[0]
    for s in seeds[1:]:
        if s != prev + 1:
            out.append((start, prev))
            start = s
        prev = s
    out.append((start, prev))
    return ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT / ".scratch" / "ood"))
    ap.add_argument("--module", default=str(ROOT / "mimir" / "data" / "modules" / "phantom-demo"))
    ap.add_argument("--quantile", type=float, default=None, help="flag-line quantile (default: mimir's, 0.995)")
    ap.add_argument("--write-module", action="store_true", help="store the fitted reference in the module")
    ap.add_argument("--use-module", action="store_true", help="score with the module's stored reference")
    ap.add_argument("--markdown", default=None, help="also write the table as markdown to this file")
    args = ap.parse_args(argv)

    import torch

    from mimir.models.ood import DEFAULT_QUANTILE

    args.quantile = DEFAULT_QUANTILE if args.quantile is None else args.quantile

    from mimir.inference.predictor import Predictor
    from mimir.models.modules import read_module, set_reference
    from mimir.models.ood import fit_reference

    torch.set_num_threads(1)
    spec = read_module(args.module)
    bare = copy.copy(spec)
    bare.ood = None
    bare_digest = bare.digest
    predictor = Predictor([bare], device="cpu", precision="fp32")
    data = {}
    t0 = time.process_time()
    for name in ("reference", "calibration", "test", *SHIFT_SETS):
        d = set_data(Path(args.data) / name, predictor, bare_digest)
        if d is not None:
            data[name] = d
    cpu = time.process_time() - t0
    if args.use_module:
        ref = spec.load_reference()
        how = f"reference stored in {spec.name} ({spec.ood.file})"
    else:
        ref = fit_reference(data["reference"]["features"], data["calibration"]["features"], quantile=args.quantile)
        how = (f"fitted on {data['reference']['names'].size} reference + {data['calibration']['names'].size} "
               f"calibration images, flag line (q={args.quantile}) cross-fitted on the calibration images")
    lines = [
        f"OOD flags of phantom-demo ({how}); features+predictions {cpu:.0f} s CPU (0: read from the cache)",
        "",
        "| set | what | seeds | n | flagged | conf. wrong | conf. wrong flagged | 95% CI misses truth | median score |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, d in data.items():
        scores = ref.scores(d["features"])
        flagged = ~(scores <= 1.0)
        n = scores.size
        z = np.abs(d["truth"] - d["means"]) / np.sqrt(d["variances"])
        has_truth = np.all(np.isfinite(d["truth"]), axis=1)
        cw = has_truth & np.any(z > 3.0, axis=1)
        miss = has_truth & np.any(z > 1.959964, axis=1)
        if has_truth.any():
            cw_txt = f"{cw.sum()}/{has_truth.sum()} ({100 * cw.sum() / has_truth.sum():.0f} %)"
            cwf = f"{(cw & flagged).sum()}/{cw.sum()}" + (f" ({100 * (cw & flagged).sum() / cw.sum():.0f} %)" if cw.any() else "")
            miss_txt = f"{100 * miss.sum() / has_truth.sum():.0f} %"
        else:
            cw_txt, cwf, miss_txt = "no truth", "-", "-"
        lines.append(
            f"| {name} | {LABELS[name]} | {seed_ranges(d['names'])} | {n} | {flagged.sum()} ({100 * flagged.mean():.1f} %) | {cw_txt} | {cwf} | "
            f"{miss_txt} | {np.median(scores):.2f} |"
        )
    # the cost of scoring: the same forward pass with and without the reference (CPU time, min of 5)
    images = np.stack([np.load(f) for f in sorted((Path(args.data) / "test").glob("*.npy"))[:16]]) if (
        Path(args.data) / "test").is_dir() else None
    if images is not None and len(images):
        names = [f"s{i}.npy" for i in range(len(images))]
        with_ref = Predictor([spec], device="cpu", precision="fp32")
        with_ref.loaded[0].reference = ref
        times = {}
        for label, pr in (("without", predictor), ("with", with_ref)):
            best = np.inf
            for _ in range(5):
                t = time.process_time()
                pr.predict_images(images, names)
                best = min(best, time.process_time() - t)
            times[label] = best / len(images)
        lines += [
            "",
            (f"prediction CPU time per image (1 thread, min of 5 x {len(images)} images): "
             f"{1000 * times['without']:.1f} ms without the OOD score, {1000 * times['with']:.1f} ms with it"),
        ]
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    if args.write_module:
        fitted = {
            "by": "benchmarks/ood.py --write-module",
            "images": "mimir synth full-size subjects made with scripts/synth_images.py",
            "fit_images": int(data["reference"]["names"].size + data["calibration"]["names"].size),
            "split": "mean/covariance on reference + calibration images; flag line on the calibration images, "
                     "5-fold cross-fitted",
            "fit_seeds": seed_ranges(data["reference"]["names"]) + " (training seeds of the module) and the "
                         "calibration seeds",
            "calibration_images": int(data["calibration"]["names"].size),
            "calibration_seeds": seed_ranges(data["calibration"]["names"]) + " (not used in training)",
        }
        new = set_reference(spec, ref, fitted=fitted)
        print(f"stored {new.ood.file} in {new.path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
