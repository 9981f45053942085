"""A second, deliberately simple body phantom, written independently of ``mimir.synth``.

Used by ``benchmarks/ood.py`` as one kind of distribution shift: a body drawn
by another model, in the same image format. The body is built directly on the
fused grid (left-right x anterior-posterior x head-foot, 2.232 x 2.232 x 3 mm,
head at the end of the last axis) from elliptic cylinders whose size changes
along the body: neck, thorax with lungs and arms, abdomen with a muscle wall,
visceral fat and liver, pelvis, two legs with a subcutaneous fat ring. Water
and fat signals get a fixed contrast per tissue and Rician noise, and the
image is made by the pipeline's own ``make_image``.

Truth is computed from the same voxels, with the definitions of ``mimir synth``
where they carry over (VAT/ASAT between the top of the femoral heads and the
liver dome; thigh muscle between the knee and the femoral heads; weight from
volume x density with the head and lower legs added as cylinders).
"""

from __future__ import annotations

import numpy as np

#: Output grid: voxel size in mm and shape (left-right, anterior-posterior, head-foot).
VOXEL_MM = (2.23214293, 2.23214293, 3.0)
SHAPE = (224, 174, 365)
DENSITY = {"fat": 0.90, "lean": 1.06, "lung": 0.30}
#: (water, fat) signal of each tissue
SIGNAL = {"muscle": (620.0, 40.0), "fat": (70.0, 640.0), "lung": (25.0, 5.0), "organ": (560.0, 50.0),
          "bone": (120.0, 420.0)}


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, a: float, b: float) -> np.ndarray:
    return ((x - cx) / max(a, 1e-3)) ** 2 + ((y - cy) / max(b, 1e-3)) ** 2 <= 1.0


