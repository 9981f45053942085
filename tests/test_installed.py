"""The tests exercise the installed distribution, not only the folder they run beside.

The package is the top-level folder ``mimir/``, so a Python started in the
repository imports that folder whether or not it is installed. These tests make
sure the folder *is* the installed package (the editable install of the
``ukb-mimir`` distribution points at it), that the command-line entry point and
the C extension are there, and that a wheel built from the tree carries every
file of the package: a data file or template left out of ``package-data`` would
otherwise pass here and fail on a user's machine.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

import mimir

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "mimir"
DIST = "ukb-mimir"


def _package_files() -> set[str]:
    """Every file of the package that a wheel must carry (sources, templates, data), relative to the repo."""
    skip_suffixes = {".pyc", ".so", ".pyd"}
    out = set()
    for path in PACKAGE.rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix not in skip_suffixes:
            out.add(path.relative_to(REPO).as_posix())
    return out


def test_the_imported_package_is_the_installed_distribution() -> None:
    dist = metadata.distribution(DIST)  # raises PackageNotFoundError when not installed
    assert Path(mimir.__file__).resolve().parent == PACKAGE
    # the installed top-level import resolves to this folder (editable install) from any directory
    probe = subprocess.run(
        [sys.executable, "-c", "import mimir, pathlib; print(pathlib.Path(mimir.__file__).resolve().parent)"],
        cwd="/",
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(probe.stdout.strip()) == PACKAGE
    scripts = {ep.name: ep.value for ep in dist.entry_points if ep.group == "console_scripts"}
    assert scripts == {"mimir": "mimir.cli:main"}
    assert dist.metadata["Name"] == DIST


def test_no_other_distribution_claims_the_import_name() -> None:
    """An old ``mimir`` distribution of this project (or PyPI's unrelated one) left in the venv would shadow ours."""
    owners = metadata.packages_distributions().get("mimir", [])
    assert set(owners) == {DIST}


def test_no_broken_links_in_the_package() -> None:
    """``mimir/data/weights_manifest.json`` links to the top-level manifest; a moved folder must not break it."""
    broken = [p.relative_to(REPO).as_posix() for p in PACKAGE.rglob("*") if p.is_symlink() and not p.exists()]
    assert not broken


def test_the_c_extension_was_built() -> None:
    from mimir.preprocessing import kernels

    assert kernels.available(), "the C extension mimir.preprocessing._kernels was not built by pip install"


@pytest.mark.slow
def test_a_wheel_of_the_tree_carries_every_package_file(tmp_path: Path) -> None:
    """Built from the files a clone has (tracked, or new and not ignored), as a user's ``pip install`` sees them."""
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout: the files of a clone cannot be listed")
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO, capture_output=True, check=True
    ).stdout.decode().split("\0")
    tree = tmp_path / "tree"
    for rel in filter(None, listed):
        src = REPO / rel
        if src.is_file():  # a file deleted in the work tree but still in the index is not part of the tree
            (tree / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, tree / rel)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(tree)],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheels.glob("ukb_mimir-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    missing = sorted(_package_files() - names)
    assert not missing, f"files of the package missing from the wheel: {missing}"
    assert any(n.startswith("mimir/preprocessing/_kernels") and n.endswith((".so", ".pyd")) for n in names)
