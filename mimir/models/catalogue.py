"""The catalogue of published targets: what the MIMIR modules predict, and how well.

The packaged ``mimir/data/mimir_targets.csv`` holds the 71 targets of the
published MIMIR modules with their UK Biobank field id, unit, group, the
10-fold cross-validation figures (N, ICC, R2, MAE, MAPE), for 12 atlas
targets the later test figures, and each target's support (the values it can
take: volumes, masses and ages >= 0, percentages 0-100, sex 0-1) to which
prediction intervals are cut.

A leaf of :mod:`mimir.models`: it imports nothing else of mimir, so the module
format (:mod:`mimir.models.modules`) can fill published metrics from it.
No torch, no network: reading it is cheap.
"""

from __future__ import annotations

import csv
import functools
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any

CATALOGUE_FILE = "mimir_targets.csv"


@dataclass(frozen=True)
class Metrics:
    """Published agreement figures for one target on one evaluation set."""

    n: int | None
    icc: float | None
    r2: float | None
    mae: float | None
    mape_percent: float | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CatalogueEntry:
    """One row of the packaged catalogue."""

    name: str
    field: int | None
    group: str
    unit: str
    cv: Metrics | None
    test: Metrics | None
    #: (low, high) values the target can take (either None: unbounded); None when the catalogue gives none
    support: tuple[float | None, float | None] | None = None

    def metrics_json(self) -> dict[str, Any]:
        """Published metrics as stored in ``module.json`` (``cv`` and, where known, ``test``)."""
        out: dict[str, Any] = {}
        if self.cv is not None:
            out["cv"] = self.cv.to_json()
        if self.test is not None:
            out["test"] = self.test.to_json()
        return out


def _num(text: str, kind: type) -> Any:
    text = (text or "").strip()
    if not text:
        return None
    return kind(float(text)) if kind is int else kind(text)


def _metrics(row: dict[str, str], prefix: str) -> Metrics | None:
    values = {
        "n": _num(row.get(f"{prefix}_n", ""), int),
        "icc": _num(row.get(f"{prefix}_icc", ""), float),
        "r2": _num(row.get(f"{prefix}_r2", ""), float),
        "mae": _num(row.get(f"{prefix}_mae", ""), float),
        "mape_percent": _num(row.get(f"{prefix}_mape_percent", ""), float),
    }
    if all(v is None for v in values.values()):
        return None
    return Metrics(**values)


@functools.lru_cache(maxsize=1)
def catalogue() -> tuple[CatalogueEntry, ...]:
    """The 71 published targets, in the catalogue's order."""
    text = resources.files("mimir").joinpath("data", CATALOGUE_FILE).read_text(encoding="utf-8")
    rows = csv.DictReader(text.splitlines())
    return tuple(
        CatalogueEntry(
            name=r["name"].strip(),
            field=_num(r["field"], int),
            group=r["group"].strip(),
            unit=r["unit"].strip(),
            cv=_metrics(r, "cv"),
            test=_metrics(r, "test"),
            support=_support(r),
        )
        for r in rows
    )


def _support(row: dict[str, str]) -> tuple[float | None, float | None] | None:
    """``support_low``/``support_high`` of a row (volumes and masses >= 0, percentages 0-100)."""
    low = _num(row.get("support_low", ""), float)
    high = _num(row.get("support_high", ""), float)
    return None if low is None and high is None else (low, high)


def catalogue_by_name() -> dict[str, CatalogueEntry]:
    """The catalogue keyed by target name."""
    return {e.name: e for e in catalogue()}
