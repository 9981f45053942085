"""What the derived tables join to the predictions: ages and visit dates; and writing the tables.

- :func:`ages_for`: chronological age at each prediction's visit from a phenotype
  table (UK Biobank field 21003 at the row's instance, in any column convention,
  or a plain ``age`` column; keyed by eid or by mimir's subject name).
- :func:`dates_from_table`: visit dates from field 53 ("Date of attending
  assessment centre") at each instance.
- :func:`dates_from_zips`: the acquisition date written in the subjects' own
  DICOM files (StudyDate, else AcquisitionDate, else SeriesDate).
- :func:`write_table` / :func:`write_summary`: CSV or Parquet, and the JSON
  summary, written atomically.
"""

from __future__ import annotations

import io
import json
import math
import os
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from mimir.analysis.tables import PhenotypeTable
from mimir.errors import UsageError
from mimir.utils.atomic import atomic_path, write_text
from mimir.utils.limits import check_regular_file

#: UK Biobank field "Age when attended assessment centre" (years).
AGE_FIELD = 21003
#: UK Biobank field "Date of attending assessment centre".
DATE_FIELD = 53
#: Plain column names taken as age in years when no field 21003 column is present.
AGE_COLUMNS = ("age", "age_years", "Age")
#: DICOM attributes read for the acquisition date, in order of preference.
DATE_ATTRIBUTES = ("StudyDate", "AcquisitionDate", "SeriesDate")
#: Largest DICOM member read for its date, bytes (a full-size slice is ~80 kB).
MAX_DATE_MEMBER_BYTES = 16 * 1024**2


def _keys(rows: pd.DataFrame, table: PhenotypeTable) -> pd.Series:
    return rows["name"].astype(str) if table.key == "name" else rows["eid"]


def ages_for(rows: pd.DataFrame, table: PhenotypeTable, column: str | None = None) -> pd.Series:
    """Age in years at each row's visit (``rows``: eid, instance, name), aligned with ``rows``.

    ``column`` names the age column; without it, field 21003 at each row's
    instance, else one of :data:`AGE_COLUMNS`. Refuses (one line) a table with no
    age column and rows without an age.
    """
    keys = _keys(rows, table)
    ages = pd.Series(np.nan, index=rows.index)
    if column is not None:
        ages[:] = table.values(column).reindex(keys.to_numpy()).to_numpy()
        source = column
    else:
        plain = next((c for c in AGE_COLUMNS if c in table.frame.columns), None)
        found: list[str] = []
        for inst in sorted(set(rows["instance"].dropna().astype(int))):
            col = table.find(AGE_FIELD, inst)
            col = col or plain
            if col is None:
                raise UsageError(f"has no age for instance {inst} (field {AGE_FIELD}: p21003_i{inst}, "
                                 f"21003-{inst}.0; or a column named age)", table.path,
                                 "Export field 21003 for the imaging visit, or pass --age-column.")
            sel = (rows["instance"] == inst).to_numpy()
            ages[sel] = table.values(col).reindex(keys[sel].to_numpy()).to_numpy()
            found.append(col)
        source = ", ".join(dict.fromkeys(found))
    missing = ~np.isfinite(ages.to_numpy(float))
    if missing.any():
        first = rows["name"][missing].iloc[0]
        raise UsageError(f"has no age ({source}) for {int(missing.sum())} of {len(rows)} subject visits "
                         f"(first: {first})", table.path,
                         "Every subject needs its age at the visit: add them or leave those subjects out.")
    bad = (ages < 0) | (ages > 150)
    if bad.any():
        raise UsageError(f"column {source} holds an age outside 0-150 years ({float(ages[bad].iloc[0]):g})",
                         table.path, "Ages are in years (field 21003).")
    return ages


def dates_from_table(table: PhenotypeTable, instances: list[int], columns: list[str] | None = None) -> pd.DataFrame:
    """Visit dates (eid, instance, date, source) from field 53 at ``instances`` (empty cells left out).

    ``columns`` may name the date column of each instance instead (same order as ``instances``).
    """
    if columns is not None and len(columns) != len(instances):
        raise UsageError(f"{len(columns)} date column(s) for {len(instances)} visits", table.path,
                         "Name one date column per visit, in the order of the visits.")
    parts = []
    for k, inst in enumerate(instances):
        col = columns[k] if columns else table.find(DATE_FIELD, inst)
        if col is None:
            raise UsageError(f"has no visit date for instance {inst} (field {DATE_FIELD}: p53_i{inst}, 53-{inst}.0)",
                             table.path, "Export field 53 for both visits, or leave out --dates.")
        d = table.dates(col).dropna()
        parts.append(pd.DataFrame({"eid": d.index, "instance": inst, "date": d.to_numpy(),
                                   "source": f"{col} ({table.path.name if table.path else 'table'})"}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["eid", "instance", "date", "source"])


def _zip_date(path: Path) -> pd.Timestamp | None:
    """The acquisition date in the first DICOM member of a subject zip, or None."""
    import pydicom

    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if info.is_dir() or info.file_size > MAX_DATE_MEMBER_BYTES or info.filename.endswith(
                        (".cvs", ".csv", ".txt")):
                    continue
                with zf.open(info) as fh:  # at most the cap, whatever the header claims
                    data = fh.read(MAX_DATE_MEMBER_BYTES + 1)
                if len(data) > MAX_DATE_MEMBER_BYTES:
                    continue
                try:
                    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True,
                                         specific_tags=list(DATE_ATTRIBUTES))
                except Exception:  # noqa: BLE001 - not a DICOM member: try the next
                    continue
                for attr in DATE_ATTRIBUTES:
                    text = str(getattr(ds, attr, "") or "").strip()
                    if len(text) == 8 and text.isdigit():
                        return pd.Timestamp(f"{text[:4]}-{text[4:6]}-{text[6:]}")
                return None
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError):  # unreadable: no date
        return None
    return None


