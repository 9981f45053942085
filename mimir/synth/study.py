"""A synthetic subject's study: geometry, stations and series, rendered from a seeded body.

:func:`build_study` turns ``(seed, variant, small)`` into a :class:`SynthStudy`
(every series' pixels, positions and UIDs, and the truth); :mod:`mimir.synth.zips`
writes it as a field-20201 zip. Everything is a pure function of the
arguments: the same arguments give the same study.

Geometry (full size)
--------------------
Stations 1-6 have the real Rows x Columns, slice counts and spacings
(:data:`FULL_STATIONS`), pixel spacing 2.2321429 mm, the field of view
centred on x = y = 0, z decreasing from head to knee, neighbouring stations
overlapping by a seeded 30-40 mm (overlap = bottom of station i's extent,
``z_top_i - n_i * spacing_i``, to the top slice of station i+1). The body
frame of :mod:`mimir.synth.body` equals the patient frame shifted along z so
that the top slice lies a seeded 45-80 mm above the chin: the field of view
always starts at the chin, and where it ends on the legs depends on stature.
The bed lies under the body at ``y >= Y_BED`` (148 mm), inside the 22
posterior rows that the pipeline crops.

``small=True`` keeps every attribute, spacing and variant but uses 64
columns, 56-62 rows and 12-18 slices per station (:data:`SMALL_STATIONS`);
the same body is drawn scaled by 0.25 in plane and about 0.26 along z, and
the truth is that of the full-size body (identical to the full-size truth of
the same seed).

Variants (:data:`VARIANTS`): see :data:`VARIANT_HELP`; each is recorded in
the truth's ``variant_details``. The body, and so the truth, never depends on
the variant.
"""

from __future__ import annotations

import copy
import datetime as _dt
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mimir.errors import UsageError
from mimir.synth import dicom_writer as dw
from mimir.synth.body import (
    BED_THICKNESS,
    DENSITIES,
    Y_BED,
    Body,
    compute_truth,
    draw_params,
    render,
)
from mimir.synth.followup import FOLLOW_UP_INSTANCE, acquisition_seed, changed_params

__all__ = [
    "VARIANTS",
    "VARIANT_HELP",
    "SWAP_REGIONS",
    "SynthSubject",
    "SynthSeries",
    "SynthStudy",
    "build_study",
    "default_eid",
]

#: Version of the generator; recorded in every truth file.
GENERATOR_VERSION = "1"

VARIANT_HELP: dict[str, str] = {
    "rescan": "one station (1-5) acquired twice at the same position; the earlier one is corrupted "
              "(motion ghosts, wrong gain); 28 series",
    "missing_slice": "one water series of a breath-hold station (2-4) lacks one slice (43 instead of 44 at full "
                     "size)",
    "wf_shape_mismatch": "in one station the fat series has 2 fewer rows or 1 fewer slice than the water",
    "no_manifest": "no manifest in the zip",
    "manifest_csv": "the manifest is named manifest.csv",
    "fat_water_swap": "water and fat swapped in a whole station (1-4) or in one leg (station 5 or 6); "
                      "with swap_station=N: the whole station N (1-6)",
    "fat_water_swap_partial": "water and fat swapped in a region of one station: the left or right half "
                              "(one leg), the arms (outer columns), or a run of slices at one end; "
                              "swap_station / swap_region choose them",
    "truncated": "the zip cut off after 60 % of its bytes",
    "wf_position_mismatch": "the fat series of one station lies 5 mm away from its water (unusable subject)",
    "missing_station": "station 6 (series 21-24) missing",
    "no_overlap": "two neighbouring stations with no or negative overlap (0 to -12 mm)",
    "no_dicom": "a zip holding only the manifest and a text file",
}
#: Names accepted by ``variant=``.
VARIANTS: tuple[str, ...] = tuple(VARIANT_HELP)

#: Pixel spacing in mm, as written (500 mm / 224).
PIXEL_SPACING = 2.2321429
PIXEL_SPACING_TEXT = "2.2321429"
#: Per station (Rows, slices, slice spacing mm); Columns 224.
FULL_STATIONS: tuple[tuple[int, int, float], ...] = (
    (168, 64, 3.0), (174, 44, 4.5), (174, 44, 4.5), (174, 44, 4.5), (162, 72, 3.5), (156, 64, 4.0))
