"""Reading what the analyses join: mimir's prediction files, and UK Biobank phenotype tables.

Two readers, both returning pandas DataFrames:

- :func:`read_predictions` reads any file that ``mimir predict``, ``batch`` or
  ``merge`` wrote (wide CSV, long CSV, JSON, Parquet) into one *long* frame:
  one row per subject and target, with the columns of :data:`PREDICTION_COLUMNS`
  (values in the target's display unit, variance in the unit squared).
- :class:`PhenotypeTable` reads a phenotype table keyed by participant in any of
  UK Biobank's column conventions (the RAP's ``p21002_i2``, with or without the
  ``participant.`` prefix, with or without ``_a0``; the showcase's ``21002-2.0``;
  R's ``f.21002.2.0``) or with plain column names, and hands out one field at one
  instance as a float Series indexed by eid.

Both refuse a bad file in one line (:class:`~mimir.errors.UsageError`): which file,
what is wrong, what to do. Sizes are checked before a file is parsed.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from mimir.errors import MimirError, UsageError
from mimir.utils.limits import Limit, check_regular_file, limit_hint, loads_guarded

#: Largest prediction or phenotype file read, bytes (a UK Biobank-wide table of a few fields is tens of MB).
MAX_TABLE_BYTES = Limit("MIMIR_MAX_TABLE_BYTES", 4 * 1024**3, "bytes in a prediction or phenotype table",
                        "100,000 subjects x 71 targets in long CSV is about 2 GB")

#: Columns of the long frame :func:`read_predictions` returns, in this order.
PREDICTION_COLUMNS = (
    "name", "eid", "instance", "qc_status", "qc_flags", "module", "module_version", "intended_use",
    "ood_score", "ood_flag", "target", "key", "field", "unit", "mean", "variance", "sd", "ci_low", "ci_high",
    "level",
)

_WIDE_VALUE = re.compile(r"^(?P<key>.+)_(?P<what>mean|variance|ci_low|ci_high)_in_(?P<unit>.*)$")
_BASE_WIDE = ("name", "eid", "instance", "qc_status", "qc_flags", "ci_level")
_LONG = ("name", "eid", "instance", "qc_status", "qc_flags", "module", "module_version", "intended_use",
         "ood_score", "target", "field", "unit", "mean", "variance", "sd", "ci_low", "ci_high", "level")


def _check_size(path: Path, what: str) -> None:
    st = check_regular_file(path, what)
    if st.st_size > MAX_TABLE_BYTES.value():
        raise UsageError(f"{what} is larger than {MAX_TABLE_BYTES.value()} {MAX_TABLE_BYTES.what}", path,
                         limit_hint(MAX_TABLE_BYTES, st.st_size))


def _table_kind(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes[-1:] == [".parquet"] or suffixes[-1:] == [".pq"]:
        return "parquet"
    if suffixes[-1:] == [".json"]:
        return "json"
    if suffixes[-1:] in ([".tsv"], [".tab"], [".txt"]) or suffixes[-2:] in ([".tsv", ".gz"], [".txt", ".gz"]):
        return "tsv"
    return "csv"


def read_frame(path: str | os.PathLike[str], what: str = "table") -> pd.DataFrame:
    """A CSV, TSV (``.tsv``, ``.txt``, tab-separated) or Parquet file as a DataFrame of strings and numbers.

    Columns are read as text (``dtype=str``, empty cells as NaN) for CSV/TSV, so
    eids and codes keep their exact spelling; Parquet keeps its own types.
    """
    path = Path(path)
    _check_size(path, what)
    kind = _table_kind(path)
    try:
        if kind == "parquet":
            try:
                return pd.read_parquet(path)
            except ImportError:
                raise UsageError("reading Parquet needs pyarrow, which is not installed", path,
                                 "Install it (pip install pyarrow) or pass a CSV file.") from None
        sep = "\t" if kind == "tsv" else ","
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_values=[""], low_memory=False)
    except UsageError:
        raise
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(f"is not a readable {kind.upper()} {what} ({first})", path,
                         "Pass the file as mimir or the UK Biobank export wrote it.") from None


def _float(value: Any) -> float:
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _int_or_none(value: Any) -> int | None:
    f = _float(value)
    return int(f) if math.isfinite(f) and f == int(f) else None


# --------------------------------------------------------------------------- predictions


def _ood_flag(module: str, flags: str | float | None, score: float) -> bool:
    text = flags if isinstance(flags, str) else ""
    if f"out_of_distribution:{module}" in text.split(";"):
        return True
    return bool(math.isfinite(score) and score > 1.0)


def _target_fields(modules: list[str]) -> dict[tuple[str, str], tuple[int | None, str]]:
    """(module, target) -> (field, unit) from the installed modules, else the published catalogue."""
    from mimir.models.catalogue import catalogue_by_name

    from mimir.models.registry import get_module

    out: dict[tuple[str, str], tuple[int | None, str]] = {}
    for module in modules:
        try:
            spec = get_module(module)
        except MimirError:  # a module that is not installed here is simply not a source
            continue
        for t in spec.targets:
            out[(module, t.name)] = (t.field, t.unit)
    for name, entry in catalogue_by_name().items():
        for module in modules:
            out.setdefault((module, name), (entry.field, entry.unit))
    return out


def _module_targets(modules: list[str]) -> dict[str, list[str]]:
    from mimir.models.registry import get_module

    found: dict[str, list[str]] = {}
    for module in modules:
        try:
            found[module] = [t.name for t in get_module(module).targets]
        except MimirError:
            continue
    return found


def _from_wide(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    cols = list(df.columns)
    modules = [c[: -len("_version")] for c in cols if c.endswith("_version") and f"{c[:-8]}_intended_use" in cols]
    value_cols = [c for c in cols if _WIDE_VALUE.match(c)]
    keys: list[tuple[str, str]] = []  # (key, unit) in column order
    for c in value_cols:
        m = _WIDE_VALUE.match(c)
        assert m is not None
        if m["what"] == "mean":
            keys.append((m["key"], m["unit"]))
    if not modules:
        raise UsageError("is a CSV without mimir's module columns (<module>_version)", path,
                         "Pass a file written by mimir predict, batch or merge.")
    # which module predicted each key: '<module>.<target>' keys say it; a plain key belongs to the first
    # module that predicts that target (docs/outputs.md), which needs the module's target list.
    owner: dict[str, tuple[str, str]] = {}
    targets_of = _module_targets(modules) if len(modules) > 1 else {modules[0]: [k for k, _ in keys]}
    for key, _unit in keys:
        mod, _, target = key.partition(".")
        if target and mod in modules:
            owner[key] = (mod, target)
            continue
        for module in modules:
            if key in targets_of.get(module, []):
                owner[key] = (module, key)
                break
        else:
            raise UsageError(
                f"the wide CSV holds {len(modules)} modules and the module of target {key!r} cannot be told "
                "(its module is not installed here)", path,
                "Pass the run's predictions.json or a --format long CSV, which name the module of every value.")
    fields = _target_fields(modules)
    rows = []
    level = df["ci_level"] if "ci_level" in df else pd.Series([math.nan] * len(df))
    for i in range(len(df)):
        rec = df.iloc[i]
        for key, unit in keys:
            module, target = owner[key]
            score = _float(rec.get(f"{module}_ood_score"))
            mean = _float(rec.get(f"{key}_mean_in_{unit}"))
            var = _float(rec.get(f"{key}_variance_in_{unit}"))
            rows.append({
                "name": rec["name"], "eid": _int_or_none(rec.get("eid")), "instance": _int_or_none(rec.get("instance")),
                "qc_status": rec.get("qc_status"), "qc_flags": rec.get("qc_flags"), "module": module,
                "module_version": rec.get(f"{module}_version"), "intended_use": rec.get(f"{module}_intended_use"),
                "ood_score": score, "ood_flag": _ood_flag(module, rec.get("qc_flags"), score), "target": target,
                "key": key, "field": fields.get((module, target), (None, unit))[0], "unit": unit, "mean": mean,
                "variance": var, "sd": math.sqrt(var) if var >= 0 else math.nan,
                "ci_low": _float(rec.get(f"{key}_ci_low_in_{unit}")),
                "ci_high": _float(rec.get(f"{key}_ci_high_in_{unit}")), "level": _float(level.iloc[i]),
            })
    return pd.DataFrame(rows, columns=list(PREDICTION_COLUMNS))


def _from_long(df: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame({
        "name": df["name"], "eid": [_int_or_none(v) for v in df["eid"]],
        "instance": [_int_or_none(v) for v in df["instance"]], "qc_status": df["qc_status"],
        "qc_flags": df["qc_flags"], "module": df["module"], "module_version": df["module_version"],
        "intended_use": df["intended_use"], "ood_score": [_float(v) for v in df["ood_score"]],
    })
    out["ood_flag"] = [_ood_flag(m, f, s) for m, f, s in zip(out["module"], out["qc_flags"], out["ood_score"])]
    out["target"] = df["target"]
    # the key as the wide file would name it: the module of a target's first occurrence keeps the plain name
    first: dict[str, str] = {}
    for m, t in zip(df["module"], df["target"]):
        first.setdefault(t, m)
    out["key"] = [t if first[t] == m else f"{m}.{t}" for m, t in zip(df["module"], df["target"])]
    out["field"] = [_int_or_none(v) for v in df["field"]]
    out["unit"] = df["unit"]
    for c in ("mean", "variance", "sd", "ci_low", "ci_high", "level"):
        out[c] = [_float(v) for v in df[c]]
    return out[list(PREDICTION_COLUMNS)].reset_index(drop=True)


def _from_json(data: Any, path: Path) -> pd.DataFrame:
    if not isinstance(data, list):
        raise UsageError("is JSON but not a list of subjects", path, "Pass a predictions.json written by mimir.")
    rows = []
    for subject in data:
        if not isinstance(subject, dict) or not isinstance(subject.get("targets"), dict):
            raise UsageError("holds an entry that is not a mimir subject (no 'targets')", path,
                             "Pass a predictions.json written by mimir.")
        qc = subject.get("qc") or {}
        flags = ";".join(str(f) for f in qc.get("flags") or [])
        scores = subject.get("ood_scores") or {}
        for key, t in subject["targets"].items():
            module = str(t.get("module", ""))
            score = _float(scores.get(module))
            rows.append({
                "name": subject.get("name"), "eid": _int_or_none(subject.get("eid")),
                "instance": _int_or_none(subject.get("instance")), "qc_status": qc.get("status"), "qc_flags": flags,
                "module": module, "module_version": t.get("module_version"), "intended_use": t.get("intended_use"),
                "ood_score": score, "ood_flag": _ood_flag(module, flags, score), "target": t.get("target", key),
                "key": key, "field": _int_or_none(t.get("field")), "unit": t.get("unit"), "mean": _float(t.get("value")),
                "variance": _float(t.get("variance")), "sd": _float(t.get("sd")), "ci_low": _float(t.get("ci_low")),
                "ci_high": _float(t.get("ci_high")), "level": _float(t.get("level")),
            })
    return pd.DataFrame(rows, columns=list(PREDICTION_COLUMNS))


def read_predictions(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Every prediction in a mimir output file, as a long frame (:data:`PREDICTION_COLUMNS`).

    Accepts the wide CSV (schema 2; the module of each plain-named target is taken
    from the installed module when the file holds several modules), the long CSV,
    the JSON and Parquet files of either layout. ``eid`` and ``instance`` are ints or
    None (names that are not ``<eid>_<field>_<instance>_<array>``); ``field`` is the
    UK Biobank field id or None; numbers are floats (NaN where missing);
    ``ood_flag`` is True where the subject was flagged out of distribution for the
    row's module.
    """
    path = Path(path)
    kind = _table_kind(path)
    if kind == "json":
        _check_size(path, "prediction file")
        try:
            text = path.read_text(encoding="utf-8")
            data = loads_guarded(text)
        except (UnicodeDecodeError, ValueError) as exc:
            raise UsageError(f"is not readable JSON ({str(exc).splitlines()[0]})", path,
                             "Pass a predictions.json written by mimir.") from None
        return _from_json(data, path)
    df = read_frame(path, "prediction file")
    cols = set(df.columns)
    if set(_LONG) <= cols:
        return _from_long(df)
    if set(_BASE_WIDE[:1]) <= cols and any(_WIDE_VALUE.match(str(c)) for c in df.columns):
        return _from_wide(df, path)
    raise UsageError("is not a mimir prediction file (neither the wide nor the long layout)", path,
                     "Pass predictions.csv/.json/.parquet as mimir predict, batch or merge wrote it.")


