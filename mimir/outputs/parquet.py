"""``predictions.parquet``: the CSV's rows, columns and order, with typed columns.

The Parquet file is made from the CSV document of the same run (wide or
long), row for row, so the two can never disagree. Column types
(docs/outputs.md, "Parquet"):

- wide: ``name`` string, ``eid`` int64, ``instance`` int64, ``qc_status`` string,
  ``qc_flags`` string, ``ci_level`` float64; per module ``<module>_version``
  string, ``<module>_intended_use`` string, ``<module>_ood_score`` float64; every
  target column float64;
- long: as :data:`mimir.inference.predictions.LONG_HEADER`, ``field`` int64,
  ``ood_score`` and the six numbers float64, the rest strings.

An empty CSV cell is null in a number column and the empty string in a string
column (the CSV cannot tell the two apart for strings, and mimir never writes
a null string). ``nan``/``inf`` stay NaN/inf. The file's key-value metadata
holds ``mimir.output_schema`` (the schema version), ``mimir.layout`` and,
for batch outputs, ``mimir.run`` (JSON: validity key, columns, shard, this
shard's subjects and error rows), so a Parquet file alone can be merged.

pyarrow is an optional dependency (``pip install 'ukb-mimir[parquet]'``).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from mimir.errors import UsageError
from mimir.inference.predictions import LONG_HEADER, MODULE_COLUMN_SUFFIXES, WIDE_LEAD
from mimir.utils import atomic
from mimir.utils.install import extra_hint

PREDICTIONS_PARQUET = "predictions.parquet"
#: Rows per Parquet row group (and per conversion chunk).
ROW_GROUP = 16384
_INT_LONG = {"eid", "instance", "field"}
_STR_LONG = {"name", "qc_status", "qc_flags", "module", "module_version", "intended_use", "target", "unit"}


def require_pyarrow(what: str = "--format parquet") -> Any:
    """The pyarrow module, or a one-line :class:`UsageError` saying how to install it."""
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise UsageError(
            f"{what} needs pyarrow, which is not installed", hint=extra_hint("parquet")
        ) from None
    return pyarrow


def column_kinds(header: Sequence[str], layout: str, n_modules: int) -> list[str]:
    """``str``, ``int`` or ``float`` for each column of a wide (``n_modules`` modules) or long header."""
    if layout == "long":
        if list(header) != LONG_HEADER:
            raise ValueError("not the long header")
        return ["int" if c in _INT_LONG else "str" if c in _STR_LONG else "float" for c in header]
    lead = ["str", "int", "int", "str", "str", "float"]
    if list(header[: len(WIDE_LEAD)]) != WIDE_LEAD:
        raise ValueError("not a wide header")
    kinds = lead + ["str", "str", "float"] * n_modules
    if len(header) < len(kinds):
        raise ValueError("header shorter than its module columns")
    for i in range(n_modules):
        cols = header[len(lead) + 3 * i: len(lead) + 3 * i + 3]
        if not all(c.endswith(s) for c, s in zip(cols, MODULE_COLUMN_SUFFIXES)):
            raise ValueError(f"module columns expected at {cols}")
    return kinds + ["float"] * (len(header) - len(kinds))


def _arrow_type(kind: str) -> Any:
    import pyarrow as pa

    return {"str": pa.string(), "int": pa.int64(), "float": pa.float64()}[kind]


def _parse(kind: str, text: str) -> Any:
    if kind == "str":
        return text
    if text == "":
        return None
    return int(text) if kind == "int" else float(text)


def cell_text(value: Any) -> str:
    """A Parquet value back as the CSV writes it (None -> empty; floats as repr)."""
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _chunks(rows: Iterable[list[str]], size: int) -> Iterator[list[list[str]]]:
    chunk: list[list[str]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def write_parquet_from_csv(
    csv_source: str | os.PathLike[str] | io.StringIO,
    dest: str | os.PathLike[str],
    *,
    layout: str,
    n_modules: int,
    metadata: Mapping[str, Any] | None = None,
) -> int:
    """Write ``dest`` (Parquet) from a CSV document (a path, or text in a StringIO); return the rows written.

    Streams ``ROW_GROUP`` rows at a time, so memory does not grow with the run.
    Written atomically.
    """
    require_pyarrow()
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mimir.outputs.writers import SCHEMA_VERSION

    fh = csv_source if isinstance(csv_source, io.StringIO) else open(csv_source, encoding="utf-8", newline="")  # noqa: SIM115
    try:
        reader = csv.reader(fh)
        header = next(reader)
        kinds = column_kinds(header, layout, n_modules)
        meta = {"mimir.output_schema": SCHEMA_VERSION, "mimir.layout": layout}
        for k, v in (metadata or {}).items():
            meta[k] = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, allow_nan=False)
        schema = pa.schema([pa.field(c, _arrow_type(k)) for c, k in zip(header, kinds)], metadata=meta)
        n = 0
        with atomic.atomic_path(Path(dest)) as tmp:
            with pq.ParquetWriter(str(tmp), schema) as writer:
                for chunk in _chunks(reader, ROW_GROUP):
                    cols = [
                        pa.array([_parse(kind, row[j]) for row in chunk], type=_arrow_type(kind))
                        for j, kind in enumerate(kinds)
                    ]
                    writer.write_batch(pa.record_batch(cols, schema=schema))
                    n += len(chunk)
                if n == 0:
                    writer.write_table(schema.empty_table())
        return n
    finally:
        if not isinstance(csv_source, io.StringIO):
            fh.close()


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``mimir.*`` key-value metadata of a predictions.parquet (JSON values decoded)."""
    require_pyarrow()
    import pyarrow.parquet as pq

    try:
        raw = pq.read_schema(os.fspath(path)).metadata or {}
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise UsageError(f"is not a readable Parquet file ({type(exc).__name__})", path=os.fspath(path)) from None
    out: dict[str, Any] = {}
    for k, v in raw.items():
        key, text = k.decode("utf-8", "replace"), v.decode("utf-8", "replace")
        if not key.startswith("mimir."):
            continue
        try:
            out[key] = json.loads(text) if key == "mimir.run" else text
        except ValueError:
            raise UsageError(f"has unreadable {key} metadata", path=os.fspath(path)) from None
    return out


def iter_rows(path: str | os.PathLike[str]) -> Iterator[dict[str, str]]:
    """The rows of a predictions.parquet as the CSV writes them (every value as its CSV text)."""
    require_pyarrow()
    import pyarrow.parquet as pq

    with pq.ParquetFile(os.fspath(path)) as pf:  # closed when read through, or when the caller stops early
        names = pf.schema_arrow.names
        for batch in pf.iter_batches(batch_size=ROW_GROUP):
            cols = [batch.column(i).to_pylist() for i in range(batch.num_columns)]
            for values in zip(*cols):
                yield {c: cell_text(v) for c, v in zip(names, values)}
