"""Quality control of one subject, computed while it is preprocessed (cheap, no network).

The QC record says how far the image can be trusted: a verdict (``ok``,
``warn``, ``fail``), a list of codes with details (``docs/qc.md``), and the
per-station numbers behind the fat-water swap decision.

Fat-water swap detection
------------------------
A Dixon reconstruction that picks the wrong phase solution exchanges water
and fat in a whole station or in a region of it. Two physical cues reveal it,
both invariant to coil gain (they use the fat fraction ``F / (W + F)``):

1. **Subcutaneous fat at the body's outer edge.** Everywhere from the neck
   to the knees the body is wrapped in subcutaneous fat, so the first
   voxels inside the outer body edge are fat-dominated. In a swapped region
   they turn water-dominated. Per station we sample the outer edge along
   every image row (from the right and from the left) and every column (from
   the anterior side; the posterior side rests on the bed) and compare the
   fat fraction of the first body voxel with that of the tissue a few voxels
   further in (:func:`swapped_looking`: fat at the edge, or at least more fat
   at the edge than inside, is normal; the reverse looks swapped).
   ``edge_low`` is the share of samples that look swapped: near zero in a
   regular station, near one in a swapped one, and about the swapped share of
   the edge for a partial swap (one leg, the arms, a run of slices).
2. **Station overlaps.** Neighbouring stations overlap by a few centimetres,
   so the same anatomy is imaged twice. The fat-fraction maps of the two
   views correlate positively; when one of them is swapped (``ff -> 1 - ff``)
   the correlation turns negative. ``seam_corr`` is that correlation between
   a station and the next one (head to foot) on the overlap slice nearest the
   middle of their overlap.

A station is flagged ``fat_water_swap`` when ``edge_low`` exceeds
:data:`WHOLE_EDGE_LOW`, ``fat_water_swap_partial`` when it exceeds
:data:`PARTIAL_EDGE_LOW`; a negative seam correlation lowers the partial
threshold by :data:`SEAM_BONUS` for the more swapped-looking station of the pair.
Thresholds were chosen on tuning seeds and measured on fresh ones
(``benchmarks/qc.py``).

All functions are pure: arrays in, numbers out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from mimir.preprocessing.fusion import plan_overlaps, station_grid
from mimir.preprocessing.projection import BED_ROWS
from mimir.preprocessing.stations import StationSet

#: Version of the QC computation; the image cache and batch records store it.
QC_VERSION = "mimir-qc/1"

#: Verdicts, least to most severe.
STATUSES = ("ok", "warn", "fail")

#: Depths (voxels inside the first body voxel) of the "inner" fat fraction of an edge sample.
INNER_DEPTHS = (2, 3)
#: Margin (fat fraction) by which edge and inner must differ to count as ordered.
EDGE_MARGIN = 0.1
#: The body mask: water + fat above this share of the station's 99th percentile.
BODY_THRESHOLD = 0.2
#: ``edge_low`` above which a whole station is called swapped.
WHOLE_EDGE_LOW = 0.80
#: ``edge_low`` above which a region of a station is called swapped.
PARTIAL_EDGE_LOW = 0.15
#: How much a negative seam correlation lowers the partial threshold of the station it points at.
SEAM_BONUS = 0.05
#: Every this many slices of a station are sampled for the edge numbers (speed), in
#: stations of at least :data:`SLICE_STEP_FROM` slices; every slice in shorter ones.
SLICE_STEP = 2
SLICE_STEP_FROM = 32
#: Fewer edge samples than this: the station is too small or empty to judge.
MIN_EDGE_SAMPLES = 20

#: The code of every flag, with its severity (docs/qc.md explains each).
SEVERITY: dict[str, str] = {
    "fat_water_swap": "fail",
    "fat_water_swap_partial": "warn",
    "rescan_replaced": "warn",
    "slices_dropped": "warn",
    "wf_shape_cropped": "warn",
    "no_overlap": "warn",
    "geometry": "warn",
    "out_of_distribution": "warn",
    "qc_incomplete": "warn",
}


@dataclass(frozen=True)
class StationQC:
    """The swap numbers of one station (1 = head/neck, 6 = knees).

    ``edge_ff``: median fat fraction (0-1) of the outer-edge samples;
    ``edge_low``: share (0-1) of edge samples with fat fraction < 0.5;
    ``edge_samples``: how many samples there were (``edge_ff``/``edge_low`` are None without any);
    ``seam_corr``: correlation (-1..1) of the fat-fraction maps of this station
    and the next one in their overlap (None for the last station or without overlap).
    """

    station: int
    edge_ff: float | None
    edge_low: float | None
    edge_samples: int
    seam_corr: float | None = None


@dataclass
class QCRecord:
    """QC of one subject: ``status`` (``ok``/``warn``/``fail``), ``flags`` (codes with details,
    see docs/qc.md) and the per-station swap numbers."""

    status: str = "ok"
    flags: list[str] = field(default_factory=list)
    stations: list[StationQC] = field(default_factory=list)
    version: str = QC_VERSION

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "status": self.status,
            "flags": list(self.flags),
            "stations": [asdict(s) for s in self.stations],
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> QCRecord:
        """The record written by :meth:`to_json`; raises ValueError when it is not one."""
        try:
            stations = [StationQC(**s) for s in obj.get("stations", [])]
            rec = cls(status=str(obj["status"]), flags=[str(f) for f in obj["flags"]], stations=stations,
                      version=str(obj["version"]))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a QC record ({exc})") from None
        if rec.status not in STATUSES:
            raise ValueError(f"not a QC status: {rec.status!r}")
        return rec

    def add(self, *flags: str) -> None:
        """Append flags (duplicates ignored) and raise the status to their severity."""
        for flag in flags:
            if flag not in self.flags:
                self.flags.append(flag)
        self.status = status_of(self.flags, self.status)


def status_of(flags: Sequence[str], floor: str = "ok") -> str:
    """The verdict of a list of flags: the most severe of their codes (unknown codes: ``warn``)."""
    rank = STATUSES.index(floor)
    for flag in flags:
        code = flag.split(":", 1)[0]
        rank = max(rank, STATUSES.index(SEVERITY.get(code, "warn")))
    return STATUSES[rank]


# --------------------------------------------------------------------------- swap numbers


def _body_mask(total: np.ndarray) -> np.ndarray:
    """Body voxels of a station: water + fat above :data:`BODY_THRESHOLD` x its 99th percentile."""
    sample = total[::3, ::3, ::2]
    level = float(np.percentile(sample, 99)) if sample.size else 0.0
    return total > BODY_THRESHOLD * level


def _edge_fractions(
    fat: np.ndarray, total: np.ndarray, mask: np.ndarray, axis: int, reverse: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Fat fractions at the outer body edge met along ``axis``: (edge, inner), 1-D float64 each.

    ``edge`` is the fat fraction of the first body voxel, ``inner`` the
    signal-weighted fat fraction of the body voxels :data:`INNER_DEPTHS` further
    in. Lines that meet no body, or meet it at the border of the field of view
    (cut-off anatomy, not a skin surface), give no sample.
    """
    if reverse:
        fat, total, mask = (np.flip(a, axis) for a in (fat, total, mask))
    n = mask.shape[axis]
    first = np.argmax(mask, axis=axis)
    hit = np.any(mask, axis=axis) & (first > 0) & (first + INNER_DEPTHS[-1] < n)

    def sums(depths: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        f_sum = np.zeros(first.shape)
        t_sum = np.zeros(first.shape)
        for d in depths:
            idx = np.expand_dims(np.minimum(first + d, n - 1), axis)
            f_sum += np.take_along_axis(fat, idx, axis).squeeze(axis)
            t_sum += np.take_along_axis(total, idx, axis).squeeze(axis)
        return f_sum, t_sum

    f0, t0 = sums((0,))
    f1, t1 = sums(INNER_DEPTHS)
    ok = hit & (t0 > 0) & (t1 > 0)
    return f0[ok] / t0[ok], f1[ok] / t1[ok]


def swapped_looking(edge: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """Which edge samples look swapped (boolean, same shape).

    Normal anatomy has fat at the edge: a high edge fat fraction (thick
    subcutaneous fat), or at least more fat at the edge than further in (fat
    thinner than a voxel over muscle). A swap turns both around (f -> 1 - f).
    A sample looks swapped when its edge has clearly less fat than the tissue
    inside (by :data:`EDGE_MARGIN`), or when the edge is water-dominated and
    not clearly fattier than the inside.
    """
    return (edge < inner - EDGE_MARGIN) | ((edge < 0.5) & (edge < inner + EDGE_MARGIN))


def edge_numbers(water: np.ndarray, fat: np.ndarray) -> tuple[float, float, int]:
    """(edge_ff, edge_low, samples) of one station.

    ``water``, ``fat``: (rows, columns, slices) float arrays, rows anterior to
    posterior; the posterior :data:`~mimir.preprocessing.projection.BED_ROWS`
    rows (the bed) are left out, and every :data:`SLICE_STEP`-th slice is used
    (every slice in stations shorter than :data:`SLICE_STEP_FROM`).
    ``edge_ff`` is the median fat fraction (0-1) of the first body voxel met
    from the right, the left and the front; ``edge_low`` the share (0-1) of
    those samples that look swapped (:func:`swapped_looking`).
    """
    rows = max(1, water.shape[0] - BED_ROWS)
    step = SLICE_STEP if water.shape[2] >= SLICE_STEP_FROM else 1
    w = np.asarray(water[:rows, :, ::step], dtype=np.float32)
    f = np.asarray(fat[:rows, :, ::step], dtype=np.float32)
    total = w + f
    mask = _body_mask(total)
    parts = [
        _edge_fractions(f, total, mask, axis=1, reverse=False),  # from the patient's right
        _edge_fractions(f, total, mask, axis=1, reverse=True),  # from the left
        _edge_fractions(f, total, mask, axis=0, reverse=False),  # from the anterior side
    ]
    edge = np.concatenate([p[0] for p in parts])
    inner = np.concatenate([p[1] for p in parts])
    if edge.size == 0:
        return math.nan, math.nan, 0
    return float(np.median(edge)), float(np.mean(swapped_looking(edge, inner))), int(edge.size)


def seam_correlation(stations: StationSet, i: int) -> float | None:
    """Correlation of the fat-fraction maps of stations ``i`` and ``i + 1`` (0-based, head first)
    on one slice in their overlap, over voxels that are body in both; None without overlap."""
    a_w, a_f = stations.water[i], stations.fat[i]
    b_w, b_f = stations.water[i + 1], stations.fat[i + 1]
    za = a_w.position[2] - a_w.spacing[2] * np.arange(a_w.voxels.shape[2])
    zb = b_w.position[2] - b_w.spacing[2] * np.arange(b_w.voxels.shape[2])
    lo, hi = max(za.min(), zb.min()), min(za.max(), zb.max())
    if not hi > lo:
        return None
    mid = 0.5 * (lo + hi)
    ka, kb = int(np.argmin(np.abs(za - mid))), int(np.argmin(np.abs(zb - mid)))
    # in-plane offset of b's first pixel relative to a's, in pixels (rows: y, columns: x)
    ps = a_w.spacing[:2]
    dr = int(round((b_w.position[1] - a_w.position[1]) / ps[0]))
    dc = int(round((b_w.position[0] - a_w.position[0]) / ps[1]))
    ra, ca = a_w.voxels.shape[:2]
    rb, cb = b_w.voxels.shape[:2]
    r0, r1 = max(0, dr), min(ra, dr + rb)
    c0, c1 = max(0, dc), min(ca, dc + cb)
    if r1 - r0 < 4 or c1 - c0 < 4:
        return None
    r1 = max(r0 + 1, min(r1, ra - BED_ROWS))

    def ff_map(w: np.ndarray, f: np.ndarray, k: int, dr_: int, dc_: int) -> tuple[np.ndarray, np.ndarray]:
        ws = w[r0 - dr_ : r1 - dr_, c0 - dc_ : c1 - dc_, k].astype(np.float64)
        fs = f[r0 - dr_ : r1 - dr_, c0 - dc_ : c1 - dc_, k].astype(np.float64)
        t = ws + fs
        return np.divide(fs, t, out=np.zeros_like(t), where=t > 0), t

    ffa, ta = ff_map(a_w.voxels, a_f.voxels, ka, 0, 0)
    ffb, tb = ff_map(b_w.voxels, b_f.voxels, kb, dr, dc)
    level = BODY_THRESHOLD * max(float(np.percentile(ta, 99)), float(np.percentile(tb, 99)))
    both = (ta > level) & (tb > level)
    if np.count_nonzero(both) < 20:
        return None
    x, y = ffa[both], ffb[both]
    sx, sy = x.std(), y.std()
    if sx == 0 or sy == 0:
        return None
    return float(np.mean((x - x.mean()) * (y - y.mean())) / (sx * sy))


def swap_numbers(stations: StationSet) -> list[StationQC]:
    """The per-station swap numbers of a subject (stations head first)."""
    out = []
    n = len(stations.water)
    for i in range(n):
        ff, low, count = edge_numbers(stations.water[i].voxels, stations.fat[i].voxels)
        corr = seam_correlation(stations, i) if i + 1 < n else None
        out.append(StationQC(station=i + 1, edge_ff=_round(ff), edge_low=_round(low), edge_samples=count,
                             seam_corr=None if corr is None else _round(corr)))
    return out


def _round(x: float) -> float | None:
    return float(round(x, 4)) if math.isfinite(x) else None


def swap_flags(numbers: Sequence[StationQC]) -> list[str]:
    """``fat_water_swap:station=N`` / ``fat_water_swap_partial:station=N`` flags from the numbers."""
    bonus = [0.0] * len(numbers)
    for i, s in enumerate(numbers[:-1]):
        if s.seam_corr is not None and s.seam_corr < 0:
            a, b = numbers[i], numbers[i + 1]
            j = i if _low(a) >= _low(b) else i + 1
            bonus[j] = SEAM_BONUS
    flags = []
    for s, b in zip(numbers, bonus):
        if s.edge_samples < MIN_EDGE_SAMPLES or s.edge_low is None:
            continue
        if s.edge_low > WHOLE_EDGE_LOW:
            flags.append(f"fat_water_swap:station={s.station}")
        elif s.edge_low > PARTIAL_EDGE_LOW - b:
            flags.append(f"fat_water_swap_partial:station={s.station}")
    return flags


def _low(s: StationQC) -> float:
    return 0.0 if s.edge_low is None else s.edge_low


# --------------------------------------------------------------------------- the record


def overlap_flags(stations: StationSet) -> list[str]:
    """``no_overlap:stations=A-B`` (1-based, head first) for neighbours that fusion joins without overlap."""
    shapes = np.array([s.voxels.shape for s in stations.water])
    plan, _ = plan_overlaps(station_grid(stations.positions, stations.spacings, shapes))
    return [f"no_overlap:stations={i + 1}-{i + 2}" for i in range(len(shapes) - 1) if plan.overlaps[i] <= 0]


def assess(stations: StationSet) -> QCRecord:
    """The QC record of a subject from its consistent stations (see the module docstring).

    Flags, in order: the repairs made while pairing stations (``stations.flags``),
    stations joined without overlap, fat-water swaps.
    """
    numbers = swap_numbers(stations)
    record = QCRecord(stations=numbers)
    record.add(*stations.flags, *overlap_flags(stations), *swap_flags(numbers))
    return record
