"""mimir: inference engine for UK Biobank neck-to-knee body MRI (field 20201).

The public API is imported lazily so that ``import mimir`` (and the CLI's
start-up) stays fast and does not load torch until a model is needed.

>>> import mimir
>>> image = mimir.preprocess("1000001_20201_2_0.zip")   # (3, 256, 256) uint8
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name -> module that defines it
_API = {
    "preprocess": "mimir.pipeline",
    "preprocess_volumes": "mimir.pipeline",
    "PIPELINE_VERSION": "mimir.pipeline",
    "read_stations": "mimir.pipeline",
    "generate_subject": "mimir.synth",
    "load_input": "mimir.pipeline",
    "load_image": "mimir.pipeline",
    "MimirError": "mimir.errors",
    "InputError": "mimir.errors",
    "predict": "mimir.inference",
    "Predictor": "mimir.inference",
    "SubjectResult": "mimir.predictions",
    "list_targets": "mimir.targets",
    "fetch_weights": "mimir.fetch",
    "import_module": "mimir.fetch",
    "install_module": "mimir.registry",
    "installed_modules": "mimir.registry",
    "get_module": "mimir.registry",
    "write_module": "mimir.modules",
    "read_module": "mimir.modules",
    "ModuleSpec": "mimir.modules",
    "TargetSpec": "mimir.modules",
    "ModuleError": "mimir.errors",
    "DownloadError": "mimir.errors",
    "train_module": "mimir.training",
    "TrainConfig": "mimir.training",
    "run_demo": "mimir.demo",
    "run_batch": "mimir.batch.runner",
    "BatchResult": "mimir.batch.runner",
    "merge_outputs": "mimir.batch.merge",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'mimir' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
