"""The NIfTI writer: nibabel's bytes, gzip at the chosen level, the sidecar's validity rule, the install hint."""

from __future__ import annotations

import builtins
import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")

from mimir.errors import UsageError  # noqa: E402
from mimir.outputs import nifti  # noqa: E402
from mimir.utils.install import extra_hint  # noqa: E402


def _affine() -> np.ndarray:
    a = np.diag([-2.23214293, -2.23214293, 3.0, 1.0])
    a[:3, 3] = [250.0, 194.2, -1106.0]
    return a


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_file_is_nibabels_own_bytes(dtype) -> None:
    """The streamed writer gives, once inflated, exactly what nibabel's to_bytes writes for the same image."""
    data = np.random.default_rng(1).random((7, 5, 40)).astype(dtype)  # 40 slices: three slabs
    aff = _affine()
    blob = b"".join(nifti.nifti_gz_chunks(data, aff, "mimir test"))
    img = nib.Nifti1Image(data, aff)
    img.set_qform(aff, code=1)
    img.set_sform(aff, code=1)
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = b"mimir test"
    assert gzip.decompress(blob) == img.to_bytes()
    back = nib.Nifti1Image.from_bytes(gzip.decompress(blob))
    assert np.array_equal(np.asanyarray(back.dataobj), data) and back.get_data_dtype() == dtype
    assert struct.unpack_from("<ff", gzip.decompress(blob), 112) == (1.0, 0.0)  # scl_slope, scl_inter: unscaled
    # the same volume gives the same file (no time stamp in the gzip header)
    assert blob == b"".join(nifti.nifti_gz_chunks(data, aff, "mimir test"))


def test_long_description_is_cut_to_the_field() -> None:
    data = np.zeros((2, 2, 2))
    blob = b"".join(nifti.nifti_gz_chunks(data, _affine(), "x" * 200))
    back = nib.Nifti1Image.from_bytes(gzip.decompress(blob))
    assert back.header["descrip"].item() == b"x" * nifti.DESCRIPTION_BYTES


def test_sidecar_written_last_and_checked(tmp_path: Path) -> None:
    data = np.ones((3, 3, 3))
    written = nifti.write_volumes(tmp_path, "s", [("water", data), ("ff", data.astype(np.float32))], _affine(),
                                  {"water": "w", "ff": "f"}, {"format": nifti.SIDECAR_FORMAT, "pipeline_version": "v",
                                                             "source": {"sha256": "abc"}})
    assert [p.name for p in written] == ["s_water.nii.gz", "s_ff.nii.gz", "s_volumes.json"]
    side = json.loads(written[-1].read_text())
    assert side["files"]["ff"]["dtype"] == "float32" and side["files"]["water"]["shape"] == [3, 3, 3]
    assert nifti.sidecar_valid(tmp_path, "s", "abc", ("water", "ff"), "v")
    assert not nifti.sidecar_valid(tmp_path, "s", "abd", ("water",), "v")  # another zip
    assert not nifti.sidecar_valid(tmp_path, "s", "abc", ("water",), "w")  # another pipeline
    assert not nifti.sidecar_valid(tmp_path, "s", "abc", ("water", "in"), "v")  # a contrast not written
    written[0].write_bytes(written[0].read_bytes()[:-10])  # a damaged file
    assert not nifti.sidecar_valid(tmp_path, "s", "abc", ("water",), "v")
    written[-1].write_text("{")
    assert nifti.read_sidecar(tmp_path, "s") is None


def test_missing_nibabel_is_one_line_with_the_extra(monkeypatch) -> None:
    real = builtins.__import__

    def no_nibabel(name, *args, **kwargs):  # noqa: ANN001, ANN202
        if name == "nibabel" or name.startswith("nibabel."):
            raise ImportError("No module named 'nibabel'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_nibabel)
    with pytest.raises(UsageError) as info:
        nifti.require_nibabel("preprocess --volumes")
    assert str(info.value) == (
        "mimir preprocess --volumes needs nibabel, which is not installed. " + nifti.INSTALL_HINT
    )
    assert nifti.INSTALL_HINT == extra_hint("volumes") and "[volumes]" in nifti.INSTALL_HINT
