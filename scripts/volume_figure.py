"""docs/img/volumes-coronal.png: a coronal slice of a written water volume, in scanner coordinates, seams marked.

Makes full-size synthetic subject 1, writes its water volume with
``mimir preprocess --volumes`` (the Python call behind it), reads the file
back with nibabel and draws the coronal slice through the middle of the body
on the file's own affine (RAS+ x across, z up, mm), with each station's extent
from the sidecar (its top slice's ImagePositionPatient z, its slices x its
spacing) and the overlaps between neighbours shaded.

    python scripts/volume_figure.py [--out docs/img/volumes-coronal.png]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("docs/img/volumes-coronal.png"))
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nibabel as nib

    from mimir.batch.volumes import convert_subject
    from mimir.synth import generate_subject

    work = Path(tempfile.mkdtemp(prefix="mimir-volfig-"))
    zip_path = generate_subject(work, args.seed).zip_path
    convert_subject(zip_path, work / "vol", ("water",), cache=False)
    stem = zip_path.name[:-4]
    img = nib.load(str(work / "vol" / f"{stem}_water.nii.gz"))
    side = json.loads((work / "vol" / f"{stem}_volumes.json").read_text())
    water = np.asanyarray(img.dataobj)
    j = int(np.argmax(water.sum(axis=(0, 2))))  # the coronal row with the most signal: through the body
    aff = img.affine
    ni, _, nk = water.shape
    x0, x1 = (aff @ [0, j, 0, 1])[0], (aff @ [ni - 1, j, 0, 1])[0]
    z0, z1 = (aff @ [0, j, 0, 1])[2], (aff @ [0, j, nk - 1, 1])[2]
    y_mm = (aff @ [0, j, 0, 1])[1]

    fig, ax = plt.subplots(figsize=(4.6, 7.2), dpi=110)
    hi = np.percentile(water[:, j, :], 99.5)
    # Columns of the picture: RAS+ x from the patient's right (x > 0, i = 0) on the viewer's left, as radiology
    # shows it; rows: z, head up.
    ax.imshow(water[:, j, :].T, cmap="gray", vmin=0, vmax=hi, origin="lower", aspect="equal",
              extent=(x0 + 0.5 * aff[0, 0], x1 - 0.5 * aff[0, 0], z0 - 0.5 * aff[2, 2], z1 + 0.5 * aff[2, 2]))
    stations = side["stations"]
    colors = plt.cm.tab10(np.arange(len(stations)))
    for st, color in zip(stations, colors):
        top = st["position_lps_mm"][2]
        bottom = top - (st["voxels"][2] - 1) * st["spacing_mm"][2]
        ax.plot([x1 - 6, x1 - 6], [bottom, top], color=color, lw=4, solid_capstyle="butt")
        ax.text(x1 - 16, (top + bottom) / 2, f"{st['station']}", color=color, fontsize=9, va="center", ha="left")
    for a, b in zip(stations, stations[1:]):
        bottom_a = a["position_lps_mm"][2] - (a["voxels"][2] - 1) * a["spacing_mm"][2]
        top_b = b["position_lps_mm"][2]
        if top_b > bottom_a:
            ax.axhspan(bottom_a, top_b, color="orange", alpha=0.25, lw=0)
        ax.axhline((bottom_a + top_b) / 2, color="orange", lw=0.8, ls="--")
    ax.set_xlabel("x, mm (RAS+; patient's right on the left)")
    ax.set_ylabel("z, mm (scanner; head up)")
    ax.set_xlim(x0 - 0.5 * aff[0, 0], x1 - 30)
    ax.set_title(f"water volume, coronal slice j = {j} (y = {y_mm:.0f} mm)\n"
                 "bars: stations; shaded: overlaps (faded); dashed: seams", fontsize=8.5)
    ax.tick_params(labelsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} kB) from {zip_path.name}, voxel size "
          f"{side['voxel_size_mm']}, shape {list(water.shape)}")


if __name__ == "__main__":
    main()
