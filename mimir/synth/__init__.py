"""Synthetic UK Biobank field-20201 subjects with known ground truth.

- :mod:`~mimir.synth.body`: the seeded body (tissues, organs) and its truth;
- :mod:`~mimir.synth.study`: the study drawn from it: six stations x four Dixon
  series at the real geometry (or ``small``), with the irregular variants;
- :mod:`~mimir.synth.followup`: follow-up visits (instance 3): the body with a chosen
  change, acquired again;
- :mod:`~mimir.synth.zips`: the study written as a field-20201 zip plus a
  ``{eid}.truth.json``;
- :mod:`~mimir.synth.dicom_writer` and :mod:`~mimir.synth.encodings`: the DICOM
  bytes, in the plain and the 19 other transfer syntaxes.

>>> from mimir.synth import generate_subject
>>> subject = generate_subject("zips/", seed=7)   # zips/1000008_20201_2_0.zip + truth
"""

from __future__ import annotations

from mimir.utils.lazy import lazy_getattr

_STUDY = "mimir.synth.study"
_ZIPS = "mimir.synth.zips"
_EXPORTS = {
    **dict.fromkeys(
        ["VARIANTS", "VARIANT_HELP", "SWAP_REGIONS", "GENERATOR_VERSION", "PIXEL_SPACING", "PIXEL_SPACING_TEXT",
         "FULL_STATIONS", "FULL_COLUMNS", "SMALL_STATIONS", "SMALL_COLUMNS", "KINDS",
         "SynthSubject", "SynthSeries", "SynthStudy", "build_study", "default_eid"],
        _STUDY,
    ),
    **dict.fromkeys(["MANIFEST_HEADER", "study_members", "study_zip_bytes", "generate_subject", "generate"], _ZIPS),
}
__all__ = list(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