FULL_COLUMNS = 224
SMALL_STATIONS: tuple[tuple[int, int, float], ...] = (
    (60, 16, 3.0), (62, 12, 4.5), (62, 12, 4.5), (62, 12, 4.5), (58, 18, 3.5), (56, 16, 4.0))
SMALL_COLUMNS = 64
#: ``--small``: patient mm per body mm in plane, and overlap scale.
SMALL_SCALE_XY = 0.25
SMALL_OVERLAP_SCALE = 0.3
#: ``--small``: patient y of the bed top (inside the 22 posterior rows of the fused grid).
SMALL_Y_BED = 21.5
KINDS = ("in", "opp", "F", "W")


@dataclass
class SynthSeries:
    """One DICOM series in memory.

    ``pixels`` has shape (slices, Rows, Columns), uint16, slice 0 the most
    superior; ``z`` (slices,) holds each slice's ImagePositionPatient z (mm);
    ``x0``, ``y0`` the position of the first pixel (mm).
    """

    number: int
    station: int  # 1-6
    kind: str  # "in", "opp", "F", "W"
    description: str
    time: str  # SeriesTime, HHMMSS.ffffff
    uid: str
    pixels: np.ndarray
    z: np.ndarray
    x0: float
    y0: float
    spacing: float

    @property
    def instance_uids(self) -> list[str]:
        """SOPInstanceUID of each slice (deterministic from the series UID)."""
        return [f"{self.uid}.{k + 1}" for k in range(self.pixels.shape[0])]


@dataclass
class SynthStudy:
    """A whole synthetic subject in memory (no files)."""

    eid: int
    seed: int
    variant: str | None
    small: bool
    series: list[SynthSeries]
    truth: dict[str, object]
    patient_id: str
    study_uid: str
    frame_uid: str
    study_date: str  # YYYYMMDD
    study_time: str  # HHMMSS.ffffff
    manifest_name: str | None = "manifest.cvs"
    extra_members: list[tuple[str, bytes]] = field(default_factory=list)


@dataclass
class SynthSubject:
    """Paths written by :func:`generate_subject` and the truth they hold."""

    zip_path: Path
    truth_path: Path
    truth: dict[str, object]


def default_eid(seed: int) -> int:
    """The 7-digit eid of ``seed``: ``1000000 + seed`` (unique per seed)."""
    if not 0 <= seed <= 8_999_999:
        raise UsageError(f"seed {seed} out of range", hint="Use a seed from 0 to 8999999.")
    return 1_000_000 + int(seed)


def _fmt_time(seconds: float) -> str:
    micro = int(round(seconds * 1e6))
    s, us = divmod(micro, 1_000_000)
    return f"{s // 3600:02d}{(s // 60) % 60:02d}{s % 60:02d}.{us:06d}"


@dataclass
class _Station:
    index: int  # 1-6
    rows: int
    cols: int
    n: int
    spacing: float
    z_top: float
    x0: float
    y0: float

    def z(self) -> np.ndarray:
        return self.z_top - self.spacing * np.arange(self.n)


def _round_half(v: float) -> float:
    return round(v * 2.0) / 2.0


def _geometry(seed: int, small: bool, overlap_override: dict[int, float]) -> tuple[list[_Station], float]:
    """Stations in acquisition order and ``kz`` (patient mm per body mm along z).

    ``overlap_override`` maps a pair index i (stations i+1, i+2) to an overlap
    in full-size mm (the no_overlap variant); the body mapping always uses the
    nominal overlaps, so a gap hides anatomy instead of moving it.
    """
    rng = np.random.default_rng([seed, 0x6E0])
    z_top0 = _round_half(rng.uniform(-40.0, 40.0))
    overlaps = [_round_half(rng.uniform(30.0, 40.0)) for _ in range(5)]
    table, cols = (SMALL_STATIONS, SMALL_COLUMNS) if small else (FULL_STATIONS, FULL_COLUMNS)
    scale = SMALL_OVERLAP_SCALE if small else 1.0

    def extent(tab: tuple[tuple[int, int, float], ...], ovs: list[float]) -> float:
        return sum(n * d for _, n, d in tab) - sum(ovs)

    nominal = [_round_half(o * scale) for o in overlaps]
    kz = extent(table, nominal) / extent(FULL_STATIONS, overlaps) if small else 1.0
    actual = list(nominal)
    for i, ov in overlap_override.items():
        actual[i] = _round_half(ov * scale)
    stations = []
    z_top = z_top0
    x0 = round(-cols * PIXEL_SPACING / 2, 4)  # -250.0 at full size
    for i, (rows, n, d) in enumerate(table):
        y0 = round(-rows * PIXEL_SPACING / 2, 4)
        stations.append(_Station(i + 1, rows, cols, n, d, z_top, x0, y0))
        if i < 5:
            z_top = z_top - n * d + actual[i]
    return stations, kz


