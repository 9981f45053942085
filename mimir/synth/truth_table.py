"""The truth of synthetic subjects as one reference table, for ``mimir evaluate`` and ``mimir calibrate``.

One row per visit, keyed by mimir's subject name (``1000007_20201_2_0``,
the zip's name without ``.zip``), so that the first and the follow-up visit of
one eid are two rows; the target columns are named as ``phantom-demo``'s
targets, so mimir's reference-table reader matches them without ``--map``
(docs/evaluate.md: the plain convention). Values are written with every digit
of the truth files (Python's shortest round-trip repr).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable
from typing import Any

from mimir.synth.study import TRUTH_VALUES
from mimir.utils.atomic import write_text

#: The table's columns, in order: the subject name, sex (F/M), age in whole years, then the truth values.
TRUTH_TABLE_COLUMNS: tuple[str, ...] = ("name", "sex", "age", *TRUTH_VALUES)


def truth_table_text(subjects: Iterable[tuple[str, dict[str, Any]]]) -> str:
    """The CSV text of the table for ``(name, truth)`` pairs, in the order given.

    ``name``: the subject's name (its zip's file name without ``.zip``);
    ``truth``: the subject's truth record (what ``{eid}.truth.json`` holds).
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(TRUTH_TABLE_COLUMNS)
    for name, truth in subjects:
        writer.writerow([name, truth["sex"], int(truth["age"]), *(repr(float(truth[k])) for k in TRUTH_VALUES)])
    return buf.getvalue()


def write_truth_table(path: str | os.PathLike[str], subjects: Iterable[tuple[str, dict[str, Any]]]) -> None:
    """Write :func:`truth_table_text` to ``path`` atomically (CSV)."""
    write_text(path, truth_table_text(subjects))
