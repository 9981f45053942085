"""``list-targets``: the catalogue joined with the installed modules and the manifest.

:func:`list_targets` returns every target of the published catalogue
(:mod:`mimir.models.catalogue`), then the targets of every installed module
(built-in ones included) that the catalogue lacks, and says which installed
module predicts each target and which manifest module would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mimir.models.catalogue import Metrics, catalogue
from mimir.models.registry import read_manifest, scan_modules


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