def _render_station(body: Body, st: _Station, h_of_z: Callable[[np.ndarray], np.ndarray], small: bool,
                    seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Shaded, noisy water and fat of one station: float32 (slices, rows, cols)."""
    kxy = SMALL_SCALE_XY if small else 1.0
    y_bed_p = SMALL_Y_BED if small else Y_BED
    yp = st.y0 + PIXEL_SPACING * np.arange(st.rows)
    xp = st.x0 + PIXEL_SPACING * np.arange(st.cols)
    yb = Y_BED + (yp - y_bed_p) / kxy
    xb = xp / kxy
    h = h_of_z(st.z())
    edge = max(2.0, 0.7 * PIXEL_SPACING / kxy)
    water, fat = render(body, h, yb.astype(np.float32), xb.astype(np.float32), edge)
    # the bed: a flat band under the body
    bed = np.clip(0.5 + (yb - Y_BED) / edge, 0, 1) * np.clip(0.5 + (Y_BED + BED_THICKNESS - yb) / edge, 0, 1)
    bed = bed.astype(np.float32)[None, :, None]
    water += 190.0 * bed
    fat += 170.0 * bed
    rng = np.random.default_rng([seed, 0x57A, st.index])
    # smooth multiplicative coil shading, the same for water and fat
    g0 = rng.uniform(0.85, 1.15)
    a1, a2 = rng.uniform(-0.15, 0.15), rng.uniform(-0.10, 0.10)
    b1, c1 = rng.uniform(-0.12, 0.12), rng.uniform(-0.06, 0.06)
    zn = np.linspace(-1.0, 1.0, st.n, dtype=np.float32)[:, None, None]
    yn = (yp / 200.0).astype(np.float32)[None, :, None]
    xn = (xp / 250.0).astype(np.float32)[None, None, :]
    shade = np.float32(g0) * (1.0 + a1 * zn + a2 * (zn * zn - 1.0 / 3.0) + b1 * yn + c1 * xn)
    # Rician noise: |signal + complex Gaussian|, so the background is not zero. The
    # Gaussian samples are windows at random offsets into one pool per station
    # (drawing ~10 M fresh normals per subject would dominate the run time).
    sigma = np.float32(9.0)
    size = water.size
    pool = rng.standard_normal(size + (1 << 18), dtype=np.float32)
    pool *= sigma
    out = []
    for sig in (water, fat):
        sig *= shade
        o1, o2 = (int(v) for v in rng.integers(0, 1 << 18, 2))
        sig += pool[o1:o1 + size].reshape(sig.shape)
        np.hypot(sig, pool[o2:o2 + size][::-1].reshape(sig.shape), out=sig)
        out.append(sig)
    return out[0], out[1]


def _to_u12(a: np.ndarray) -> np.ndarray:
    """Round non-negative signal to uint16 within 12 bits."""
    out = np.clip(a, 0.0, 4095.0)
    out += np.float32(0.5)
    return out.astype(np.uint16)


def _corrupt(a: np.ndarray) -> np.ndarray:
    """A visibly wrong acquisition: strong motion ghosts a quarter field of view away along the rows."""
    rows = a.shape[1]
    ghost = np.roll(a, rows // 4, axis=1) + np.roll(a, -rows // 4, axis=1)
    return 0.55 * a + 0.35 * ghost


#: The scalar truth values a model predicts (the truth file's keys).
TRUTH_VALUES: tuple[str, ...] = ("weight_kg", "height_cm", "vat_volume_l", "asat_volume_l", "liver_fat_percent",
                                 "thigh_muscle_volume_l")


def _first_visit_date(seed: int) -> _dt.date:
    """The study date of the first imaging visit (instance 2) of ``seed``."""
    trng = np.random.default_rng([seed, 0x71E])
    return _dt.date(2014, 5, 1) + _dt.timedelta(days=int(trng.integers(0, 5 * 365)))


@functools.lru_cache(maxsize=16)
def _drawn_body(seed: int) -> tuple[Body, dict[str, object]]:
    """The body of ``seed`` and its truth (cached: both are pure functions of the seed)."""
    body = Body(draw_params(seed))
    return body, compute_truth(body)


@dataclass
class _Plan:
    """The seeded choices of a variant (all ``None``/empty for a regular subject)."""

    details: dict[str, object] = field(default_factory=dict)
    overlap_override: dict[int, float] = field(default_factory=dict)
    rescan_station: int | None = None
    swap: dict[str, object] | None = None
    missing: tuple[int, int] | None = None  # station, dropped slice index (head first)
    mismatch: tuple[int, str] | None = None  # station, "rows" or "slices"
    shifted: int | None = None  # station whose fat lies 5 mm off
    missing_station: int | None = None


#: Regions of ``fat_water_swap_partial``.
SWAP_REGIONS: tuple[str, ...] = ("left", "right", "arms", "slices")


def _plan(seed: int, variant: str | None, small: bool, swap_station: int | None = None,
          swap_region: str | None = None) -> _Plan:
    rng = np.random.default_rng([seed, 0x7A2])
    plan = _Plan()
    if variant == "no_overlap":
        pair = int(rng.integers(0, 5))
        plan.overlap_override[pair] = _round_half(float(rng.uniform(-12.0, 0.0)))
        plan.details = {"stations": [pair + 1, pair + 2], "overlap_mm_full_scale": plan.overlap_override[pair]}
    elif variant == "rescan":
        plan.rescan_station = int(rng.integers(1, 6))
    elif variant == "missing_station":
        plan.missing_station = 6
        plan.details = {"missing_station": 6}
    elif variant == "fat_water_swap" and swap_station is not None:
        plan.swap = {"kind": "station", "station": int(swap_station)}
        plan.details = dict(plan.swap)
    elif variant == "fat_water_swap_partial":
        region = swap_region or str(rng.choice(SWAP_REGIONS))
        if swap_station is not None:
            station = int(swap_station)
        elif region == "arms":
            station = int(rng.integers(2, 4))
        else:
            station = int(rng.integers(1, 7))
        plan.swap = {"kind": "partial", "station": station, "region": region}
        if region == "arms":
            plan.swap["x_cut_mm"] = _round_half(float(rng.uniform(125.0, 150.0)))
        elif region == "slices":
            plan.swap["fraction"] = round(float(rng.uniform(0.3, 0.6)), 3)
            plan.swap["end"] = "top" if rng.random() < 0.5 else "bottom"
        plan.details = dict(plan.swap)
    elif variant == "fat_water_swap":
        if rng.random() < 0.5:
            plan.swap = {"kind": "station", "station": int(rng.integers(1, 5))}
        else:
            plan.swap = {"kind": "leg", "station": int(rng.integers(5, 7)),
                         "side": "right" if rng.random() < 0.5 else "left"}
        plan.details = dict(plan.swap)
    elif variant == "missing_slice":
        station = int(rng.integers(2, 5))
        n = (SMALL_STATIONS if small else FULL_STATIONS)[station - 1][1]
        plan.missing = (station, int(rng.integers(0, n)))
    elif variant == "wf_shape_mismatch":
        plan.mismatch = (int(rng.integers(1, 7)), "rows" if rng.random() < 0.5 else "slices")
        plan.details = {"station": plan.mismatch[0], "fat_differs_in": plan.mismatch[1],
                        "fat_rows_minus": 2 if plan.mismatch[1] == "rows" else 0,
                        "fat_slices_minus": 1 if plan.mismatch[1] == "slices" else 0}
    elif variant == "wf_position_mismatch":
        plan.shifted = int(rng.integers(1, 7))
        plan.details = {"station": plan.shifted, "fat_z_shift_mm": 5.0}
    elif variant in ("no_manifest", "manifest_csv", "truncated", "no_dicom"):
        plan.details = {"manifest": {"no_manifest": None, "manifest_csv": "manifest.csv"}.get(variant, "manifest.cvs")}
        if variant == "truncated":
            plan.details["kept_fraction"] = 0.6
    return plan


def _swap_mask(st: _Station, swap: dict[str, object], small: bool) -> np.ndarray:
    """Boolean (slices, rows, cols) mask of the voxels whose water and fat are exchanged."""
    mask = np.zeros((st.n, st.rows, st.cols), dtype=bool)
    xp = st.x0 + PIXEL_SPACING * np.arange(st.cols)
    kind, region = swap["kind"], swap.get("region")
    if kind == "station":
        mask[:] = True
    elif kind == "leg" or region in ("left", "right"):
        side = swap.get("side", region)
        mask[:, :, (xp < 0) if side == "right" else (xp > 0)] = True
    elif region == "arms":
        cut = float(swap["x_cut_mm"]) * (SMALL_SCALE_XY if small else 1.0)  # type: ignore[arg-type]
        mask[:, :, np.abs(xp) > cut] = True
    elif region == "slices":
        k = max(1, int(round(float(swap["fraction"]) * st.n)))  # type: ignore[arg-type]
        if swap["end"] == "top":
            mask[:k] = True
        else:
            mask[st.n - k:] = True
    return mask


def _channels(st: _Station, w: np.ndarray, f: np.ndarray, swap: dict[str, object] | None,
              small: bool = False) -> dict[str, np.ndarray]:
    """The four Dixon channels of one acquisition, with the fat-water swap applied if it hits it.

    For a swap, ``swap["body_fraction"]`` is set to the share of the station's body voxels
    (water + fat above 200) inside the swapped region.
    """
    if swap is not None and swap["station"] == st.index:
        mask = _swap_mask(st, swap, small)
        body = (w + f) > 200.0
        swap["body_fraction"] = round(float(np.count_nonzero(body & mask) / max(1, np.count_nonzero(body))), 4)
        if mask.all():
            w, f = f, w
        else:
            w, f = np.where(mask, f, w), np.where(mask, w, f)
    return {"in": w + f, "opp": np.abs(w - f), "F": f, "W": w}


def build_study(seed: int, variant: str | None = None, small: bool = False,
                eid: int | None = None, *, swap_station: int | None = None,
                swap_region: str | None = None, instance: int = 2, change: str | None = None,
                change_size: float | None = None) -> SynthStudy:
    """The synthetic subject ``seed`` in memory: series, truth and study attributes.

    ``swap_station`` (1-6) and ``swap_region`` (one of :data:`SWAP_REGIONS`) choose
    where the ``fat_water_swap`` (whole station) and ``fat_water_swap_partial``
    variants swap; left out, they are drawn from the seed.

    ``instance=3`` draws the follow-up visit of the same subject (same eid): the body
    of ``seed`` with ``change`` (one of :data:`mimir.synth.followup.CHANGES`, default
    ``none``) of ``change_size`` applied, in a new acquisition (positioning, shading,
    noise, date 2-3 years later, UIDs); its truth adds ``instance`` and ``follow_up``
    (the change, both visits' values, their difference, both dates). Instance 2 is
    the first visit, exactly as before follow-ups existed.

    Raises :class:`~mimir.errors.UsageError` for an unknown variant or a bad
    seed, eid, station or region.
    """
    if variant is not None and variant not in VARIANTS:
        raise UsageError(f"unknown variant {variant!r}", hint=f"Choose one of: {', '.join(VARIANTS)}.")
    if swap_station is not None or swap_region is not None:
        if variant not in ("fat_water_swap", "fat_water_swap_partial"):
            raise UsageError("swap_station and swap_region apply to the fat_water_swap variants only")
        if swap_station is not None and not 1 <= int(swap_station) <= 6:
            raise UsageError(f"swap station {swap_station} out of range", hint="Use a station from 1 to 6.")
        if swap_region is not None and (variant != "fat_water_swap_partial" or swap_region not in SWAP_REGIONS):
            raise UsageError(f"unknown swap region {swap_region!r}",
                             hint=f"With fat_water_swap_partial choose one of: {', '.join(SWAP_REGIONS)}.")
    if instance not in (2, FOLLOW_UP_INSTANCE):
        raise UsageError(f"instance {instance} is not an imaging visit", hint="Use 2 (first) or 3 (follow-up).")
    if instance == 2 and (change is not None or change_size is not None):
        raise UsageError("a change applies to the follow-up visit only", hint="Pass instance=3 with it.")
    seed = int(seed)
    eid = default_eid(seed) if eid is None else int(eid)
    default_eid(seed)  # validates the seed range
    if not 1_000_000 <= eid <= 9_999_999:
        raise UsageError(f"eid {eid} is not a 7-digit number")

    body, truth_body = _drawn_body(seed)
    truth_body = copy.deepcopy(truth_body)
    follow_up: dict[str, object] | None = None
    if instance != 2:
        baseline = {k: truth_body[k] for k in TRUTH_VALUES}
        params, follow_up = changed_params(body.p, change or "none", change_size)
        body = Body(params)
        truth_body = compute_truth(body)
        follow_up["baseline"] = baseline
        follow_up["delta"] = {k: float(truth_body[k]) - float(baseline[k]) for k in TRUTH_VALUES}  # type: ignore[arg-type]
    acq = acquisition_seed(seed, instance)  # the acquisition's random streams; == seed for instance 2
    plan = _plan(seed, variant, small, swap_station, swap_region)
    stations, kz = _geometry(acq, small, plan.overlap_override)
    chin_margin = float(np.random.default_rng([acq, 0xC41]).uniform(45.0, 80.0))
    h_top = body.h_chin + chin_margin
    z_top0 = stations[0].z_top

    def h_of_z(z: np.ndarray) -> np.ndarray:
        return (h_top - (z_top0 - np.asarray(z, np.float64)) / kz).astype(np.float32)

    # acquisitions in order: (station, water, fat, corrupted?)
    images = {st.index: _render_station(body, st, h_of_z, small, acq) for st in stations}
    acquisitions: list[tuple[_Station, np.ndarray, np.ndarray, bool]] = []
    for st in stations:
        if st.index == plan.missing_station:
            continue
        w, f = images[st.index]
        if st.index == plan.rescan_station:
            acquisitions.append((st, _corrupt(w), _corrupt(f), True))
        acquisitions.append((st, w, f, False))

    trng = np.random.default_rng([acq, 0x71E])
    date = _dt.date(2014, 5, 1) + _dt.timedelta(days=int(trng.integers(0, 5 * 365)))
    if follow_up is not None:  # 2-3 years after the first visit
        first = _first_visit_date(seed)
        date = first + _dt.timedelta(days=int(trng.integers(730, 1096)))
        follow_up["first_visit_date"] = first.isoformat()
        follow_up["study_date"] = date.isoformat()
        follow_up["years"] = round((date - first).days / 365.25, 4)
    t0 = float(trng.uniform(8 * 3600, 17 * 3600))
    token = int(trng.integers(10**8, 10**9))
    patient_id = str(int(trng.integers(10**9, 10**10)))
    base_uid = f"{dw.UID_ROOT}{seed + 1}.{token}"
    details = plan.details

    series: list[SynthSeries] = []
    t = t0 + float(trng.uniform(30.0, 90.0))
    for k, (st, w, f, bad) in enumerate(acquisitions):
        chans = _channels(st, w, f, None if bad else plan.swap, small)
        prefix = "Dixon_noBH" if st.index in (1, 5, 6) else "Dixon_BH_17s"
        for j, kind in enumerate(KINDS):
            number = 4 * k + j + 1
            pixels, z = _to_u12(chans[kind]), st.z()
            if plan.missing is not None and kind == "W" and st.index == plan.missing[0]:
                keep = np.ones(st.n, bool)
                keep[plan.missing[1]] = False
                details = {"station": st.index, "series_number": number, "dropped_index": plan.missing[1],
                           "dropped_z_mm": float(z[plan.missing[1]]), "slices": int(keep.sum())}
                pixels, z = pixels[keep], z[keep]
            if plan.mismatch is not None and kind == "F" and st.index == plan.mismatch[0]:
                if plan.mismatch[1] == "rows":
                    pixels = pixels[:, :-2, :]
                else:
                    pixels, z = pixels[:-1], z[:-1]
                details["series_number"] = number
            if plan.shifted is not None and kind == "F" and st.index == plan.shifted:
                z = z + 5.0
                details["series_number"] = number
            series.append(SynthSeries(
                number=number, station=st.index, kind=kind, description=f"{prefix}_{kind}",
                time=_fmt_time(t + 0.8 * j), uid=f"{base_uid}.2.{number}",
                pixels=np.ascontiguousarray(pixels), z=np.asarray(z, np.float64),
                x0=st.x0, y0=st.y0, spacing=st.spacing))
        t += float(trng.uniform(35.0, 80.0))
    if plan.swap is not None:
        details = dict(plan.swap)
    if plan.rescan_station is not None:
        nums = [s.number for s in series if s.station == plan.rescan_station]
        details = {"station": plan.rescan_station, "corrupted_series": nums[:4], "good_series": nums[4:]}

    landmarks = {k: float(z_top0 - (h_top - v) * kz)
                 for k, v in truth_body["landmarks_h_mm"].items()}  # type: ignore[union-attr]
    truth: dict[str, object] = {
        "eid": eid,
        "seed": seed,
        "variant": variant,
        "small": bool(small),
        "sex": body.p.sex,
        "age": body.p.age if follow_up is None else body.p.age + int(float(follow_up["years"])),  # type: ignore[arg-type]
        **{key: truth_body[key] for key in TRUTH_VALUES},
        "variant_details": details,
        "tissue_volumes_l": truth_body["tissue_volumes_l"],
        "densities_kg_per_l": dict(DENSITIES),
        "landmarks_z_mm": landmarks,
        "definitions": TRUTH_DEFINITIONS,
        "generator_version": GENERATOR_VERSION,
    }
    if follow_up is not None:
        truth["instance"] = instance
        truth["follow_up"] = follow_up
    manifest_name = {"no_manifest": None, "manifest_csv": "manifest.csv"}.get(variant or "", "manifest.cvs")
    return SynthStudy(
        eid=eid, seed=seed, variant=variant, small=bool(small), series=series, truth=truth,
        patient_id=patient_id, study_uid=f"{base_uid}.1", frame_uid=f"{base_uid}.3",
        study_date=date.strftime("%Y%m%d"), study_time=_fmt_time(t0), manifest_name=manifest_name,
        extra_members=[("info.txt", b"Export incomplete: no image files.\n")] if variant == "no_dicom" else [],
    )


TRUTH_DEFINITIONS: dict[str, str] = {
    "weight_kg": "sum over tissue classes of volume (L) x density (kg/L, densities_kg_per_l) over the whole "
                 "drawn body, vertex to floor, arms, head and lower legs included (only chin to knees is imaged)",
    "height_cm": "drawn stature; the body model spans the floor to the vertex",
    "vat_volume_l": "fat inside the abdominal cavity (inside the muscle wall, below the diaphragm) between the "
                    "top of the femoral heads and the top of the liver dome, litres",
    "asat_volume_l": "torso subcutaneous fat (outside the abdominal muscle wall) between the top of the femoral "
                     "heads and the top of the liver dome, litres",
    "liver_fat_percent": "proton-density fat fraction of liver tissue, 100 fat / (water + fat) of its signal",
    "thigh_muscle_volume_l": "muscle of both legs between the knee joint centre and the top of the femoral heads, "
                             "litres",
    "volumes": "soft tissue occupancy summed on a 5 x 5 x 6 mm grid over the full-size body; slabs "
               "bounded by landmarks count boundary slices in proportion",
    "landmarks_z_mm": "patient z (ImagePositionPatient[2]) of body landmarks in this zip's frame",
    "small": "true: reduced-size images of the same body (scaled to fit); the truth values are those of the "
             "full-size body of the seed",
}
