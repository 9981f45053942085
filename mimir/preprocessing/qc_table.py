"""``mimir qc``: the QC table of subject zips, without any module.

One row per input, columns :data:`QC_COLUMNS`: ``name``, ``qc_status``,
``qc_flags`` (codes joined with ";", see docs/qc.md), for each station N = 1..6
(head first) the numbers behind the swap decision (``sN_edge_ff``: median fat
fraction 0-1 at the body's outer edge; ``sN_edge_low``: share 0-1 of edge
samples with fat fraction < 0.5; ``sN_seam_corr``: correlation -1..1 of the
fat-fraction maps of stations N and N+1 in their overlap), and ``error``
(why an input could not be read; its QC columns are then empty). Inputs are
preprocessed through the image cache, so a later ``predict`` or ``batch``
finds them decoded.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from mimir.errors import MimirError
from mimir.preprocessing.pipeline import preprocess_with_qc
from mimir.preprocessing.qc import QCRecord
from mimir.utils import atomic

#: Stations reported per row (a field-20201 zip has six).
STATIONS = 6
#: Per-station columns, ``{n}`` the station number.
STATION_COLUMNS = ("s{n}_edge_ff", "s{n}_edge_low", "s{n}_seam_corr")
#: The columns of the QC table, in order.
QC_COLUMNS: tuple[str, ...] = (
    "name", "qc_status", "qc_flags",
    *(c.format(n=n) for n in range(1, STATIONS + 1) for c in STATION_COLUMNS),
    "error",
)


def subject_name(path: str | os.PathLike[str]) -> str:
    """The file name up to its first dot (the row name ``predict`` uses)."""
    return Path(path).name.split(".")[0]


def qc_row(name: str, record: QCRecord | None, error: str = "") -> dict[str, Any]:
    """One row of the QC table (numbers rounded to 4 decimals; empty where unknown)."""
    row: dict[str, Any] = dict.fromkeys(QC_COLUMNS, "")
    row["name"] = name
    row["error"] = " ".join(error.split())
    if record is not None:
        row["qc_status"] = record.status
        row["qc_flags"] = ";".join(record.flags)
        for s in record.stations[:STATIONS]:
            for col, value in zip(STATION_COLUMNS, (s.edge_ff, s.edge_low, s.seam_corr)):
                row[col.format(n=s.station)] = "" if value is None else f"{value:.4f}"
    return row


def qc_files(
    paths: Sequence[str | os.PathLike[str]],
    *,
    cache: bool = True,
    on_error: Callable[[str], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """QC table rows for subject zips, in input order.

    An input that cannot be read gets a row with ``error`` set (and
    ``on_error(message)`` is called); a ``.npy`` image has no QC (it lacks the
    stations), so its row says so in ``error``.
    """
    rows = []
    for path in paths:
        name = subject_name(path)
        if str(path).lower().endswith(".npy"):
            message = f"{path}: a .npy image carries no QC record; give the subject zip"
            rows.append(qc_row(name, None, message))
            if on_error is not None:
                on_error(message)
        else:
            try:
                _, record = preprocess_with_qc(path, cache=cache)
                rows.append(qc_row(name, record))
            except MimirError as exc:
                rows.append(qc_row(name, None, str(exc)))
                if on_error is not None:
                    on_error(str(exc))
            except Exception as exc:  # noqa: BLE001 - one odd file must not stop the screening
                message = f"{path}: unexpected error while reading ({type(exc).__name__}: {exc})"
                rows.append(qc_row(name, None, message))
                if on_error is not None:
                    on_error(message)
        if on_progress is not None:
            on_progress(1)
    return rows


def write_qc_csv(path: str | os.PathLike[str], rows: Iterable[dict[str, Any]]) -> None:
    """Write the QC table atomically."""
    with atomic.atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(QC_COLUMNS), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
