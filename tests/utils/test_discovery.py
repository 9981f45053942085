"""One folder search for every command (predict, batch, explain, qc, fit-reference)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mimir.errors import UsageError
from mimir.utils.discovery import expand, list_paths


def _tree(root: Path) -> None:
    (root / "a" / "deep").mkdir(parents=True)
    for rel in ("1000001_20201_2_0.zip", "a/1000002_20201_2_0.zip", "a/deep/1000003_20201_3_0.zip",
                "a/1000004_20201_2_0.npy", "a/notes.zip", "a/.1000005_20201_2_0.zip", "readme.txt"):
        (root / rel).write_bytes(b"x")


def test_folders_are_searched_recursively_for_subject_files_only(tmp_path: Path) -> None:
    _tree(tmp_path)
    found = [Path(p).relative_to(tmp_path).as_posix() for p in list_paths(tmp_path)]
    assert found == ["1000001_20201_2_0.zip", "a/1000002_20201_2_0.zip", "a/1000004_20201_2_0.npy",
                     "a/deep/1000003_20201_3_0.zip"]


def test_expand_keeps_named_files_narrows_folders_and_drops_repeats(tmp_path: Path) -> None:
    _tree(tmp_path)
    named = str(tmp_path / "a" / "notes.zip")
    zips = expand([str(tmp_path), named, named], suffixes=(".zip",))
    assert [Path(p).name for p in zips] == ["1000001_20201_2_0.zip", "1000002_20201_2_0.zip",
                                            "1000003_20201_3_0.zip", "notes.zip"]
    assert len(expand([str(tmp_path)])) == 4  # zips and images


def test_a_folder_without_subject_files_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("nothing here")
    with pytest.raises(UsageError, match=r"holds no subject zips \(\*_20201_\*_\*\.zip\), in it or its subfolders"):
        expand([str(tmp_path)], suffixes=(".zip",))


def test_qc_and_fit_reference_search_folders_like_predict(tmp_path: Path) -> None:
    from mimir.cli.predict_cmd import expand_inputs as predict_inputs
    from mimir.inference.reference import expand_inputs as reference_inputs

    _tree(tmp_path)
    files, refused = predict_inputs([str(tmp_path)])
    assert not refused and files == reference_inputs([str(tmp_path)])
