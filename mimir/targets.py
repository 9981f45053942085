"""The catalogue of targets: what the published MIMIR modules predict, and how well.

The packaged ``mimir/data/mimir_targets.csv`` holds the 71 targets of the
published MIMIR modules with their UK Biobank field id, unit, group, the
10-fold cross-validation figures (N, ICC, R2, MAE, MAPE) and, for 12 atlas
targets, the later test figures. :func:`list_targets` joins it with the
targets of every installed module (built-in ones included), and says which
installed module predicts each target.

No torch, no network: reading this is cheap.
"""

from __future__ import annotations

import csv
import functools
from dataclasses import asdict, dataclass, field
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

    def metrics_json(self) -> dict[str, Any]:
        """Published metrics as stored in ``module.json`` (``cv`` and, where known, ``test``)."""
        out: dict[str, Any] = {}
        if self.cv is not None:
            out["cv"] = self.cv.to_json()
        if self.test is not None:
            out["test"] = self.test.to_json()
        return out


@dataclass
class TargetInfo:
    """A target as ``list-targets`` shows it."""

    name: str
    field: int | None
    unit: str
    group: str
    cv: Metrics | None = None
    test: Metrics | None = None
    in_catalogue: bool = True
    #: installed modules (name@version) that predict it
    modules: list[str] = field(default_factory=list)
    #: modules of the weights manifest, not installed, said to predict it
    available_in: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "field": self.field,
            "unit": self.unit,
            "group": self.group,
            "in_catalogue": self.in_catalogue,
            "cv": None if self.cv is None else self.cv.to_json(),
            "test": None if self.test is None else self.test.to_json(),
            "installed_modules": list(self.modules),
            "available_in": list(self.available_in),
        }


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
        )
        for r in rows
    )


def catalogue_by_name() -> dict[str, CatalogueEntry]:
    """The catalogue keyed by target name."""
    return {e.name: e for e in catalogue()}


def list_targets(*, installed: bool = True, manifest: bool = True) -> list[TargetInfo]:
    """Every catalogue target, then targets of installed modules not in the catalogue.

    Each entry lists the installed modules (``name@version``) that predict it
    and, from the packaged weights manifest, modules that would (not installed).
    Broken module folders are skipped here (``mimir predict`` reports them).
    """
    infos: dict[str, TargetInfo] = {
        e.name: TargetInfo(name=e.name, field=e.field, unit=e.unit, group=e.group, cv=e.cv, test=e.test)
        for e in catalogue()
    }
    installed_names: set[str] = set()
    if installed:
        from mimir.registry import scan_modules

        for spec in scan_modules().modules:
            installed_names.add(spec.name)
            for t in spec.targets:
                info = infos.get(t.name)
                if info is None:
                    info = infos[t.name] = TargetInfo(
                        name=t.name, field=t.field, unit=t.unit, group="", in_catalogue=False
                    )
                info.modules.append(f"{spec.name}@{spec.version}")
    if manifest:
        from mimir.registry import read_manifest

        try:
            entries = read_manifest()
        except Exception:  # a broken packaged manifest must not break list-targets
            entries = []
        for entry in entries:
            if entry.name in installed_names:
                continue
            for tname in entry.targets:
                if tname in infos:
                    infos[tname].available_in.append(entry.name)
    return list(infos.values())
