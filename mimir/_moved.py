"""Old import paths of modules that moved when the package was laid out by stage.

Until version 0.2 the modules sat flat in ``mimir/``; notebooks may still say
``import mimir.pipeline`` or ``from mimir.inference import Predictor``. Such an
import keeps working: it returns the module at its new place (the same module
object) and emits a :class:`DeprecationWarning` naming that place.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from types import ModuleType

#: old module path -> new module path
MOVED = {
    "mimir.atomic": "mimir.utils.atomic",
    "mimir.hashing": "mimir.utils.hashing",
    "mimir.paths": "mimir.utils.paths",
    "mimir.memory": "mimir.utils.memory",
    "mimir.devices": "mimir.utils.devices",
    "mimir.dicom_reader": "mimir.preprocessing.reader",
    "mimir.stations": "mimir.preprocessing.stations",
    "mimir.fusion": "mimir.preprocessing.fusion",
    "mimir.projection": "mimir.preprocessing.projection",
    "mimir.imageops": "mimir.preprocessing.imageops",
    "mimir.pipeline": "mimir.preprocessing.pipeline",
    "mimir.cache": "mimir.preprocessing.cache",
    "mimir.png": "mimir.outputs.preview",
    "mimir.writers": "mimir.outputs.writers",
    "mimir.resnet": "mimir.models.resnet",
    "mimir.modules": "mimir.models.modules",
    "mimir.registry": "mimir.models.registry",
    "mimir.fetch": "mimir.models.fetch",
    "mimir.targets": "mimir.models.targets",
    "mimir.predictions": "mimir.inference.predictions",
}


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, new: str) -> None:
        self.new = new

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(
            f"{spec.name} moved to {self.new}; import it from there (the old path will be removed)",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.import_module(self.new)

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the new module is already imported."""


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        new = MOVED.get(fullname)
        if new is None:
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(new))


def install() -> None:
    """Serve the old paths (idempotent)."""
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
