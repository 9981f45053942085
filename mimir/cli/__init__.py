"""Command-line interface: a thin layer over the :mod:`mimir` Python API.

Each command lives in its own module and registers itself on :data:`app`.
"""

from mimir.cli import (  # noqa: F401  (registers commands)
    agegap_cmd,
    batch_cmd,
    calibrate_cmd,
    change_cmd,
    demo_cmd,
    evaluate_cmd,
    explain_cmd,
    fetch_cmd,
    predict_cmd,
    report_cmd,
    preprocess_cmd,
    qc_cmd,
    rap_cmd,
    reference_cmd,
    synth_cmd,
    targets_cmd,
    train_cmd,
)
from mimir.cli.app import app, main

__all__ = ["app", "main"]
