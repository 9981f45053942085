"""Where the built-in phantom-demo module looks: saliency mass per anatomical band and target.

Synthetic subjects (``mimir synth``, full size) have known landmarks (chin,
liver dome, top of the femoral heads, knee; ``landmarks_z_mm`` in the truth).
For each method this script computes the per-subject saliency maps of every
target of ``phantom-demo``, normalises each to unit sum, averages them over
the subjects, and prints the mean over subjects of the share of each map's
mass in each band (the bands move a little from subject to subject), next to
the band's share of the image rows (the mass a uniform map would have there).
A map that reads a target from the right anatomy puts much more than the row
share there.

    PYTHONPATH=src python benchmarks/saliency.py [--subjects 8] [--methods gradcam,smoothgrad]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from mimir.inference import saliency as S  # noqa: E402
from mimir.models.modules import load_networks  # noqa: E402
from mimir.models.registry import get_module  # noqa: E402
from mimir.preprocessing.pipeline import preprocess  # noqa: E402
from mimir.synth import build_study, study_zip_bytes  # noqa: E402


def subjects(n: int, first_seed: int, small: bool) -> list[tuple[np.ndarray, dict[str, tuple[float, float]]]]:
    """(image, bands) of n synthetic subjects."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(first_seed, first_seed + n):
            study = build_study(seed, small=small)
            path = os.path.join(tmp, f"{study.eid}_20201_2_0.zip")
            with open(path, "wb") as fh:
                fh.write(study_zip_bytes(study))
            image = preprocess(path, cache=False)
            z = np.concatenate([s.z for s in study.series])
            rows = {k: S.row_of_z(v, float(z.max()), float(z.min()))
                    for k, v in study.truth["landmarks_z_mm"].items()}
            out.append((image, S.anatomy_bands(rows)))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1000, help="first synth seed (the module was trained on seeds 10000-11999)")
    ap.add_argument("--methods", default=",".join(S.METHODS))
    ap.add_argument("--small", action="store_true", help="reduced-size synthetic subjects")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    spec = get_module("phantom-demo")
    nets = load_networks(spec)
    names = [t.name for t in spec.targets]
    data = subjects(args.subjects, args.seed, args.small)
    row_share = {b: float(np.mean([abs(r[1] - r[0]) / S.SIZE for _, bands in data for r in [bands[b]]]))
                 for b in S.BANDS}
    print(f"phantom-demo {spec.version}, {args.subjects} synthetic subjects (seeds {args.seed}-"
          f"{args.seed + args.subjects - 1}, {'small' if args.small else 'full size'}); "
          "mean share of each map's mass per band (a uniform map: the row share)")
    print(f"{'row share':34s}" + "".join(f"{b:>22s}" for b in S.BANDS))
    print(f"{'':34s}" + "".join(f"{row_share[b]:22.2f}" for b in S.BANDS))
    for method in args.methods.split(","):
        t0 = time.process_time()
        per_subject = []
        for image, bands in data:
            maps = S.ensemble_saliency(nets, image, S.target_outputs(len(names)), method)
            per_subject.append([S.band_masses(m, bands) for m in maps])
        cpu = time.process_time() - t0
        print(f"\n{method} ({cpu / len(data):.2f} s CPU per subject, all {len(names)} targets, {len(nets)} members)")
        for i, name in enumerate(names):
            masses = {b: float(np.mean([ps[i][b] for ps in per_subject])) for b in S.BANDS}
            print(f"  {name:32s}" + "".join(f"{masses[b]:22.2f}" for b in S.BANDS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