# --------------------------------------------------------------------------- phenotype tables

#: Spellings of the participant id column, in the order they are looked for.
EID_COLUMNS = ("eid", "participant.eid", "f.eid", "Participant ID", "participant_id")

_FIELD_PATTERNS = (
    re.compile(r"^(?:participant\.)?p(?P<field>\d+)(?:_i(?P<instance>\d+))?(?:_a(?P<array>\d+))?$"),  # RAP
    re.compile(r"^(?P<field>\d+)-(?P<instance>\d+)\.(?P<array>\d+)$"),  # showcase ukbconv csv
    re.compile(r"^f\.(?P<field>\d+)\.(?P<instance>\d+)\.(?P<array>\d+)$"),  # ukbconv r
)


@dataclass(frozen=True)
class FieldColumn:
    """A phenotype column that holds a UK Biobank field: which field, instance and array entry."""

    column: str
    field: int
    instance: int | None
    array: int | None


def parse_field_column(column: str) -> FieldColumn | None:
    """The field, instance and array a column name stands for, in any UK Biobank convention; else None.

    >>> parse_field_column("participant.p21002_i2")
    FieldColumn(column='participant.p21002_i2', field=21002, instance=2, array=None)
    >>> parse_field_column("21002-2.0").array
    0
    """
    for pattern in _FIELD_PATTERNS:
        m = pattern.match(column.strip())
        if m:
            inst, arr = m.groupdict().get("instance"), m.groupdict().get("array")
            return FieldColumn(column, int(m["field"]), None if inst is None else int(inst),
                               None if arr is None else int(arr))
    return None


