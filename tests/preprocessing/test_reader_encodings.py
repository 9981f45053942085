"""Every valid DICOM encoding of a subject gives the same image as the file UK Biobank ships."""

from __future__ import annotations

import numpy as np
import pytest

from mimir.preprocessing.pipeline import preprocess
from mimir.synth import generate_subject
from mimir.synth.encodings import ENCODINGS, encoding_available, reencode_zip


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    zip_path = generate_subject(tmp_path_factory.mktemp("enc"), seed=5, small=True).zip_path
    return zip_path, preprocess(zip_path, cache=False)


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_encoding_gives_the_identical_image(original, tmp_path, encoding):
    if not encoding_available(encoding):
        pytest.skip(f"no encoder for {encoding} here (pip install 'ukb-mimir[codecs]')")
    zip_path, image = original
    other = reencode_zip(zip_path, tmp_path / f"{encoding}.zip", encoding)
    assert np.array_equal(preprocess(other, cache=False), image)


@pytest.mark.parametrize("encoding", ["explicit-le", "implicit-le", "undefined-length-sequence", "deflate",
                                      "no-preamble"])
def test_common_archive_encodings_stay_on_the_fast_path(original, tmp_path, encoding, monkeypatch):
    """No file of these encodings falls back to pydicom's general parser."""
    zip_path, image = original
    other = reencode_zip(zip_path, tmp_path / f"{encoding}.zip", encoding)

    import pydicom  # the reader imports it only for the fallback, and calls pydicom.dcmread from there

    def refuse(*args, **kwargs):
        raise AssertionError(f"{encoding}: a slice left the fast path")

    monkeypatch.setattr(pydicom, "dcmread", refuse)
    assert np.array_equal(preprocess(other, cache=False), image)
