"""mimir: inference engine for UK Biobank neck-to-knee body MRI (field 20201).

The public API is imported lazily so that ``import mimir`` (and the CLI's
start-up) stays fast and does not load torch until a model is needed.

>>> import mimir
>>> image = mimir.preprocess("1000001_20201_2_0.zip")   # (3, 256, 256) uint8
>>> image, qc = mimir.preprocess_with_qc("1000001_20201_2_0.zip")   # qc.status, qc.flags
"""

from __future__ import annotations

from mimir import _moved
from mimir.utils.lazy import lazy_getattr

__version__ = "0.1.0"

#: public name -> module that defines it
_API = {
    "preprocess": "mimir.preprocessing.pipeline",
    "preprocess_volumes": "mimir.preprocessing.pipeline",
    "PIPELINE_VERSION": "mimir.preprocessing.pipeline",
    "read_stations": "mimir.preprocessing.pipeline",
    "generate_subject": "mimir.synth",
    "load_input": "mimir.preprocessing.pipeline",
    "load_image": "mimir.preprocessing.pipeline",
    "preprocess_with_qc": "mimir.preprocessing.pipeline",
    "load_input_with_qc": "mimir.preprocessing.pipeline",
    "QCRecord": "mimir.preprocessing.qc",
    "qc_files": "mimir.preprocessing.qc_table",
    "MimirError": "mimir.errors",
    "InputError": "mimir.errors",
    "predict": "mimir.inference.predictor",
    "Predictor": "mimir.inference.predictor",
    "SubjectResult": "mimir.inference.predictions",
    "list_targets": "mimir.models.targets",
    "fetch_weights": "mimir.models.fetch",
    "import_module": "mimir.models.fetch",
    "install_module": "mimir.models.registry",
    "installed_modules": "mimir.models.registry",
    "get_module": "mimir.models.registry",
    "write_module": "mimir.models.modules",
    "read_module": "mimir.models.modules",
    "ModuleSpec": "mimir.models.modules",
    "TargetSpec": "mimir.models.modules",
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


__getattr__ = lazy_getattr(__name__, _API)

# ``import mimir.pipeline`` and the other pre-0.2 paths keep working (with a DeprecationWarning)
_moved.install()
