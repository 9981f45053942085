"""The synthetic body: parameters drawn from a seed, soft tissue maps, truth.

Coordinates
-----------
The body lives in a *body frame* measured in millimetres:

- ``h``: height above the floor (0 = soles, ``height_mm`` = vertex), superior
  positive. Patient ``z`` maps to ``h`` by a shift (full size) or a shift and
  a scale (``--small``); see :mod:`mimir.synth`.
- ``x``: patient x, right to left (patient right is negative), 0 = midline.
- ``y``: patient y, anterior to posterior (anterior is negative). The subject
  lies supine on the scanner bed whose top surface is the plane
  ``y = Y_BED``; every part of the body rests on it (``y <= Y_BED``).

Arrays built here have axis order ``(slice, row, column) = (h, y, x)``.

Shapes
------
Every structure is an ellipse per axial slice (an ellipsoid for compact
organs) whose centre and semi-axes vary smoothly (piecewise linearly in
``u = h / height``) along the body, optionally intersected with the bed's
half space or the diaphragm dome. Occupancy is soft: a ramp about ``edge`` mm
wide across the boundary, so volumes are fractional and images anti-aliased.
Structures are composited front to back: a structure painted earlier hides
what is painted later at the same place (organs over visceral fat over
abdominal wall over subcutaneous fat), so no volume is counted twice.

Truth (all computed from the drawn body, never from the image)
--------------------------------------------------------------
Volumes are the soft occupancies summed on a regular truth grid (5 mm x 5 mm
in plane, 6 mm along ``h``, voxel 0.15 mL; within 0.2 % of a 2 x 2 x 3 mm
grid) over the whole body, vertex to floor, arms included. Slabs bounded by
landmarks count their boundary slices in proportion:

- ``abdominal region``: axial slab from the top of the femoral heads
  (``h_femoral_head_top``) to the apex of the liver dome (``h_liver_top``).
- ``asat_volume_l``: torso subcutaneous fat (outside the abdominal muscle
  wall) inside the abdominal region, litres.
- ``vat_volume_l``: fat inside the abdominal cavity (inside the muscle wall,
  below the diaphragm, around the organs) in the abdominal region, litres.
- ``thigh_muscle_volume_l``: muscle of both legs between the knee joint
  centre (``h_knee``) and the top of the femoral heads, litres.
- ``liver_fat_percent``: proton-density fat fraction of liver tissue,
  ``100 * fat / (water + fat)`` of its noise-free signal (coil shading
  multiplies water and fat alike, so the image ratio equals it up to noise).
- ``weight_kg``: sum over the tissue classes fat, lean, bone and lung of
  (volume in litres) x (density in kg/L, :data:`DENSITIES`), over the whole
  drawn body: head and lower legs are part of the drawn body (head ellipsoid
  of height ``0.13 * height``, legs down to the floor), so they count too,
  even though the scanner's field of view shows only chin to knees. Mixed
  tissues (liver, marrow, breast, face) are split into classes by fixed
  proportions (:data:`TISSUES`).
- ``height_cm``: the drawn stature; the model spans the floor to the vertex,
  so it is also the model's length.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

#: Top surface of the scanner bed, body and patient frame (full size), mm.
Y_BED = 148.0
#: Thickness of the bed as drawn in the images, mm.
BED_THICKNESS = 22.0
#: Stature of the reference body the profiles below describe, mm.
REF_HEIGHT = 1750.0

#: Densities of the tissue classes, kg/L.
DENSITIES: dict[str, float] = {"fat": 0.90, "lean": 1.06, "bone": 1.85, "lung": 0.30}

#: Truth grid spacing (h, y, x), mm.
TRUTH_SPACING = (6.0, 5.0, 5.0)
#: Soft-edge width used on the truth grid, mm.
TRUTH_EDGE = 4.0

Occupancy = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Tissue:
    """Signal and composition of one tissue type.

    ``water`` and ``fat`` are noise-free Dixon signal levels (arbitrary 12-bit
    units); ``composition`` maps tissue classes (keys of :data:`DENSITIES`)
    to volume fractions summing to 1.
    """

    water: float
    fat: float
    composition: dict[str, float]


def _tissues(liver_ff: float) -> dict[str, Tissue]:
    """The tissue table; the liver's signal depends on its fat fraction (0-1)."""
    s_liver = 860.0
    return {
        "sat": Tissue(60.0, 1150.0, {"fat": 1.0}),  # torso subcutaneous fat
        "limb_fat": Tissue(60.0, 1120.0, {"fat": 1.0}),  # limbs, neck, head
        "vat": Tissue(70.0, 1080.0, {"fat": 1.0}),  # intra-abdominal fat
        "breast": Tissue(260.0, 850.0, {"fat": 0.75, "lean": 0.25}),
        "mediastinum": Tissue(380.0, 420.0, {"lean": 0.6, "fat": 0.4}),
        "muscle": Tissue(700.0, 45.0, {"lean": 1.0}),  # trunk, neck, arms
        "leg_muscle": Tissue(720.0, 50.0, {"lean": 1.0}),
        "face": Tissue(520.0, 330.0, {"lean": 0.7, "fat": 0.3}),
        "brain": Tissue(760.0, 40.0, {"lean": 1.0}),
        "liver": Tissue(s_liver * (1.0 - liver_ff), s_liver * liver_ff,
                        {"lean": 1.0 - liver_ff, "fat": liver_ff}),
        "heart": Tissue(560.0, 25.0, {"lean": 1.0}),
        "vessel": Tissue(480.0, 20.0, {"lean": 1.0}),
        "kidney": Tissue(920.0, 30.0, {"lean": 1.0}),
        "spleen": Tissue(820.0, 25.0, {"lean": 1.0}),
        "bowel": Tissue(480.0, 70.0, {"lean": 1.0}),
        "bladder": Tissue(1050.0, 10.0, {"lean": 1.0}),
        "csf": Tissue(1100.0, 10.0, {"lean": 1.0}),
        "disc": Tissue(650.0, 20.0, {"lean": 1.0}),
        "lung": Tissue(28.0, 10.0, {"lung": 1.0}),  # lungs and airways
        "red_marrow": Tissue(420.0, 520.0, {"bone": 0.35, "fat": 0.35, "lean": 0.3}),
        "yellow_marrow": Tissue(90.0, 1050.0, {"fat": 0.8, "bone": 0.1, "lean": 0.1}),
        "cortical": Tissue(25.0, 25.0, {"bone": 1.0}),
    }


