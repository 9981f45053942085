"""Atomic writes: all or nothing, normal permissions."""

from __future__ import annotations

import os
import stat

import pytest

from mimir.utils import atomic


def test_write_text_and_mode(tmp_path):
    dest = tmp_path / "sub" / "out.csv"
    atomic.write_text(dest, "a,b\n")
    assert dest.read_text() == "a,b\n"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in dest.parent.iterdir()] == ["out.csv"]


def test_failure_leaves_old_file_and_no_temporary(tmp_path):
    dest = tmp_path / "out.txt"
    dest.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(dest) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert dest.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
