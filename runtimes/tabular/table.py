"""Generated rows: a small column store, written as CSV, JSON lines or Parquet.  No pandas needed.

:class:`Table` keeps one numpy array per column, in the table's order.  CSV and JSON lines are written with
the standard library (values as Python writes them: ``repr``-exact floats, so a float column read back is the
same float64); Parquet through pyarrow (``pip install 'edgegen[parquet]'``), with each column's type.
:meth:`Table.to_pandas` gives a DataFrame with the training data's dtypes, as ``ctgan``'s ``sample`` returns.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgegen.errors import InvalidArgumentError

__all__ = ["Table", "FORMATS", "format_for"]

#: output suffix -> format
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}


def format_for(path: str | os.PathLike[str]) -> str:
    """The format a path's suffix asks for; anything else is refused, naming the suffixes."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise InvalidArgumentError(f"{path}: rows are written as CSV, JSON lines or Parquet; give a path ending in "
                                   f"{', '.join(FORMATS)}")
    return FORMATS[suffix]


class Table:
    """Rows as columns: ``{name: array [rows]}`` in order, all of one length; ``dtypes`` the pandas dtypes."""

    def __init__(self, columns: Mapping[str, np.ndarray], dtypes: Mapping[str, str] | None = None) -> None:
        self.data = dict(columns)
        lengths = {len(v) for v in self.data.values()}
        if len(lengths) > 1:
            raise ValueError(f"columns of different lengths: {sorted(lengths)}")
        self.dtypes = dict(dtypes or {k: str(v.dtype) for k, v in self.data.items()})

    @property
    def columns(self) -> list[str]:
        return list(self.data)

    def __len__(self) -> int:
        return len(next(iter(self.data.values()))) if self.data else 0

    def __getitem__(self, name: str) -> np.ndarray:
        return self.data[name]

    def __repr__(self) -> str:
        return f"Table({len(self)} rows x {len(self.data)} columns: {', '.join(self.columns)})"

    def head(self, n: int = 5) -> Table:
        return Table({k: v[:n] for k, v in self.data.items()}, self.dtypes)

    def rows(self) -> Iterator[dict[str, Any]]:
        """Each row as ``{column: Python value}`` (NaN as None)."""
        lists = [[_plain(x) for x in v.tolist()] for v in self.data.values()]
        for values in zip(*lists):
            yield dict(zip(self.data, values))

    @staticmethod
    def concat(tables: Sequence[Table]) -> Table:
        """The rows of ``tables`` one after another (same columns, in the same order)."""
        if not tables:
            raise InvalidArgumentError("no tables to concatenate")
        first = tables[0]
        if any(t.columns != first.columns for t in tables):
            raise InvalidArgumentError("tables with different columns cannot be concatenated")
        return Table({k: np.concatenate([t.data[k] for t in tables]) for k in first.columns}, first.dtypes)

    def to_pandas(self) -> Any:
        """A pandas DataFrame with the training data's dtypes (pandas must be installed)."""
        try:
            import pandas as pd
        except ImportError:
            raise InvalidArgumentError("Table.to_pandas needs pandas: pip install pandas") from None
        frame = pd.DataFrame({k: v for k, v in self.data.items()})
        return frame.astype({k: d for k, d in self.dtypes.items() if d in ("category", "string")})

    # -- writing ----------------------------------------------------------------------------------------------
    def write(self, path: str | os.PathLike[str], fmt: str | None = None) -> Path:
        """Write the rows to ``path`` (format from its suffix, or ``fmt``) through a temporary file beside it,
        renamed into place: a failed write leaves no half file.  Returns the path."""
        fmt = fmt or format_for(path)
        target = Path(path)
        if not target.parent.is_dir():   # say so by the path asked for, not by the temporary file's name
            raise InvalidArgumentError(f"{target.parent}: no such folder; create it or choose another output path")
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            if fmt == "parquet":
                self._write_parquet(tmp)
            else:
                with open(tmp, "w", encoding="utf-8", newline="") as fh:
                    (self._write_csv if fmt == "csv" else self._write_jsonl)(fh)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                tmp.unlink()
        return target

    def to_csv(self) -> str:
        buf = io.StringIO()
        self._write_csv(buf)
        return buf.getvalue()

    def _write_csv(self, fh: Any) -> None:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(self.columns)
        lists = [v.tolist() for v in self.data.values()]
        for values in zip(*lists):
            writer.writerow(["" if (x := _plain(v)) is None else x for v in values])

    def _write_jsonl(self, fh: Any) -> None:
        for row in self.rows():
            fh.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")

    def _write_parquet(self, path: Path) -> None:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise InvalidArgumentError("writing Parquet needs pyarrow: pip install 'edgegen[parquet]', or write "
                                       ".csv or .jsonl") from None
        arrays = {}
        for name, values in self.data.items():
            if values.dtype == object:
                arrays[name] = pa.array([_plain(v) for v in values.tolist()])
            else:
                arrays[name] = pa.array(values)
        pq.write_table(pa.table(arrays), path)


def _plain(value: Any) -> Any:
    """A JSON / CSV value: numpy scalars as Python ones, NaN as None."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