#: Tissue names, fixed order (truth profiles use it).
TISSUE_NAMES: tuple[str, ...] = tuple(_tissues(0.05))
#: Same as ``_tissues(ff)`` with a placeholder liver; composition is what tests need.
TISSUES: dict[str, Tissue] = _tissues(0.05)


@dataclass
class BodyParams:
    """Everything drawn from the seed. Lengths in mm, ``liver_ff`` in 0-1."""

    seed: int
    sex: str  # "M" or "F"
    age: int
    height_mm: float
    frame: float  # lateral skeletal scale (1 = reference male)
    muscle: float  # muscle cross-section scale (1 = reference male)
    sc_mm: float  # abdominal subcutaneous fat thickness
    leg_fat_mm: float  # thigh subcutaneous fat thickness
    arm_fat_mm: float
    visceral: float  # 0-1 visceral load
    liver_ff: float
    breast_mm: float  # 0 for men
    vat_waves: list[tuple[float, float, float, float]] = field(default_factory=list)  # kx, ky, kz (rad/mm), phase
    disc_phase: float = 0.0


def _sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def draw_params(seed: int) -> BodyParams:
    """Draw a body from ``seed`` (deterministic; independent of variant/size)."""
    rng = np.random.default_rng([int(seed), 0xB0D1])
    male = bool(rng.random() < 0.5)
    age = int(rng.integers(45, 81))
    height_cm = float(np.clip(rng.normal(176.0 if male else 163.0, 6.8), 150.0, 195.0))
    adip = float(np.clip(rng.normal(), -2.2, 2.2))  # latent adiposity
    frame = float(np.clip(rng.normal(1.03, 0.04), 0.93, 1.13)) * (1.0 if male else 0.94)
    muscle = float(np.clip(rng.normal(1.0, 0.08) + 0.05 * adip, 0.8, 1.25)) * (1.0 if male else 0.9)
    sc = math.exp(math.log(24.0 if male else 33.0) + 0.36 * adip + rng.normal(0.0, 0.15))
    sc = float(np.clip(sc, 6.0, 48.0))
    visceral = _sigmoid(math.log(3.0 if male else 1.2) + 1.0 * adip + 0.6 * rng.normal() + 0.03 * (age - 60))
    leg_fat = sc * (0.55 if male else 0.95) * math.exp(rng.normal(0.0, 0.12))
    arm_fat = sc * (0.45 if male else 0.65)
    log_lf = math.log(2.6) + 0.6 * adip + 0.6 * (visceral - 0.4) + rng.normal(0.0, 0.8)
    liver_ff = float(np.clip(math.exp(log_lf), 0.5, 30.0)) / 100.0
    breast = 0.0 if male else float(np.clip(30.0 + 14.0 * adip + rng.normal(0, 5), 12.0, 70.0))
    waves = []
    for _ in range(5):  # oblique plane waves, wavelength 30-70 mm, for the visceral fat pattern
        direction = rng.normal(size=3)
        k = direction / np.linalg.norm(direction) * (2 * math.pi / rng.uniform(30.0, 70.0))
        waves.append((float(k[0]), float(k[1]), float(k[2]), float(rng.uniform(0, 2 * math.pi))))
    return BodyParams(
        seed=int(seed), sex="M" if male else "F", age=age, height_mm=height_cm * 10.0,
        frame=frame, muscle=muscle, sc_mm=sc, leg_fat_mm=leg_fat, arm_fat_mm=arm_fat,
        visceral=float(visceral), liver_ff=liver_ff, breast_mm=breast, vat_waves=waves,
        disc_phase=float(rng.uniform(0.0, 1.0)),
    )


# ---------------------------------------------------------------------------
# Profiles of the reference body along u = h / height (ascending u).

_U_T = [0.455, 0.47, 0.485, 0.50, 0.51, 0.54, 0.57, 0.61, 0.65, 0.69, 0.73, 0.77, 0.79, 0.805, 0.818, 0.83,
        0.842, 0.852]
_AW = {  # torso muscle-wall semi-axis, lateral
    "M": [15, 60, 122, 152, 160, 156, 146, 144, 148, 148, 152, 155, 155, 148, 130, 100, 64, 30],
    "F": [15, 65, 132, 164, 172, 162, 142, 136, 138, 138, 142, 144, 143, 138, 120, 94, 60, 28],
}
_BW = [15, 55, 92, 102, 104, 102, 94, 92, 96, 104, 112, 114, 112, 104, 92, 78, 60, 30]  # AP
_U_SC = [0.452, 0.48, 0.51, 0.54, 0.58, 0.62, 0.66, 0.70, 0.76, 0.80, 0.83, 0.85]
_PSC = {
    "M": [0.65, 0.7, 0.75, 0.9, 1.0, 1.0, 0.85, 0.65, 0.55, 0.45, 0.35, 0.3],
    "F": [1.0, 1.25, 1.35, 1.2, 1.0, 0.9, 0.75, 0.6, 0.55, 0.45, 0.35, 0.3],
}
_U_TW = [0.452, 0.49, 0.52, 0.56, 0.62, 0.69, 0.75, 0.81, 0.85]
_TW = [30, 40, 34, 14, 13, 16, 22, 28, 28]  # wall thickness (muscle + ribs)
_U_SP = [0.47, 0.49, 0.52, 0.56, 0.60, 0.66, 0.72, 0.78, 0.835]
_RVB = [4, 15, 20, 22, 22, 18, 15, 13, 10]  # vertebral body radius
_DSP = [20, 30, 44, 58, 62, 56, 50, 46, 44]  # posterior wall surface to vertebral centre
_U_L = [0.0, 0.03, 0.07, 0.12, 0.17, 0.21, 0.24, 0.27, 0.29, 0.31, 0.34, 0.38, 0.42, 0.46, 0.50, 0.53, 0.56]
_RL = [18, 20, 22, 31, 43, 51, 49, 45, 48, 52, 60, 68, 76, 82, 84, 72, 0]  # leg muscle radius
_PLF = [0.3, 0.3, 0.35, 0.5, 0.6, 0.65, 0.65, 0.7, 0.75, 0.8, 0.9, 1.0, 1.0, 1.0, 1.0, 0.9, 0.5]
_U_A = [0.38, 0.40, 0.45, 0.485, 0.52, 0.60, 0.63, 0.66, 0.74, 0.80, 0.815, 0.828]
_RA = [0, 14, 18, 17, 24, 30, 28, 33, 40, 44, 38, 0]  # arm muscle radius