def phantom_volumes(seed: int) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """(water, fat, truth) of phantom ``seed``: float32 volumes of :data:`SHAPE`."""
    rng = np.random.default_rng([seed, 0x2B0D])
    male = rng.random() < 0.5
    height = float(np.clip(rng.normal(1750 if male else 1620, 70), 1500, 1950))  # mm
    adip = float(np.clip(rng.normal(), -2, 2))
    sc = float(np.clip(np.exp(np.log(20 if male else 28) + 0.35 * adip), 5, 50))  # mm
    vat_scale = float(np.clip(0.45 + 0.18 * adip + rng.normal(0, 0.08), 0.1, 0.9))
    liver_ff = float(np.clip(np.exp(np.log(3.0) + 0.6 * adip + rng.normal(0, 0.7)), 0.5, 30)) / 100
    lat = float(rng.normal(1.0, 0.05)) * (1.0 if male else 0.93)
    leg_r = float(rng.normal(62 if male else 56, 5))
    leg_fat = sc * (0.6 if male else 1.0)

    nx, ny, nz = SHAPE
    dx, dy, dz = VOXEL_MM
    x = (np.arange(nx) - nx / 2 + 0.5) * dx  # left-right, mm
    y = (np.arange(ny) - 0.42 * ny) * dy  # anterior (negative) to posterior
    X, Y = np.meshgrid(x, y, indexing="ij")
    h_top = 0.87 * height + rng.uniform(40, 80)  # the grid starts a little above the chin
    h = h_top - (nz - 1 - np.arange(nz)) * dz  # height above the floor of each slice (last = top)
    u = h / height

    water = np.zeros(SHAPE, np.float32)
    fat = np.zeros(SHAPE, np.float32)
    counts = {"vat": 0, "asat": 0, "thigh_muscle": 0}
    mass_g = 0.0
    vox_l = dx * dy * dz / 1e6
    u_fem, u_liver_top, u_knee = 0.49, 0.70, 0.28

    def put(mask: np.ndarray, k: int, tissue: str, ff: float | None = None) -> None:
        w, f = SIGNAL[tissue]
        if ff is not None:
            w, f = 650.0 * (1 - ff), 650.0 * ff
        water[:, :, k][mask] = w
        fat[:, :, k][mask] = f

    for k in range(nz):
        uk = float(u[k])
        taken = np.zeros((nx, ny), bool)
        labels: list[tuple[np.ndarray, str]] = []
        if uk >= 0.80:  # neck and shoulders
            t = np.clip((0.87 - uk) / 0.07, 0, 1)
            a, b = lat * (55 + 110 * t), 55 + 35 * t
            outer = _ellipse(X, Y, 0, 0, a + 6, b + 6)
            inner = _ellipse(X, Y, 0, 0, a, b)
            labels += [(outer & ~inner, "fat"), (inner, "muscle")]
        elif uk >= u_fem:  # torso
            a = lat * (150 - 25 * np.sin(np.pi * (uk - 0.49) / 0.31))
            b = 95 + 20 * (0.5 + 0.5 * np.sin(np.pi * (uk - 0.55) / 0.3))
            scu = sc * (1.0 if uk < 0.72 else 0.6)
            skin = _ellipse(X, Y, 0, 0, a + scu, b + scu)
            wall = _ellipse(X, Y, 0, 0, a, b)
            cavity = _ellipse(X, Y, 0, -5, a - 18, b - 18)
            labels.append((skin & ~wall, "fat"))
            labels.append((wall & ~cavity, "muscle"))
            spine = _ellipse(X, Y, 0, b - 40, 20, 20)
            labels.append((spine, "bone"))
            if uk >= 0.72:  # thorax: lungs, heart as organ
                lungs = (_ellipse(X, Y, -0.45 * a, 0, 0.38 * a, 0.75 * b) | _ellipse(X, Y, 0.45 * a, 0, 0.38 * a, 0.75 * b))
                labels.append((cavity & lungs & ~spine, "lung"))
                labels.append((cavity & ~lungs & ~spine, "organ"))
                for side in (-1, 1):  # arms
                    arm_c = side * (a + sc + 45)
                    arm_o = _ellipse(X, Y, arm_c, 0, 42, 45)
                    arm_i = _ellipse(X, Y, arm_c, 0, 30, 33)
                    labels += [(arm_o & ~arm_i, "fat"), (arm_i, "muscle")]
            else:  # abdomen: liver on the right, bowel/visceral fat pattern
                if uk >= 0.60:
                    liver = _ellipse(X, Y, -0.35 * a, -10, 0.55 * a, 0.7 * b) & cavity
                    labels.append((liver, "liver"))
                else:
                    liver = np.zeros_like(cavity)
                pattern = np.sin(X / 17.0 + k * 0.21) * np.cos(Y / 13.0 - k * 0.17)
                vat = cavity & ~liver & ~spine & (pattern > 1 - 2 * vat_scale)
                labels.append((vat, "fat"))
                labels.append((cavity & ~liver & ~spine & ~vat, "organ"))
                if uk <= u_liver_top:
                    counts["vat"] += int(vat.sum())
                    counts["asat"] += int((skin & ~wall).sum())
        else:  # legs
            t = np.clip((uk - 0.20) / 0.29, 0, 1)
            r = leg_r * (0.55 + 0.45 * t)
            for side in (-1, 1):
                c = side * (r + leg_fat + 8)
                outer = _ellipse(X, Y, c, 0, r + leg_fat, r + leg_fat)
                mus = _ellipse(X, Y, c, 0, r, r)
                bone = _ellipse(X, Y, c, 0, 14, 14)
                labels += [(outer & ~mus, "fat"), (mus & ~bone, "muscle"), (bone, "bone")]
                if uk >= u_knee:
                    counts["thigh_muscle"] += int((mus & ~bone).sum())
        for mask, tissue in labels:
            m = mask & ~taken
            taken |= m
            if tissue == "liver":
                put(m, k, "organ", ff=liver_ff)
                n = int(m.sum())
                mass_g += n * vox_l * 1000 * DENSITY["lean"]
            else:
                put(m, k, tissue)
                n = int(m.sum())
                dens = DENSITY["fat"] if tissue == "fat" else DENSITY["lung"] if tissue == "lung" else DENSITY["lean"]
                mass_g += n * vox_l * 1000 * dens
    # bed: a band under the body, inside the posterior rows that the pipeline crops
    water[:, -20:-12, :] += 180.0
    fat[:, -20:-12, :] += 160.0
    # the parts outside the field of view: head (ellipsoid) and lower legs (cylinders to the floor)
    head_l = 4 / 3 * np.pi * 75 * 90 * (0.065 * height) / 1e6
    u_bottom = float(u[0])
    r_low = leg_r * (0.55 + 0.45 * np.clip((u_bottom - 0.20) / 0.29, 0, 1)) + leg_fat
    legs_l = 2 * np.pi * r_low**2 * 0.8 * (u_bottom * height) / 1e6
    weight = mass_g / 1000 + (head_l + legs_l) * 1.02
    sigma = 10.0
    noise = np.random.default_rng([seed, 0x2B0E])
    for v in (water, fat):
        v += sigma * noise.standard_normal(v.shape, dtype=np.float32)
        np.hypot(v, sigma * noise.standard_normal(v.shape, dtype=np.float32), out=v)
    truth = {
        "weight_kg": float(weight),
        "height_cm": height / 10,
        "vat_volume_l": counts["vat"] * vox_l,
        "asat_volume_l": counts["asat"] * vox_l,
        "liver_fat_percent": liver_ff * 100,
        "thigh_muscle_volume_l": counts["thigh_muscle"] * vox_l,
    }
    return water, fat, truth


def phantom_image(seed: int) -> tuple[np.ndarray, dict[str, float]]:
    """(mimir-v1 image (3, 256, 256) uint8, truth) of phantom ``seed``."""
    from mimir.preprocessing.projection import make_image

    water, fat, truth = phantom_volumes(seed)
    return make_image(water, fat), truth