def dates_from_zips(folder: str | os.PathLike[str], rows: pd.DataFrame) -> pd.DataFrame:
    """Visit dates (eid, instance, date, source) read from ``folder/<name>.zip`` of each row's subject.

    Subjects whose zip is absent or holds no readable date are left out (their
    per-year columns stay empty).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError("is not a folder", folder, "Pass the folder holding the subjects' zips.")
    out = []
    for (eid, inst), name in rows.drop_duplicates(subset=["eid", "instance"]).set_index(["eid", "instance"])[
            "name"].items():
        path = folder / f"{name}.zip"
        if not path.is_file():
            continue
        check_regular_file(path, "subject zip")
        date = _zip_date(path)
        if date is not None:
            out.append({"eid": eid, "instance": inst, "date": date, "source": "DICOM StudyDate"})
    return pd.DataFrame(out, columns=["eid", "instance", "date", "source"])


def write_table(frame: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Write ``frame`` as CSV, or as Parquet when ``path`` ends in ``.parquet`` (needs pyarrow); atomically."""
    path = Path(path)
    if path.suffix.lower() in (".parquet", ".pq"):
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise UsageError("writing Parquet needs pyarrow, which is not installed", path,
                             "Install it (pip install pyarrow) or write a .csv file.") from None
        with atomic_path(path, suffix=".parquet") as tmp:
            frame.to_parquet(tmp, index=False)
        return
    write_text(path, frame.to_csv(index=False, lineterminator="\n", float_format="%.10g"))


def _clean(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        return _clean(value.item())
    return value


def write_summary(summary: dict[str, object], path: str | os.PathLike[str]) -> None:
    """Write an aggregate summary as JSON (NaN as null), atomically."""
    write_text(path, json.dumps(_clean(summary), indent=2) + "\n")


def read_eids(path: str | os.PathLike[str]) -> set[int]:
    """Participant ids listed in a file: one per line (a header line and further columns are ignored),
    or a CSV/TSV/Parquet table with an eid column."""
    from mimir.analysis.tables import EID_COLUMNS, read_frame

    path = Path(path)
    if path.suffix.lower() in (".parquet", ".pq"):
        frame = read_frame(path, "eid list")
    else:
        frame = read_frame(path, "eid list") if path.suffix.lower() in (".csv", ".tsv") else None
        if frame is not None and not any(c in frame.columns for c in EID_COLUMNS):
            frame = None
    if frame is not None:
        col = next((c for c in EID_COLUMNS if c in frame.columns), None)
        if col is None:
            raise UsageError(f"has no eid column (looked for {', '.join(EID_COLUMNS)})", path,
                             "List one eid per line, or name the column eid.")
        values = [str(v) for v in frame[col].dropna()]
    else:
        check_regular_file(path, "eid list")
        from mimir.analysis.tables import _check_size

        _check_size(path, "eid list")
        lines = [ln.replace("\t", ",").split(",")[0].strip() for ln in path.read_text(encoding="utf-8").splitlines()]
        lines = [ln for ln in lines if ln]
        if lines and not lines[0].isdigit():
            lines = lines[1:]  # a header
        values = lines
    eids = set()
    for i, v in enumerate(values):
        if not v.strip().isdigit():
            raise UsageError(f"line {i + 1} holds {v!r}, not an eid", path, "List whole-number participant ids.")
        eids.add(int(v))
    if not eids:
        raise UsageError("lists no eids", path, "List the reference subjects' eids, one per line.")
    return eids


def check_outputs(output: Path | None, summary: Path | None) -> Path:
    """The table's path (``.csv`` or ``.parquet``), with it and the summary's checked writable before any work."""
    from mimir.utils.atomic import check_writable_file

    if output is None:
        raise UsageError("missing option -o/--output", hint="Say where to write the table (.csv or .parquet).")
    if output.suffix.lower() not in (".csv", ".parquet", ".pq"):
        raise UsageError(f"unknown output format {output.suffix or '(no extension)'!r}", output,
                         "Give a .csv or .parquet file name.")
    check_writable_file(output)
    if summary is not None:
        check_writable_file(summary)
    return output
