"""Preprocessing: a field-20201 zip to the 3x256x256 ``mimir-v1`` image. Pure NumPy, no torch.

Stages, data flowing one way (each module imports only those above it):

- :mod:`~mimir.preprocessing.reader`: the zip's DICOM slices (headers and pixels);
- :mod:`~mimir.preprocessing.stations`: slices grouped into the six stations, water paired with fat;
- :mod:`~mimir.preprocessing.fusion`: the stations resampled and fused into one volume per signal;
- :mod:`~mimir.preprocessing.imageops`: bit-exact resize, Otsu threshold, min-max scaling;
- :mod:`~mimir.preprocessing.projection`: the volumes projected into the 2-D image;
- :mod:`~mimir.preprocessing.qc`: the QC record (repairs, fat-water swaps) computed on the way;
- :mod:`~mimir.preprocessing.cache`: decoded images and QC records keyed by the zip's sha256;
- :mod:`~mimir.preprocessing.pipeline`: the entry points (:func:`preprocess`, :func:`load_input`).

>>> from mimir.preprocessing import preprocess
>>> image = preprocess("1000001_20201_2_0.zip")   # (3, 256, 256) uint8
>>> image, qc = preprocess_with_qc("1000001_20201_2_0.zip")   # qc.status, qc.flags, qc.stations
"""

from __future__ import annotations

from mimir.utils.lazy import lazy_getattr

_EXPORTS = {
    name: "mimir.preprocessing.pipeline"
    for name in ("preprocess", "preprocess_with_qc", "preprocess_volumes", "read_stations", "load_input",
                 "load_input_with_qc", "load_image", "PIPELINE_VERSION")
}
_EXPORTS["QCRecord"] = "mimir.preprocessing.qc"
__all__ = list(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
