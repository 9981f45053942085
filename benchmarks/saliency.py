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

    python benchmarks/saliency.py [--subjects 8] [--methods gradcam,smoothgrad]

``--cohort N`` measures instead what registration to a common frame does for
cohort maps (needs SimpleITK): N unseen full-size synthetic subjects (seeds
``--seed`` + 1 ...) are registered to the subject of seed ``--seed`` (the
template; its organs are known), and the script prints (a) the Dice of each
subject's organ masks (:mod:`mimir.synth.organs`) with the template's, in the
template frame, before (image coordinates) and after registration; (b) the
share of the aggregated liver-fat map inside the template's liver, and (c)
of the thigh-muscle map inside the template's thigh muscle and thighs,
unregistered against registered, per method; with, as the ceiling, the mean
share of each subject's own map inside its own organ. ``--save FILE.npz``
keeps the aggregates and mean images; ``--figure FILE.png`` draws them.

    nice python benchmarks/saliency.py --cohort 200 --save cohort.npz --figure docs/img/saliency_registered.png
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


COHORT_TARGETS = {"liver_fat_percent": ("liver",), "thigh_muscle_volume_l": ("thigh_muscle", "thighs")}
COHORT_METHODS = ("gradcam", "guided-gradcam", "smoothgrad")


def synthetic_subject(seed: int, tmp: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(image, organ regions) of the full-size synthetic subject ``seed``."""
    from mimir.synth.organs import organ_projections, organ_regions

    study = build_study(seed)
    path = os.path.join(tmp, f"{study.eid}_20201_2_0.zip")
    with open(path, "wb") as fh:
        fh.write(study_zip_bytes(study))
    image = preprocess(path, cache=False)
    os.remove(path)
    return image, organ_regions(organ_projections(study))


def cohort(args: argparse.Namespace) -> int:
    """Registered against unregistered cohort maps on synthetic subjects with known organs."""
    from mimir.inference import registration as R
    from mimir.synth.organs import mass_inside

    spec = get_module("phantom-demo")
    nets = load_networks(spec)
    names = [t.name for t in spec.targets]
    outs = S.target_outputs(len(names), [names.index(t) for t in COHORT_TARGETS])
    organs = sorted({o for os_ in COHORT_TARGETS.values() for o in os_})
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        template, t_org = synthetic_subject(args.seed, tmp)
        agg = {(m, reg): np.zeros((len(outs), S.SIZE, S.SIZE)) for m in COHORT_METHODS for reg in (False, True)}
        own = {m: [] for m in COHORT_METHODS}
        dice = {o: ([], []) for o in organs}
        img_sum = {False: np.zeros((3, S.SIZE, S.SIZE)), True: np.zeros((3, S.SIZE, S.SIZE))}
        failed, reg_s, quality, n = [], [], [], 0
        for seed in range(args.seed + 1, args.seed + 1 + args.cohort):
            image, org = synthetic_subject(seed, tmp)
            reg = R.register(image, template)
            reg_s.append(reg.seconds)
            if not reg.ok:
                failed.append(f"seed {seed}: {reg.error}")
                continue
            quality.append(reg.quality)
            n += 1
            for o in organs:
                dice[o][0].append(R.dice(t_org[o], org[o]))
                dice[o][1].append(R.dice(t_org[o], R.warp(org[o].astype(float), reg.coords) >= 0.5))
            img_sum[False] += image
            img_sum[True] += R.warp_image(image, reg.coords)
            for m in COHORT_METHODS:
                maps = S.ensemble_saliency(nets, image, outs, m)
                own[m].append([mass_inside(maps[k], org[COHORT_TARGETS[t][0]]) for k, t in enumerate(COHORT_TARGETS)])
                for k in range(len(outs)):
                    agg[(m, False)][k] += S.normalise(maps[k])
                    agg[(m, True)][k] += S.normalise(R.warp(maps[k], reg.coords))
            if n % 10 == 0:
                print(f"  {n} subjects registered ({time.time() - started:.0f} s)", file=sys.stderr, flush=True)
    print(f"phantom-demo {spec.version}: {args.cohort} unseen full-size synthetic subjects (seeds {args.seed + 1}-"
          f"{args.seed + args.cohort}) registered to the subject of seed {args.seed} (template); "
          f"{len(failed)} failed registration and are left out; {n} used")
    print(f"registration: {np.median(reg_s):.2f} s per subject (median wall time, one core; "
          f"{np.percentile(reg_s, 90):.2f} s 90th percentile); body-mask Dice "
          f"{np.mean([q.body_dice_before for q in quality]):.3f} before, "
          f"{np.mean([q.body_dice_after for q in quality]):.3f} after; mean |water, fat difference| "
          f"{np.mean([q.residual_before for q in quality]):.1f} before, "
          f"{np.mean([q.residual_after for q in quality]):.1f} after (0..255)")
    for f in failed:
        print(f"  failed: {f}")
    print("\n(a) Dice of each subject's organ mask with the template's, in the template frame (mean, sd)")
    print(f"  {'organ':16s}{'unregistered':>18s}{'registered':>18s}")
    for o in organs:
        b, a = dice[o]
        print(f"  {o:16s}{np.mean(b):12.3f} ({np.std(b):.3f}){np.mean(a):12.3f} ({np.std(a):.3f})")
    print("\n(b, c) share of the aggregated map's mass inside the template's organ region "
          "(own: mean share of each subject's map inside its own organ, no aggregation)")
    print(f"  {'method':16s}{'target':24s}{'region':14s}{'region area':>12s}{'unregistered':>14s}"
          f"{'registered':>12s}{'own':>8s}")
    for m in COHORT_METHODS:
        for k, (t, regions) in enumerate(COHORT_TARGETS.items()):
            for j, o in enumerate(regions):
                u = mass_inside(agg[(m, False)][k], t_org[o])
                r = mass_inside(agg[(m, True)][k], t_org[o])
                own_s = f"{np.mean([v[k] for v in own[m]]):8.3f}" if j == 0 else f"{'':8s}"
                print(f"  {m:16s}{t:24s}{o:14s}{t_org[o].mean():12.3f}{u:14.3f}{r:12.3f}{own_s}")
    print(f"\n{time.time() - started:.0f} s in all")
    arrays = {f"{m}|{'registered' if reg else 'unregistered'}|{t}": agg[(m, reg)][k] / max(n, 1)
              for (m, reg) in agg for k, t in enumerate(COHORT_TARGETS)}
    arrays.update({"template": template, "subjects": np.array(n), "mean_unregistered": img_sum[False] / max(n, 1),
                   "mean_registered": img_sum[True] / max(n, 1),
                   **{f"region|{o}": t_org[o] for o in organs}})
    if args.save:
        np.savez_compressed(args.save, **arrays)
    if args.figure:
        figure(arrays, args.figure, n)
    return 0


def figure(arrays: dict[str, np.ndarray], path: str, n: int) -> None:
    """Unregistered (on the mean image) beside registered (on the template) cohort maps, per method and target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.ndimage import gaussian_filter

    rows = [(m, t) for m in COHORT_METHODS for t in COHORT_TARGETS]
    fig, axes = plt.subplots(len(rows), 2, figsize=(7.2, 3.3 * len(rows)))
    for i, (m, t) in enumerate(rows):
        for j, reg in enumerate(("unregistered", "registered")):
            ax = axes[i, j]
            base = arrays["mean_unregistered" if reg == "unregistered" else "template"][0]
            ax.imshow(base, cmap="gray")
            sal = arrays[f"{m}|{reg}|{t}"]
            sal = gaussian_filter(sal, 2.0) if m != "gradcam" else sal
            ax.imshow(np.ma.masked_less(sal, sal.max() * 0.05), cmap="jet", alpha=0.55)
            region = "region|liver" if t == "liver_fat_percent" else "region|thigh_muscle"
            ax.contour(arrays[region], [0.5], colors="white", linewidths=0.7)
            ax.set_title(f"{m}, {t}\n{reg} ({'mean image' if j == 0 else 'template'})", fontsize=8)
            ax.axis("off")
    fig.suptitle(f"phantom-demo cohort maps, {n} synthetic subjects; white: the template's organ", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    fig.savefig(path, dpi=80)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1000, help="first synth seed (the module was trained on seeds 10000-11999)")
    ap.add_argument("--methods", default=",".join(S.METHODS))
    ap.add_argument("--small", action="store_true", help="reduced-size synthetic subjects")
    ap.add_argument("--cohort", type=int, default=0, help="registration benchmark on this many subjects")
    ap.add_argument("--save", help="--cohort: write the aggregates to this .npz")
    ap.add_argument("--figure", help="--cohort: draw the cohort maps to this PNG")
    ap.add_argument("--figure-from", metavar="NPZ", help="draw --figure from a --save file instead of computing")
    args = ap.parse_args(argv)
    if args.figure_from:
        arrays = dict(np.load(args.figure_from))
        figure(arrays, args.figure, int(arrays["subjects"]) if "subjects" in arrays else args.cohort)
        return 0
    import torch

    torch.set_num_threads(1)
    if args.cohort:
        return cohort(args)
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
