"""Images for ``benchmarks/ood.py``: in-distribution subjects and five kinds of shift.

Every set is a folder of ``mimir-v1`` images (``<name>.npy``, (3, 256, 256)
uint8) plus ``truth.csv`` (name and the six demo targets; empty where a set
has no truth). Images are made with the pipeline's own functions from the
signal slices on (``scripts/synth_images.py``; identical to preprocessing the
zip), so no 50 MB zips are written. Sets and seeds:

===============  =================  ==================================================================
set              seeds              what
===============  =================  ==================================================================
``reference``    10000-10249        in-distribution; a subset of the demo module's training seeds
``calibration``  600000-601199      in-distribution, unseen: the flag threshold is chosen on these
``test``         610000-610599      in-distribution, unseen: the false-positive rate is measured here
``phantom2``     700000-...         a second, independently written body phantom (ood_phantom.py)
``extreme``      710000-...         mimir synth bodies with parameters far outside the training ranges (a seed whose body leaves the generator's grid is skipped)
``intensity``    720000-...         mimir synth bodies with strong coil shading, noise, water/fat gain
``small``        730000-...         ``small=True`` subjects (64 columns, 12-18 slices per station)
``nonbody``      740000-...         images that are no body at all (noise, shapes, gradients, ...)
===============  =================  ==================================================================

The table in the README and docs/ood.md (2026-11-28) was made from the full
default sets; ``extreme`` skips 4 seeds whose body leaves the generator's
truth grid (56 of 60).

Usage (resumable; run it in the background, it takes ~1 s per full-size subject and process)::

    nice python benchmarks/ood_data.py --out .scratch/ood --sets reference,calibration,test
    nice python benchmarks/ood_data.py --out .scratch/ood --sets phantom2,extreme,intensity,small,nonbody
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "benchmarks"))

TARGETS = ("weight_kg", "height_cm", "vat_volume_l", "asat_volume_l", "liver_fat_percent", "thigh_muscle_volume_l")

#: set name -> (first seed, default count)
SETS: dict[str, tuple[int, int]] = {
    "reference": (10_000, 250),
    "calibration": (600_000, 1200),
    "test": (610_000, 600),
    "phantom2": (700_000, 60),
    "extreme": (710_000, 60),
    "intensity": (720_000, 60),
    "small": (730_000, 60),
    "nonbody": (740_000, 60),
}

Transform = Callable[[str, int, np.ndarray], np.ndarray]


def synth_image(seed: int, *, small: bool = False, transform: Transform | None = None,
                params_hook: Callable[[object], object] | None = None) -> tuple[np.ndarray, dict[str, object]]:
    """(image, truth) of ``mimir synth`` subject ``seed`` via the pipeline's functions.

    ``transform(kind, station, pixels)`` may change each station's water
    (``"W"``) or fat (``"F"``) pixels (float32, slices x rows x cols) before
    they enter the pipeline; ``params_hook`` may change the drawn
    :class:`~mimir.synth.body.BodyParams` (the truth follows the changed body).
    """
    from synth_images import _f32

    from mimir.synth import study as synth
    from mimir.preprocessing.fusion import fuse_stations
    from mimir.preprocessing.projection import make_image
    from mimir.preprocessing.reader import SignalSlice
    from mimir.preprocessing.stations import group_stations, pair_water_fat

    original = synth.draw_params
    if params_hook is not None:
        synth._drawn_body.cache_clear()
        synth.draw_params = lambda s: params_hook(original(s))  # type: ignore[assignment]
    try:
        study = synth.build_study(seed, small=small)
    finally:
        synth.draw_params = original
        if params_hook is not None:
            synth._drawn_body.cache_clear()
    spacing = np.full(2, np.float32(float(synth.PIXEL_SPACING_TEXT)), dtype=np.float32)
    slices = []
    for s in study.series:
        if s.kind not in ("W", "F"):
            continue
        pix = s.pixels.astype(np.float32)
        if transform is not None:
            pix = np.clip(np.round(transform(s.kind, s.station, pix)), 0, 4095).astype(np.float32)
        for k in range(pix.shape[0]):
            pos = np.array([_f32(s.x0), _f32(s.y0), _f32(float(s.z[k]))], dtype=np.float32)
            slices.append(SignalSlice(pix[k], s.number, s.description, pos, spacing, s.time))
    fused = fuse_stations(pair_water_fat(group_stations(slices)))
    return make_image(fused.water, fused.fat), study.truth


# --------------------------------------------------------------------------- shifts


def extreme_hook(seed: int) -> Callable[[object], object]:
    """Body parameters far outside the training ranges (one to three of them per subject)."""
    rng = np.random.default_rng([seed, 0xE7])

    def hook(p: object) -> object:
        changes: dict[str, object] = {}
        picks = rng.choice(5, size=int(rng.integers(1, 4)), replace=False)
        for k in picks:
            if k == 0:  # very short or very tall (training: 150-195 cm)
                changes["height_mm"] = float(rng.choice([rng.uniform(1250, 1420), rng.uniform(2030, 2150)]))
            elif k == 1:  # extreme subcutaneous fat (training: 6-48 mm)
                sc = float(rng.choice([rng.uniform(1.0, 3.0), rng.uniform(60.0, 75.0)]))
                changes.update(sc_mm=sc, leg_fat_mm=0.8 * sc, arm_fat_mm=0.6 * sc)
            elif k == 2:  # liver fat far beyond 30 %
                changes["liver_ff"] = float(rng.uniform(0.40, 0.60))
            elif k == 3:  # frame and muscle far outside
                changes["frame"] = float(rng.choice([rng.uniform(0.78, 0.86), rng.uniform(1.18, 1.24)]))
                changes["muscle"] = float(rng.choice([rng.uniform(0.55, 0.7), rng.uniform(1.4, 1.6)]))
            else:  # visceral fat saturating
                changes["visceral"] = float(rng.uniform(0.97, 1.0))
        return dataclasses.replace(p, **changes)  # type: ignore[type-var]

    return hook


def intensity_transform(seed: int) -> Transform:
    """Scanner changes: strong coil shading per station, water/fat gain imbalance, more noise."""
    rng = np.random.default_rng([seed, 0x1A7])
    wf_ratio = float(rng.choice([rng.uniform(0.55, 0.75), rng.uniform(1.35, 1.8)]))
    noise = float(rng.uniform(25.0, 60.0))
    per_station = {i: (rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.5), rng.uniform(-0.4, 0.4)) for i in range(1, 7)}
    prng = np.random.default_rng([seed, 0x1A8])

    def transform(kind: str, station: int, pix: np.ndarray) -> np.ndarray:
        a, b, c = per_station[station]
        n, rows, cols = pix.shape
        z = np.linspace(-1, 1, n, dtype=np.float32)[:, None, None]
        y = np.linspace(-1, 1, rows, dtype=np.float32)[None, :, None]
        x = np.linspace(-1, 1, cols, dtype=np.float32)[None, None, :]
        shade = np.clip(1.0 + a * y + b * x + c * z * z, 0.2, None)
        out = pix * shade * (wf_ratio if kind == "W" else 1.0)
        return np.hypot(out + noise * prng.standard_normal(pix.shape, dtype=np.float32),
                        noise * prng.standard_normal(pix.shape, dtype=np.float32))

    return transform


def nonbody_image(seed: int) -> np.ndarray:
    """An image with no body in it: noise, smooth blobs, gradients, shapes or constants."""
    rng = np.random.default_rng([seed, 0x40B])
    kind = seed % 6
    yy, xx = np.mgrid[0:256, 0:256].astype(np.float32) / 255.0
    chans = []
    for _ in range(3):
        if kind == 0:
            c = rng.uniform(0, 255, (256, 256))
        elif kind == 1:  # smooth random field
            from scipy.ndimage import gaussian_filter

            c = gaussian_filter(rng.standard_normal((256, 256)), rng.uniform(4, 20))
            c = (c - c.min()) / (np.ptp(c) + 1e-9) * 255
        elif kind == 2:
            c = 255 * (rng.uniform() * xx + rng.uniform() * yy) / 2
        elif kind == 3:  # a few bright ellipses
            c = np.zeros((256, 256))
            for _ in range(int(rng.integers(1, 6))):
                cy, cx, ry, rx = rng.uniform(30, 226), rng.uniform(30, 226), rng.uniform(8, 60), rng.uniform(8, 60)
                c[((yy * 255 - cy) / ry) ** 2 + ((xx * 255 - cx) / rx) ** 2 < 1] = rng.uniform(60, 255)
        elif kind == 4:
            c = np.full((256, 256), rng.uniform(0, 255))
        else:  # checkerboard
            k = int(rng.integers(4, 40))
            c = 255.0 * (((yy * 255 // k) + (xx * 255 // k)) % 2)
        chans.append(c)
    return np.clip(np.stack(chans), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- driver


def make(set_name: str, seed: int) -> tuple[np.ndarray, dict[str, object] | None]:
    """(image, truth or None) of subject ``seed`` of ``set_name``."""
    if set_name in ("reference", "calibration", "test"):
        return synth_image(seed)
    if set_name == "small":
        return synth_image(seed, small=True)
    if set_name == "extreme":
        return synth_image(seed, params_hook=extreme_hook(seed))
    if set_name == "intensity":
        return synth_image(seed, transform=intensity_transform(seed))
    if set_name == "phantom2":
        from ood_phantom import phantom_image

        return phantom_image(seed)
    if set_name == "nonbody":
        return nonbody_image(seed), None
    raise ValueError(f"unknown set {set_name}")


def write_truth(folder: Path) -> None:
    """Rewrite ``truth.csv`` from the per-image ``.truth.csv`` lines written so far."""
    rows = sorted(p.read_text().strip() for p in folder.glob("*.truth.line"))
    tmp = folder / "truth.csv.tmp"
    tmp.write_text(",".join(["name", *TARGETS]) + "\n" + "".join(r + "\n" for r in rows))
    tmp.replace(folder / "truth.csv")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / ".scratch" / "ood"))
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--n", type=int, default=None, help="subjects per set (default: per set, see SETS)")
    ap.add_argument("--reverse", action="store_true", help="last seed first (a second process on the same set)")
    args = ap.parse_args(argv)
    for set_name in args.sets.split(","):
        seed0, n = SETS[set_name]
        n = args.n or n
        folder = Path(args.out) / set_name
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        seeds = range(seed0, seed0 + n)
        for seed in reversed(seeds) if args.reverse else seeds:
            name = f"{1_000_000 + seed}_20201_2_0"
            npy = folder / f"{name}.npy"
            if npy.is_file():
                continue
            if (folder / f"{name}.skip").is_file():
                continue
            try:
                image, truth = make(set_name, seed)
            except AssertionError as exc:  # an extreme body that leaves the generator's truth grid
                (folder / f"{name}.skip").write_text(f"{exc}\n")
                continue
            line = ",".join([name, *("" if truth is None else repr(float(truth[t])) for t in TARGETS)])  # type: ignore[arg-type]
            (folder / f"{name}.truth.line").write_text(line)
            tmp = folder / f"{name}.{os.getpid()}.tmp.npy"
            np.save(tmp, image)
            tmp.replace(npy)
        write_truth(folder)
        print(f"{set_name}: {n} subjects in {folder} ({time.time() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
