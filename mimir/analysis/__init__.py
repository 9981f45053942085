"""Analyses of predictions: joined with reference tables, compared between visits, corrected for age.

- :mod:`~mimir.analysis.tables`: reading mimir's prediction files (any layout) into one long
  frame, and UK Biobank phenotype tables in any of their column conventions.
- :mod:`~mimir.analysis.metrics`: agreement and calibration metrics (ICC(2,1), Bland-Altman,
  R2, MAE, MAPE, coverage, the original MIMIR calibration curve, AUCE, sparsification).
- :mod:`~mimir.analysis.evaluate`: ``mimir evaluate``, an export-safe folder of those metrics.
- :mod:`~mimir.analysis.calibrate`: ``mimir calibrate``, interval refit and derived module.
- :mod:`~mimir.analysis.agegap`: the age gap, corrected for regression to the mean, cross-fitted.
- :mod:`~mimir.analysis.change`: visit-to-visit change with its standard error, z and flag.
- :mod:`~mimir.analysis.joins`: ages and visit dates joined to predictions; the tables written.

>>> from mimir.analysis import read_predictions, PhenotypeTable
>>> preds = read_predictions("out/predictions.csv")
>>> weight = PhenotypeTable.read("phenotypes.csv").values("p21002_i2")
>>> result = evaluate("out/predictions.csv", "phenotypes.csv", "evaluation/")
"""

from __future__ import annotations

from mimir.utils.lazy import lazy_getattr

_EXPORTS = {
    "read_predictions": "mimir.analysis.tables",
    "PhenotypeTable": "mimir.analysis.tables",
    "parse_field_column": "mimir.analysis.tables",
    "PREDICTION_COLUMNS": "mimir.analysis.tables",
    "evaluate": "mimir.analysis.evaluate",
    "calibrate_module": "mimir.analysis.calibrate",
    "correct_age_gap": "mimir.analysis.agegap",
    "age_gap_table": "mimir.analysis.agegap",
    "change_statistics": "mimir.analysis.change",
    "visit_change": "mimir.analysis.change",
}
__all__ = list(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
