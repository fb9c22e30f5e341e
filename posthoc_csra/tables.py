"""Result tables on disk: CSV (plain or gzip) / JSON / Parquet written atomically by extension, and GitHub Markdown.

Used by ``score``, ``bench`` and ``benchmarks/published.py``. Atomic writes are ``cache.atomic_path``
(imported when writing, so the CLI's ``--help`` stays light).
"""
from __future__ import annotations

import json
import math
import numbers
import re
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

from .errors import InputError

#: Data formats ``write_table`` writes, by extension (the one list: ``--output`` help and errors are built from it).
TABLE_FORMATS = (".csv", ".csv.gz", ".json", ".parquet")
#: The Parquet schema-metadata key holding the settings that produced a table (JSON).
METADATA_KEY = b"posthoc_csra"


def describe_formats(formats: Sequence[str] = TABLE_FORMATS) -> str:
    """``formats`` for people: ``".csv, .csv.gz, .json or .parquet"``."""
    return ", ".join(formats[:-1]) + f" or {formats[-1]}" if len(formats) > 1 else "".join(formats)


def table_format(path: Union[str, Path], formats: Sequence[str] = TABLE_FORMATS) -> str:
    """The entry of ``formats`` that ``path`` ends with (the longest: ``t.csv.gz`` is ``.csv.gz``, lower case)."""
    name = Path(path).name.lower()
    matches = [f for f in formats if name.endswith(f) and len(name) > len(f)]
    if not matches:
        raise InputError(f"{path}: unknown table format {Path(path).suffix!r}; use one of {', '.join(formats)}")
    return max(matches, key=len)


def check_table_path(path: Union[str, Path, None], formats: Sequence[str] = TABLE_FORMATS) -> Optional[Path]:
    """``path`` as a Path when it ends with one of ``formats`` (checked before any work is done)."""
    if path is None:
        return None
    table_format(path, formats)
    return Path(path)


def with_format(path: Union[str, Path], new_format: str, formats: Sequence[str] = TABLE_FORMATS) -> Path:
    """``path`` with its format of ``formats`` replaced by ``new_format`` (``t.csv.gz`` → ``t.md``)."""
    path = Path(path)
    return path.with_name(path.name[:-len(table_format(path, formats))] + new_format)


def write_table(table, path: Union[str, Path], metadata: Optional[Mapping] = None) -> Path:
    """Write a DataFrame as CSV, gzip-compressed CSV, JSON (records) or Parquet by extension, atomically.

    ``.csv.gz`` files are reproducible: the same table gives the same bytes (no time or name in the gzip
    header); ``pd.read_csv`` reads them as they are. ``metadata`` (default ``table.attrs``): the settings that
    produced the table, stored as JSON in the Parquet schema metadata under ``METADATA_KEY`` (CSV and JSON
    carry settings as columns only).
    """
    from .cache import atomic_path, json_ready

    suffix, path = table_format(path), Path(path)  # checked before any work is done
    with atomic_path(path) as tmp:
        if suffix == ".csv":
            table.to_csv(tmp, index=False)
        elif suffix == ".csv.gz":
            import gzip
            import io

            with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as packed, \
                    io.TextIOWrapper(packed, encoding="utf-8", newline="") as text:
                table.to_csv(text, index=False)
        elif suffix == ".json":
            table.to_json(tmp, orient="records", indent=1, force_ascii=False)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            arrow = pa.Table.from_pandas(table, preserve_index=False)
            settings = json.dumps(json_ready(dict(table.attrs if metadata is None else metadata)), default=str)
            arrow = arrow.replace_schema_metadata({**(arrow.schema.metadata or {}), METADATA_KEY: settings.encode()})
            pq.write_table(arrow, tmp)
    return path


def read_metadata(path: Union[str, Path]) -> dict:
    """The settings ``write_table`` stored in a Parquet file ({} when there are none)."""
    import pyarrow.parquet as pq

    raw = (pq.read_schema(path).metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {}


def write_text(path: Union[str, Path], text: str) -> Path:
    """Write a text file (UTF-8) atomically."""
    from .cache import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def _is_float(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral)


def _missing(value) -> bool:
    import pandas as pd

    return value is None or value is pd.NA or value is pd.NaT or (_is_float(value) and math.isnan(value))


def to_markdown(table, columns: Optional[Sequence[str]] = None, formats: Optional[Mapping[str, str]] = None) -> str:
    """A GitHub Markdown table, ending with a newline.

    ``columns``: which and in what order (default: all; absent ones are skipped, and an ``error``
    column with no error is dropped). ``formats``: a format spec per column (e.g. ``".2f"``,
    ``"+.2f"``); other floats use ``"g"``. Missing values are empty cells; ``|`` is escaped and
    whitespace collapsed so every row stays one line.
    """
    formats = dict(formats or {})
    columns = [c for c in (table.columns if columns is None else columns)
               if c in table and not (c == "error" and table[c].isna().all())]

    def cell(column, value) -> str:
        if _missing(value):
            return ""
        if column in formats:
            return format(value, formats[column])
        if _is_float(value):
            return format(value, "g")
        return re.sub(r"\s+", " ", str(value)).replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in table[columns].itertuples(index=False, name=None):
        lines.append("| " + " | ".join(cell(c, v) for c, v in zip(columns, row)) + " |")
    return "\n".join(lines) + "\n"


__all__ = ["TABLE_FORMATS", "METADATA_KEY", "describe_formats", "table_format", "check_table_path", "with_format",
           "write_table", "read_metadata", "write_text", "to_markdown"]