class PhenotypeTable:
    """A phenotype table keyed by eid, with its UK Biobank field columns recognised.

    Parameters
    ----------
    frame:
        The table as read (text cells); must hold one of :data:`EID_COLUMNS` (or
        ``name`` for tables keyed by mimir's subject names).
    path:
        Where it came from, for error lines.
    """

    def __init__(self, frame: pd.DataFrame, path: str | os.PathLike[str] | None = None) -> None:
        self.path = None if path is None else Path(path)
        self.frame = frame
        self.key = next((c for c in EID_COLUMNS if c in frame.columns), None)
        if self.key is None and "name" in frame.columns:
            self.key = "name"
        if self.key is None:
            raise UsageError(
                f"has no participant column (looked for {', '.join(EID_COLUMNS)} or name)", self.path,
                "Export the table with its eid column.")
        keys = frame[self.key].astype(str).str.strip()
        if self.key != "name":
            parsed = pd.to_numeric(keys, errors="coerce")
            bad = keys[parsed.isna() | (parsed != parsed.round())]
            if len(bad):
                raise UsageError(f"column {self.key!r} holds a value that is not an eid (row {bad.index[0] + 2})",
                                 self.path, "Participant ids are whole numbers.")
            keys = parsed.astype("int64")
        dup = keys[keys.duplicated()]
        if len(dup):
            raise UsageError(f"participant {dup.iloc[0]} appears in {int((keys == dup.iloc[0]).sum())} rows",
                             self.path, "Keep one row per participant (UK Biobank tables have one).")
        self.keys = keys
        self.fields = [fc for fc in (parse_field_column(str(c)) for c in frame.columns) if fc is not None]

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> PhenotypeTable:
        """Read a CSV, TSV or Parquet phenotype table (see :func:`read_frame`)."""
        return cls(read_frame(path, "phenotype table"), path)

    def find(self, field: int, instance: int | None, array: int | None = 0) -> str | None:
        """The column holding ``field`` at ``instance`` (array entry ``array``, or the only one); else None.

        A field recorded without instances (the RAP's ``p31``) matches any instance.
        """
        hits = [fc for fc in self.fields if fc.field == field and (fc.instance == instance or fc.instance is None)]
        exact = [fc for fc in hits if fc.array == array]
        if exact:
            return exact[0].column
        unarrayed = [fc for fc in hits if fc.array is None]
        if unarrayed:
            return unarrayed[0].column
        return hits[0].column if len(hits) == 1 else None

    def values(self, column: str) -> pd.Series:
        """Column ``column`` as floats indexed by the participant key (NaN where empty)."""
        if column not in self.frame.columns:
            raise UsageError(f"has no column {column!r}", self.path,
                             f"Columns: {', '.join(map(str, list(self.frame.columns)[:12]))}"
                             f"{' ...' if len(self.frame.columns) > 12 else ''}")
        raw = self.frame[column]
        num = pd.to_numeric(raw, errors="coerce")
        bad = raw.notna() & num.isna()
        if bad.any():
            i = int(bad.to_numpy().nonzero()[0][0])
            raise UsageError(f"column {column!r} holds a value that is not a number (row {i + 2})", self.path,
                             "Pass a numeric field, or map the target to another column with --map.")
        return pd.Series(num.to_numpy(dtype=float), index=self.keys.to_numpy(), name=column)

    def dates(self, column: str) -> pd.Series:
        """Column ``column`` as datetimes indexed by the participant key (NaT where empty)."""
        if column not in self.frame.columns:
            raise UsageError(f"has no column {column!r}", self.path)
        parsed = pd.to_datetime(self.frame[column], errors="coerce")
        bad = self.frame[column].notna() & parsed.isna()
        if bad.any():
            i = int(bad.to_numpy().nonzero()[0][0])
            raise UsageError(f"column {column!r} holds a value that is not a date (row {i + 2})", self.path,
                             "Dates are ISO dates (2015-06-30), as UK Biobank exports them.")
        return pd.Series(parsed.to_numpy(), index=self.keys.to_numpy(), name=column)
