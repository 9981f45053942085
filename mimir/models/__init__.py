"""Models: the network, the module format, the registry of installed modules, downloads, targets.

- :mod:`~mimir.models.resnet`: the mean-variance ResNet50 (torchvision's parameter names);
- :mod:`~mimir.models.catalogue`: the published targets and their accuracy figures;
- :mod:`~mimir.models.modules`: ``module.json`` + safetensors members, MIMIR's format converted (re-exported from ``module_format``, ``module_store`` and ``mimir_original``);
- :mod:`~mimir.models.registry`: installed and built-in modules, the weights manifest;
- :mod:`~mimir.models.fetch`: verified, resumable, atomic downloads and imports;
- :mod:`~mimir.models.targets`: ``list-targets`` (catalogue joined with the registry).

Only :mod:`~mimir.models.resnet` (and the loading functions of
:mod:`~mimir.models.modules`) import torch, and only when called.
"""

from __future__ import annotations

from mimir.utils.lazy import lazy_getattr

_EXPORTS = {
    "ModuleSpec": "mimir.models.modules",
    "TargetSpec": "mimir.models.modules",
    "read_module": "mimir.models.modules",
    "write_module": "mimir.models.modules",
    "get_module": "mimir.models.registry",
    "installed_modules": "mimir.models.registry",
    "install_module": "mimir.models.registry",
    "fetch_weights": "mimir.models.fetch",
    "import_module": "mimir.models.fetch",
    "list_targets": "mimir.models.targets",
}
__all__ = list(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