# Landmarks, fraction of height.
U_CHIN = 0.870
U_HEAD = 0.935
U_LIVER_TOP = 0.692  # right diaphragm dome apex
U_DOME_LEFT = 0.682
U_FEMORAL_HEAD = 0.512
U_KNEE = 0.285
U_HEART = 0.725


def _interp(u: np.ndarray, up: list[float], vals: list[float]) -> np.ndarray:
    return np.interp(u, up, vals).astype(np.float32)


def _soft(v: np.ndarray, width: float) -> np.ndarray:
    """Ramp from 0 to 1 over ``width`` (same units as ``v``), centred on 0."""
    out = v * np.float32(1.0 / width)
    out += np.float32(0.5)
    np.clip(out, 0.0, 1.0, out=out)
    return out


@dataclass
class Structure:
    """One painted shape: tissue name, bounding box (mm, body frame), occupancy."""

    tissue: str
    h0: float
    h1: float
    y0: float
    y1: float
    x0: float
    x1: float
    occ: Occupancy


class Canvas:
    """A regular grid (body frame) that structures are composited onto.

    ``h``, ``y``, ``x`` are 1-D coordinate arrays (mm); ``y`` and ``x`` must be
    ascending, ``h`` monotonic. Arrays have shape ``(len(h), len(y), len(x))``.
    ``render=True`` accumulates water and fat signal; ``truth=True`` sums the
    painted fraction per tissue and slice (``profiles[tissue]``, shape
    ``(len(h),)``, in voxels). ``layers`` maps a structure to the name of a
    layer (or ``None``): each named layer accumulates the painted fraction of
    its structures, ``layers_out[name]`` (shape of the grid).
    """

    def __init__(self, h: np.ndarray, y: np.ndarray, x: np.ndarray, edge: float,
                 render: bool = True, truth: bool = False,
                 layers: Callable[[Structure], str | None] | None = None) -> None:
        self.h = np.asarray(h, dtype=np.float32)
        self.y = np.asarray(y, dtype=np.float32)
        self.x = np.asarray(x, dtype=np.float32)
        self.edge = float(edge)
        shape = (self.h.size, self.y.size, self.x.size)
        self.vis = np.ones(shape, dtype=np.float32)
        self.water = np.zeros(shape, dtype=np.float32) if render else None
        self.fat = np.zeros(shape, dtype=np.float32) if render else None
        self.profiles: dict[str, np.ndarray] | None = (
            {t: np.zeros(self.h.size) for t in TISSUE_NAMES} if truth else None
        )
        self.layers = layers
        self.layers_out: dict[str, np.ndarray] = {}

    def paint(self, s: Structure, tissue: Tissue) -> None:
        """Composite ``s`` under everything painted before it."""
        zi = np.flatnonzero((self.h >= s.h0) & (self.h <= s.h1))
        if zi.size == 0:
            return
        z0, z1 = int(zi[0]), int(zi[-1]) + 1
        y0, y1 = np.searchsorted(self.y, s.y0, "left"), np.searchsorted(self.y, s.y1, "right")
        x0, x1 = np.searchsorted(self.x, s.x0, "left"), np.searchsorted(self.x, s.x1, "right")
        if y1 <= y0 or x1 <= x0:
            return
        hh = self.h[z0:z1, None, None]
        yy = self.y[None, y0:y1, None]
        xx = self.x[None, None, x0:x1]
        blk = (slice(z0, z1), slice(y0, y1), slice(x0, x1))
        vis = self.vis[blk]
        frac = np.broadcast_to(s.occ(hh, yy, xx), vis.shape) * vis
        vis -= frac
        if self.water is not None and self.fat is not None:
            if tissue.water:
                self.water[blk] += frac * np.float32(tissue.water)
            if tissue.fat:
                self.fat[blk] += frac * np.float32(tissue.fat)
        if self.profiles is not None:
            self.profiles[s.tissue][z0:z1] += frac.sum(axis=(1, 2), dtype=np.float64)
        name = self.layers(s) if self.layers is not None else None
        if name is not None:
            layer = self.layers_out.setdefault(name, np.zeros(self.vis.shape, dtype=np.float32))
            layer[blk] += frac


def _ellipse(dx: np.ndarray, dy: np.ndarray, a: np.ndarray, b: np.ndarray, edge: float,
             dz: np.ndarray | float = 0.0) -> np.ndarray:
    """Soft occupancy of the ellipse (ellipsoid if ``dz`` given) ``(dx/a)^2 + (dy/b)^2 (+ dz^2) <= 1``.

    ``dx``, ``dy`` are offsets from the centre in mm (broadcastable), ``a``,
    ``b`` semi-axes in mm, ``dz`` an already normalised third offset. The edge
    ramp uses ``1 - q ~ 2 d / r`` near the boundary with ``r = sqrt(a b)``.
    """
    a = np.maximum(a, np.float32(1e-3))
    b = np.maximum(b, np.float32(1e-3))
    q = (dx / a) ** 2
    if not np.isscalar(dz):
        q = q + dz**2
    q = q + (dy / b) ** 2
    k = np.sqrt(a * b) * np.float32(0.5 / edge)
    occ = (np.float32(0.5) + k) - k * q
    np.clip(occ, 0.0, 1.0, out=occ)
    return occ


class Body:
    """A drawn body: geometry functions of ``h`` and the list of structures."""

    def __init__(self, params: BodyParams) -> None:
        p = params
        self.p = p
        self.H = p.height_mm
        scale = self.H / REF_HEIGHT
        self.sx = p.frame * scale**0.75  # lateral scale
        self.sy = p.frame * scale**0.6  # AP scale
        self.sm = math.sqrt(p.muscle)  # muscle radius scale
        self.bulge = 45.0 * p.visceral**1.5  # anterior abdominal bulge, mm
        self.vat_frac = 0.08 + 0.55 * p.visceral
        self.tissues = _tissues(p.liver_ff)
        self.h_fh = U_FEMORAL_HEAD * self.H
        self.r_fh = 24.0 * self.sx
        self.h_femoral_head_top = self.h_fh + self.r_fh
        self.h_liver_top = U_LIVER_TOP * self.H
        self.h_knee = U_KNEE * self.H
        self.h_chin = U_CHIN * self.H
        # torso outer half width -> arm position
        us = np.linspace(0.64, 0.80, 33, dtype=np.float32)
        tor = self.torso(us * self.H)
        self.x_arm = float(tor["ao"].max())  # inner edge of the arms: beside the chest
        self.structures = self._build()

    # -- geometry ------------------------------------------------------------
    def torso(self, h: np.ndarray) -> dict[str, np.ndarray]:
        """Per-slice torso geometry (mm), arrays shaped like ``h``.

        ``aw, bw``: muscle-wall semi-axes; ``yw``: wall centre y; ``ao, bo, yo``:
        outer (skin) ellipse; ``ac, bc``: cavity semi-axes (centre ``yw``);
        ``ysp``, ``rvb``: vertebral body centre y and radius.
        """
        p = self.p
        u = np.asarray(h, dtype=np.float32) / np.float32(self.H)
        aw = _interp(u, _U_T, _AW[p.sex]) * np.float32(self.sx * p.muscle**0.2)
        bw = _interp(u, _U_T, _BW) * np.float32(self.sy * p.muscle**0.2)
        bump = np.exp(-(((u - 0.59) / 0.075) ** 2)).astype(np.float32)
        bw = bw + np.float32(self.bulge) * bump
        aw = aw + np.float32(0.8 * self.bulge) * bump
        t = _interp(u, _U_SC, _PSC[p.sex]) * np.float32(p.sc_mm)
        t_ant, t_lat, t_post = 1.1 * t, 1.35 * t, 0.5 * t
        ao = aw + t_lat
        bo = bw + (t_ant + t_post) / 2
        yo = np.float32(Y_BED) - np.float32(0.97) * bo
        yw = yo + (t_ant - t_post) / 2
        tw = _interp(u, _U_TW, _TW) * np.float32(self.sx)
        taper = np.sqrt(np.clip((0.813 - u) / 0.025, 0, 1) * np.clip((u - 0.475) / 0.015, 0, 1))
        ac = (aw - tw) * taper
        bc = (bw - 0.8 * tw) * taper
        rvb = _interp(u, _U_SP, _RVB) * np.float32(self.sx)
        ysp = yw + bw - _interp(u, _U_SP, _DSP) * np.float32(self.sy)
        return {"aw": aw, "bw": bw, "yw": yw, "ao": ao, "bo": bo, "yo": yo, "ac": ac,
                "bc": bc, "rvb": rvb, "ysp": ysp, "u": u}

    def torso_at(self, h: float) -> dict[str, float]:
        """:meth:`torso` at one height, as floats."""
        return {k: float(v.reshape(-1)[0]) for k, v in self.torso(np.array([h], np.float32)).items()}

    def dome(self, g: dict[str, np.ndarray], yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        """Height (mm) of the diaphragm surface at (y, x) for the slices of ``g``."""
        ac, bc, yw = g["ac"] + np.float32(1.0), g["bc"] + np.float32(1.0), g["yw"]
        c = np.float32(0.04 * self.H)
        qy = c * ((yy - yw) / bc) ** 2
        right = np.float32(U_LIVER_TOP * self.H) - c * ((xx + 0.45 * ac) / (0.75 * ac)) ** 2
        left = np.float32(U_DOME_LEFT * self.H) - c * ((xx - 0.45 * ac) / (0.75 * ac)) ** 2
        return np.maximum(right, left) - qy

    def legs(self, h: np.ndarray) -> dict[str, np.ndarray]:
        """Per-slice leg geometry (mm): muscle radius ``rm``, fat ``t``, centre |x| ``xc``, ``yc``."""
        u = np.asarray(h, dtype=np.float32) / np.float32(self.H)
        rm = _interp(u, _U_L, _RL) * np.float32(self.sm * self.sx)
        t = _interp(u, _U_L, _PLF) * np.float32(self.p.leg_fat_mm)
        t = np.where(rm > 0, t, 0).astype(np.float32) * np.clip(rm / 20.0, 0, 1)
        ro = rm + t
        xc = np.maximum(ro + 3.0, 55.0 * self.sx).astype(np.float32)
        yc = np.float32(Y_BED) - np.float32(0.97) * (0.93 * rm + t)
        return {"rm": rm, "t": t, "xc": xc, "yc": yc}

    def arms(self, h: np.ndarray) -> dict[str, np.ndarray]:
        """Per-slice arm geometry (mm): muscle radius ``ra``, fat ``t``, hand flattening
        ``fx``, ``fy``, centre ``|x|`` ``xc`` and ``yc``. The arms hang beside the chest and
        move out where the waist or hips are wider."""
        u = np.asarray(h, dtype=np.float32) / np.float32(self.H)
        ra = _interp(u, _U_A, _RA) * np.float32(self.sm * self.sx)
        hand = (u < 0.485).astype(np.float32)
        t = np.float32(self.p.arm_fat_mm) * (1.0 - 0.7 * hand) * np.clip(ra / 15.0, 0, 1)
        fx = 1.0 + 0.4 * hand
        fy = 1.0 - 0.45 * hand
        yc = np.float32(Y_BED) - np.float32(0.97) * (ra * fy + t)
        tor = self.torso(h)
        xc = np.maximum(np.float32(self.x_arm), tor["ao"]) + (ra * fx + t) + np.float32(3.0)
        return {"ra": ra, "t": t, "fx": fx, "fy": fy, "yc": yc, "xc": xc}

    # -- structures ------------------------------------------------------------
    def _span(self, h0: float, h1: float,
              fn: Callable[[dict[str, np.ndarray]], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
              geometry: str = "torso") -> tuple[float, float, float, float]:
        """Bounding box ``(y0, y1, x0, x1)`` of a shape over ``[h0, h1]``.

        ``fn`` maps per-slice geometry (:meth:`torso`, :meth:`legs` or
        :meth:`arms`, sampled every 5 mm) to arrays ``(y0, y1, x0, x1)``;
        the box is their extremes padded by 8 mm (room for the soft edge).
        """
        hs = np.linspace(h0, h1, max(int((h1 - h0) / 5.0), 2) + 1, dtype=np.float32)
        g = getattr(self, geometry)(hs)
        y0, y1, x0, x1 = (np.broadcast_to(np.asarray(v, np.float32), hs.shape) for v in fn(g))
        pad = 8.0
        return (float(y0.min()) - pad, min(float(y1.max()) + pad, Y_BED + 1.0),
                float(x0.min()) - pad, float(x1.max()) + pad)

    def _build(self) -> list[Structure]:  # noqa: C901  (a flat list of shapes, in painting order)
        H, p, sx, sy = self.H, self.p, self.sx, self.sy
        S: list[Structure] = []
        yb = Y_BED

        def add(tissue: str, h0: float, h1: float, occ: Occupancy,
                box: tuple[float, float, float, float]) -> None:
            S.append(Structure(tissue, h0, h1, *box, occ))

        def edge() -> float:
            return self._edge

        # ---- head and neck -------------------------------------------------
        an, bn = 52.0 * sx * self.sm**0.5, 55.0 * sy * self.sm**0.5
        tn = min(0.35 * p.sc_mm + 2.0, 25.0)
        yn = yb - 30.0 - (bn + tn)
        hc, ah, bh, ch = U_HEAD * H, 78.0 * sx**0.5, 98.0 * sy**0.5, 0.065 * H
        yh = yn - 12.0
        h_skull_base = 0.905 * H

        def head(shrink: float, below: float | None = None, above: float | None = None) -> Occupancy:
            def f(hh: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
                dz = (hh - np.float32(hc)) / np.float32(ch - shrink)
                occ = _ellipse(xx, yy - np.float32(yh), np.float32(ah - shrink), np.float32(bh - shrink), edge(), dz)
                if below is not None:
                    occ = occ * _soft(np.float32(below) - hh, edge())
                if above is not None:
                    occ = occ * _soft(hh - np.float32(above), edge())
                return occ
            return f

        hbox = (yh - bh - 8, yh + bh + 8, -ah - 8, ah + 8)
        add("brain", h_skull_base - 10, H, head(12.0, above=h_skull_base), hbox)
        add("face", hc - ch, h_skull_base + 10, head(6.0, below=h_skull_base), hbox)
        add("cortical", hc - ch, H, head(6.0), hbox)
        add("limb_fat", hc - ch - 5, H, head(0.0), hbox)

        un0, un1 = 0.80 * H, 0.895 * H

        def neck_shape(da: float, db: float, cy: float = 0.0, r: float | None = None) -> Occupancy:
            def f(hh: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
                a = np.float32(r if r is not None else an + da)
                b = np.float32(r if r is not None else bn + db)
                occ = _ellipse(xx, yy - np.float32(yn + cy), a, b, edge())
                return occ * _soft(np.minimum(hh - np.float32(un0), np.float32(un1) - hh), 8.0)
            return f

        nbox = (yn - bn - tn - 8, yn + bn + tn + 8, -an - tn - 8, an + tn + 8)
        rvn = 10.0 * sx
        add("csf", 0.835 * H, un1, neck_shape(0, 0, 0.25 * bn + rvn + 6, r=5.0), nbox)
        add("red_marrow", 0.835 * H, un1, neck_shape(0, 0, 0.25 * bn, r=rvn), nbox)
        add("lung", 0.815 * H, un1, neck_shape(0, 0, -0.45 * bn, r=8.0), nbox)
        add("muscle", un0, un1, neck_shape(0, 0), nbox)

        # ---- torso interior ----------------------------------------------------
        ht0, ht1 = 0.452 * H, 0.85 * H
        period = 0.0165 * H  # vertebral level height

        def spine_part(kind: str) -> Occupancy:
            def f(hh: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
                g = self.torso(hh)
                r = g["rvb"]
                if kind == "canal":
                    rc = 0.4 * r + 3.0
                    return _ellipse(xx, yy - (g["ysp"] + r + rc + 2.0), rc, rc, edge())
                if kind == "posterior":
                    return _ellipse(xx, yy - (g["ysp"] + 1.9 * r + 14.0), 0.8 * r, 0.5 * r + 4.0, edge())
                if kind == "paraspinal":
                    dy = yy - (g["ysp"] + 1.2 * r + 14.0)
                    a, b = 0.8 * r + 14.0, 0.9 * r + 10.0
                    return np.maximum(_ellipse(xx - (r + 14.0), dy, a, b, edge()),
                                      _ellipse(xx + (r + 14.0), dy, a, b, edge()))
                body = _ellipse(xx, yy - g["ysp"], r, 0.85 * r, edge())
                frac = np.mod((hh - np.float32(p.disc_phase * period)) / np.float32(period), 1.0)
                disc = _soft(np.float32(0.11) - np.abs(frac - np.float32(0.5)), edge() / period)
                return body * (disc if kind == "disc" else 1.0 - disc)
            return f

        def sbox(h0: float, h1: float, ext: float) -> tuple[float, float, float, float]:
            return self._span(h0, h1, lambda g: (g["ysp"] - g["rvb"], g["ysp"] + ext * g["rvb"] + 40.0,
                                                  -2.2 * g["rvb"] - 30.0, 2.2 * g["rvb"] + 30.0))

        add("csf", 0.49 * H, 0.835 * H, spine_part("canal"), sbox(0.49 * H, 0.835 * H, 2.0))
        add("disc", 0.50 * H, 0.835 * H, spine_part("disc"), sbox(0.50 * H, 0.835 * H, 1.0))
        add("red_marrow", 0.47 * H, 0.835 * H, spine_part("marrow"), sbox(0.47 * H, 0.835 * H, 1.0))
        add("red_marrow", 0.50 * H, 0.83 * H, spine_part("posterior"), sbox(0.50 * H, 0.83 * H, 2.5))

        def aorta(hh: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
            g = self.torso(hh)
            r = np.float32(11.0 * sx)
            return _ellipse(xx - (0.3 * g["rvb"] + 8.0), yy - (g["ysp"] - g["rvb"] - 13.0), r, r, edge())

        add("vessel", 0.55 * H, 0.77 * H, aorta,
            self._span(0.55 * H, 0.77 * H,
                       lambda g: (g["ysp"] - g["rvb"] - 30.0, g["ysp"], 0 * g["rvb"], g["rvb"] + 25.0)))

        def trachea(hh: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
            g = self.torso(hh)
            r = np.float32(8.0)
            return _ellipse(xx, yy - (g["yw"] - 0.35 * g["bc"]), r, r, edge())

        add("lung", 0.75 * H, 0.815 * H, trachea,
            self._span(0.75 * H, 0.815 * H, lambda g: (g["yw"] - 0.35 * g["bc"] - 10, g["yw"] - 0.35 * g["bc"] + 10,
                                                        -10 + 0 * g["bc"], 10 + 0 * g["bc"])))

        # compact organs: ellipsoids placed from the torso geometry at their centre height
        def add_organ(tissue: str, uc: float, cx: Callable[[dict[str, float]], float],
                      cy: Callable[[dict[str, float]], float], a: Callable[[dict[str, float]], float],
                      b: Callable[[dict[str, float]], float], c: float, dome: bool = False) -> None:
            g0 = self.torso_at(uc * H)
            X, Y, A, B, hc_ = cx(g0), cy(g0), a(g0), b(g0), uc * H

            def f(hh: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
                dz = (hh - np.float32(hc_)) / np.float32(c)
                occ = _ellipse(xx - np.float32(X), yy - np.float32(Y), np.float32(A), np.float32(B), edge(), dz)
                if dome:
                    occ = occ * _soft(self.dome(self.torso(hh), yy, xx) - hh, edge())
                return occ

            add(tissue, hc_ - c, hc_ + c, f, (Y - B - 8, Y + B + 8, X - A - 8, X + A + 8))

        add_organ("heart", U_HEART, lambda g: 0.14 * g["ac"], lambda g: g["yw"] - 0.2 * g["bc"],
                  lambda g: 0.36 * g["ac"], lambda g: 0.5 * g["bc"], 0.042 * H)
        add_organ("spleen", 0.655, lambda g: 0.62 * g["ac"], lambda g: g["yw"] + 0.38 * g["bc"],
                  lambda g: 0.22 * g["ac"], lambda g: 0.36 * g["bc"], 0.028 * H, dome=True)
        for side, uc in ((-1.0, 0.612), (1.0, 0.622)):
            add_organ("kidney", uc, lambda g, s=side: s * (g["rvb"] + 42.0 * sx), lambda g: g["ysp"],
                      lambda g: 26.0 * sx, lambda g: 22.0 * sy, 0.032 * H)
        add_organ("bladder", 0.502, lambda g: 0.0, lambda g: g["yw"] - 0.3 * g["bc"],
                  lambda g: 0.3 * g["ac"], lambda g: 0.36 * g["bc"], 0.02 * H)

        def liver(hh: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
            g = self.torso(hh)
            ac, bc = g["ac"] + 1.0, g["bc"] + 1.0
            dy = yy - (g["yw"] + 0.02 * bc)
            occ = _ellipse(xx + 0.28 * ac, dy, 0.68 * ac, 0.86 * bc, edge())
            # inferior surface: lowest under the right lobe, rising medially and to the left
            bottom = np.float32(0.588 * H) + np.float32(0.035 * H) * ((xx / ac + 0.55) / 0.9) ** 2 \
                - np.float32(0.008 * H) * (dy / bc)
            occ = occ * _soft(hh - bottom, edge())
            return occ * _soft(self.dome(g, yy, xx) - hh, edge())

        add("liver", 0.57 * H, 0.70 * H, liver,
            self._span(0.57 * H, 0.70 * H,
                       lambda g: (g["yw"] - 0.9 * g["bc"], g["yw"] + 0.9 * g["bc"], -g["ac"], 0.45 * g["ac"])))

        def lungs(hh: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
            g = self.torso(hh)
            ac, bc = g["ac"], g["bc"]
            dy = yy - (g["yw"] + 0.04 * bc)
            apex = np.sqrt(np.clip((np.float32(0.812) - g["u"]) / np.float32(0.07), 0, 1))
            al, bl = 0.45 * ac * apex, 0.9 * bc * np.sqrt(apex)
            xl = 0.53 * ac + 0.1 * ac * (1 - apex)
            occ = np.maximum(_ellipse(xx - xl, dy, al, bl, edge()), _ellipse(xx + xl, dy, al, bl, edge()))
            return occ * _soft(hh - self.dome(g, yy, xx), edge())

        cav = lambda g: (g["yw"] - g["bc"], g["yw"] + g["bc"], -g["ac"], g["ac"])  # noqa: E731
        add("lung", 0.63 * H, 0.815 * H, lungs, self._span(0.63 * H, 0.815 * H, cav))

        # pelvis: iliac wings, femoral heads and greater trochanters
        def iliac(hh: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
            g = self.torso(hh)
            dy = yy - (g["yw"] + 0.3 * g["bw"])
            u = g["u"]
            taper = np.sqrt(np.clip((0.59 - u) / 0.02, 0, 1) * np.clip((u - 0.525) / 0.01, 0, 1))
            a, b = 0.2 * g["aw"] * taper, np.float32(13.0 * sy)
            return np.maximum(_ellipse(xx - 0.7 * g["aw"], dy, a, b, edge()),
                              _ellipse(xx + 0.7 * g["aw"], dy, a, b, edge()))

        add("red_marrow", 0.52 * H, 0.595 * H, iliac,
            self._span(0.52 * H, 0.595 * H, lambda g: (g["yw"] + 0.3 * g["bw"] - 15, g["yw"] + 0.3 * g["bw"] + 15,
                                                        -0.9 * g["aw"], 0.9 * g["aw"])))
        g_fh = self.torso_at(self.h_fh)
        self.x_fh = 0.6 * g_fh["aw"]
        y_fh = g_fh["yw"]
        for side in (-1.0, 1.0):
            add("red_marrow", self.h_fh - self.r_fh, self.h_fh + self.r_fh,
                self._ball(side * self.x_fh, y_fh, self.h_fh, self.r_fh, self.r_fh, self.r_fh),
                (y_fh - self.r_fh - 8, y_fh + self.r_fh + 8,
                 side * self.x_fh - self.r_fh - 8, side * self.x_fh + self.r_fh + 8))
            xt, rt = side * 0.72 * g_fh["aw"], 22.0 * sx
            add("red_marrow", 0.49 * H, 0.515 * H, self._ball(xt, y_fh, 0.503 * H, rt, 22 * sy, 0.012 * H),
                (y_fh - rt - 8, y_fh + rt + 8, xt - rt - 8, xt + rt + 8))

        def psoas(hh: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
            g = self.torso(hh)
            r = _interp(g["u"], [0.49, 0.53, 0.62, 0.64], [14, 24, 8, 0]) * np.float32(self.sx * self.sm)
            dx = g["rvb"] + 0.8 * r + 4.0
            dy = yy - (g["ysp"] - 2.0)
            return np.maximum(_ellipse(xx - dx, dy, r, r, edge()), _ellipse(xx + dx, dy, r, r, edge()))

        add("muscle", 0.49 * H, 0.64 * H, psoas,
            self._span(0.49 * H, 0.64 * H, lambda g: (g["ysp"] - 40, g["ysp"] + 40, -g["rvb"] - 70, g["rvb"] + 70)))
        add("muscle", 0.50 * H, 0.835 * H, spine_part("paraspinal"), sbox(0.50 * H, 0.835 * H, 3.0))

        # cavity contents: mediastinum above the dome, visceral fat and bowel below
        def cavity(kind: str) -> Occupancy:
            thr = math.sqrt(max(1.0 - self.vat_frac, 0.0))

            def f(hh: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
                g = self.torso(hh)
                ac, bc = np.maximum(g["ac"], 1e-3), np.maximum(g["bc"], 1e-3)
                dy = yy - g["yw"]
                occ = _ellipse(xx, dy, ac, bc, edge())
                d = self.dome(g, yy, xx) - hh
                if kind == "mediastinum":
                    return occ * _soft(-d, edge())
                occ = occ * _soft(d, edge())
                if kind == "bowel":
                    return occ
                rho = np.sqrt((xx / ac) ** 2 + (dy / bc) ** 2)
                return occ * _soft(rho + np.float32(0.13) * self._waves(hh, yy, xx) - np.float32(thr), 0.05)
            return f

        add("mediastinum", 0.64 * H, 0.815 * H, cavity("mediastinum"), self._span(0.64 * H, 0.815 * H, cav))
        add("vat", 0.47 * H, 0.70 * H, cavity("vat"), self._span(0.47 * H, 0.70 * H, cav))
        add("bowel", 0.47 * H, 0.70 * H, cavity("bowel"), self._span(0.47 * H, 0.70 * H, cav))

        # ---- legs: bones and muscle above the torso wall, fat below the skin ----
        leg_box = lambda g: (g["yc"] - g["rm"] - g["t"], g["yc"] + g["rm"] + g["t"],  # noqa: E731
                             g["xc"] - g["rm"] - g["t"], g["xc"] + g["rm"] + g["t"])
        lbox = self._span(0.0, 0.56 * H, leg_box, "legs")

        def mirror(box: tuple[float, float, float, float], side: float) -> tuple[float, float, float, float]:
            return box if side > 0 else (box[0], box[1], -box[3], -box[2])

        for side in (-1.0, 1.0):
            add("yellow_marrow", 0.06 * H, 0.50 * H, self._long_bone(side, "marrow"), mirror(lbox, side))
            add("cortical", 0.04 * H, 0.50 * H, self._long_bone(side, "cortex"), mirror(lbox, side))
            add("red_marrow", 0.28 * H, 0.32 * H, self._patella(side), mirror(lbox, side))
            add("leg_muscle", 0.0, 0.56 * H, self._leg(side, fat=False), mirror(lbox, side))

        # ---- torso wall and skin, then everything that only shows outside it ----
        def wall(outer: bool) -> Occupancy:
            def f(hh: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
                g = self.torso(hh)
                if outer:
                    occ = _ellipse(xx, yy - g["yo"], g["ao"], g["bo"], edge())
                else:
                    occ = _ellipse(xx, yy - g["yw"], g["aw"], g["bw"], edge())
                return occ * _soft(np.float32(yb) - yy, edge())
            return f

        obox = self._span(ht0, ht1, lambda g: (g["yo"] - g["bo"], g["yo"] + g["bo"], -g["ao"], g["ao"]))
        add("muscle", ht0, ht1, wall(False), obox)
        add("sat", ht0, ht1, wall(True), obox)
        add("limb_fat", un0, un1, neck_shape(tn, tn), nbox)
        if p.breast_mm > 0:
            add("breast", 0.68 * H, 0.78 * H, self._breasts(), (obox[0] - 90, obox[1], obox[2], obox[3]))
        for side in (-1.0, 1.0):
            add("limb_fat", 0.0, 0.56 * H, self._leg(side, fat=True), mirror(lbox, side))

        # ---- arms -----------------------------------------------------------
        abox = self._span(0.38 * H, 0.83 * H,
                          lambda g: (g["yc"] - 2 * g["ra"] - g["t"], g["yc"] + g["ra"] + g["t"],
                                     g["xc"] - 2 * g["ra"] - g["t"], g["xc"] + 2 * g["ra"] + g["t"]), "arms")
        for side in (-1.0, 1.0):
            add("yellow_marrow", 0.50 * H, 0.80 * H, self._arm(side, "bone"), mirror(abox, side))
            add("muscle", 0.38 * H, 0.83 * H, self._arm(side, "muscle"), mirror(abox, side))
            add("limb_fat", 0.38 * H, 0.83 * H, self._arm(side, "fat"), mirror(abox, side))
        return S

    # -- shape helpers -------------------------------------------------------
    _edge: float = 2.0

    def _waves(self, hh: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        """Smooth seeded pattern, about unit variance: a sum of oblique plane waves."""
        n: np.ndarray | float = 0.0
        for kx, ky, kz, ph in self.p.vat_waves:
            arg = (np.float32(kz) * hh + np.float32(ph)) + np.float32(ky) * yy
            arg = arg + np.float32(kx) * xx
            n = n + np.sin(arg, out=arg)
        return np.asarray(n, np.float32) * np.float32(math.sqrt(2.0 / len(self.p.vat_waves)))

    def _ball(self, cx: float, cy: float, ch: float, a: float, b: float, c: float) -> Occupancy:
        def f(hh: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
            return _ellipse(xx - np.float32(cx), yy - np.float32(cy), np.float32(a), np.float32(b),
                            self._edge, (hh - np.float32(ch)) / np.float32(c))
        return f

    def _leg(self, side: float, fat: bool) -> Occupancy:
        def f(hh: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
            g = self.legs(hh)
            rm, t = g["rm"], g["t"]
            a, b = (rm + t, 0.93 * rm + t) if fat else (rm, 0.93 * rm)
            return _ellipse(xx - side * g["xc"], yy - g["yc"], a, b, self._edge)
        return f

    def _long_bone(self, side: float, part: str) -> Occupancy:
        """Femur (neck to condyles) and tibia; ``part`` is "marrow" or "cortex"."""
        H, sx = self.H, self.sx
        grow = 0.0 if part == "marrow" else 4.0
        x_knee = float(self.legs(np.array([U_KNEE * H], np.float32))["xc"][0])
        x_top = 0.72 * self.x_fh / 0.6

        def f(hh: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
            g = self.legs(hh)
            u = hh / np.float32(H)
            w = np.clip((u - np.float32(U_KNEE)) / np.float32(0.50 - U_KNEE), 0, 1)
            xc = np.where(u < U_KNEE, g["xc"], (1 - w) * x_knee + w * x_top) * np.float32(side)
            yc = g["yc"] - np.float32(0.1) * g["rm"]
            r = _interp(u, [0.04, 0.06, 0.25, 0.265, 0.275, 0.285, 0.31, 0.33, 0.48, 0.50],
                        [0, 7, 8, 26, 28, 16, 30, 10, 9, 0]) * np.float32(sx)
            return _ellipse(xx - xc, yy - yc, r + grow, 0.85 * r + grow, self._edge)
        return f

    def _patella(self, side: float) -> Occupancy:
        H = self.H

        def f(hh: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
            g = self.legs(hh)
            dz = (hh - np.float32(0.30 * H)) / np.float32(0.018 * H)
            return _ellipse(xx - side * g["xc"], yy - (g["yc"] - 0.93 * g["rm"] + 4.0),
                            np.float32(20.0 * self.sx), np.float32(9.0 * self.sy), self._edge, dz)
        return f

    def _arm(self, side: float, part: str) -> Occupancy:
        def f(hh: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
            g = self.arms(hh)
            ra, t, fx, fy = g["ra"], g["t"], g["fx"], g["fy"]
            dx, dy = xx - np.float32(side) * g["xc"], yy - g["yc"]
            if part == "bone":
                r = np.minimum(ra * 0.28, np.float32(10.0 * self.sx))
                return _ellipse(dx, dy, r, r, self._edge)
            if part == "muscle":
                return _ellipse(dx, dy, ra * fx, ra * fy, self._edge)
            return _ellipse(dx, dy, ra * fx + t, ra * fy + t, self._edge)
        return f

    def _breasts(self) -> Occupancy:
        H, bm = self.H, self.p.breast_mm
        g0 = self.torso_at(0.725 * H)
        cy = g0["yo"] - g0["bo"] + 0.2 * bm
        a = 0.32 * g0["aw"] * (0.7 + bm / 100.0)
        c = 0.035 * H * (0.8 + bm / 150.0)

        def f(hh: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
            dz = (hh - np.float32(0.725 * H)) / np.float32(c)
            dy = yy - np.float32(cy)
            return np.maximum(
                _ellipse(xx - np.float32(0.48 * g0["aw"]), dy, np.float32(a), np.float32(bm), self._edge, dz),
                _ellipse(xx + np.float32(0.48 * g0["aw"]), dy, np.float32(a), np.float32(bm), self._edge, dz))
        return f

    # -- painting ----------------------------------------------------------
    def paint(self, canvas: Canvas) -> None:
        """Composite every structure onto ``canvas`` (front to back)."""
        self._edge = canvas.edge
        for s in self.structures:
            canvas.paint(s, self.tissues[s.tissue])


def render(body: Body, h: np.ndarray, y: np.ndarray, x: np.ndarray, edge: float) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free water and fat signal at the grid ``(h, y, x)`` (body frame, mm).

    Returns two float32 arrays of shape ``(len(h), len(y), len(x))``; the bed
    is not included (see :func:`bed_mask`).
    """
    canvas = Canvas(h, y, x, edge, render=True)
    body.paint(canvas)
    assert canvas.water is not None and canvas.fat is not None
    return canvas.water, canvas.fat


def compute_truth(body: Body) -> dict[str, object]:
    """Truth values of ``body`` from its tissue occupancy on the truth grid.

    Returns a dict with the scalar truth values (litres, kg, cm, percent),
    ``tissue_volumes_l`` (per class) and ``landmarks_h_mm`` (body frame).
    """
    dh, dy, dx = TRUTH_SPACING
    H = body.H
    h = np.arange(dh / 2, H + dh, dh, dtype=np.float32)
    y = np.arange(Y_BED - 520.0 + dy / 2, Y_BED + dy, dy, dtype=np.float32)
    x = np.arange(-440.0 + dx / 2, 440.0, dx, dtype=np.float32)
    voxel_l = dh * dy * dx * 1e-6
    profiles = {t: np.zeros(h.size) for t in TISSUE_NAMES}
    border = 0.0
    for z0 in range(0, h.size, 48):  # chunks keep the working set small
        canvas = Canvas(h[z0:z0 + 48], y, x, TRUTH_EDGE, render=False, truth=True)
        body.paint(canvas)
        assert canvas.profiles is not None
        for t, prof in canvas.profiles.items():
            profiles[t][z0:z0 + 48] = prof
        v = canvas.vis
        border = max(border, float(1.0 - min(v[:, 0, :].min(), v[:, :, 0].min(), v[:, :, -1].min())))
    if border > 1e-3:
        raise AssertionError(f"body exceeds the truth grid (occupancy {border:.3f} at its border)")

    def region(tissue: str, lo: float, hi: float) -> float:
        # each truth slice stands for [h - dh/2, h + dh/2]; boundary slices count in part
        weight = np.clip((np.minimum(h + dh / 2, hi) - np.maximum(h - dh / 2, lo)) / dh, 0.0, 1.0)
        return float((profiles[tissue] * weight).sum() * voxel_l)

    classes = dict.fromkeys(DENSITIES, 0.0)
    for t in TISSUE_NAMES:
        vol = float(profiles[t].sum() * voxel_l)
        for cls, share in body.tissues[t].composition.items():
            classes[cls] += vol * share
    weight = sum(classes[c] * DENSITIES[c] for c in DENSITIES)
    lo, hi = body.h_femoral_head_top, body.h_liver_top
    return {
        "weight_kg": weight,
        "height_cm": H / 10.0,
        "vat_volume_l": region("vat", lo, hi),
        "asat_volume_l": region("sat", lo, hi),
        "liver_fat_percent": body.p.liver_ff * 100.0,
        "thigh_muscle_volume_l": region("leg_muscle", body.h_knee, lo),
        "tissue_volumes_l": classes,
        "landmarks_h_mm": {
            "chin": body.h_chin,
            "liver_top": body.h_liver_top,
            "femoral_head_top": body.h_femoral_head_top,
            "knee": body.h_knee,
        },
    }
