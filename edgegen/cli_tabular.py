"""``edgegen sample`` on a tabular artifact: rows to CSV, JSON lines or Parquet (``edgegen sample ART -n N -o
rows.parquet [--condition column=value]``), and ``info``'s line about its columns."""

from __future__ import annotations

import time
from typing import Any

import click

from edgegen.errors import InvalidArgumentError


def parse_condition(text: str | None) -> dict[str, str] | None:
    """``column=value`` -> {column: value} (the value as text; the runtime matches it to the column's values)."""
    if text is None:
        return None
    column, sep, value = text.partition("=")
    if not sep or not column:
        raise InvalidArgumentError(f"--condition {text!r}: give COLUMN=VALUE, e.g. --condition color=red")
    return {column: value}


def sample_tabular(artifact: str, output: str, num: int, seed: int | None, condition: str | None,
                   runtime: dict[str, Any], as_json: bool, echo_json: Any) -> None:
    import edgegen
    from edgegen.runtimes.tabular.table import format_for

    fmt = format_for(output)                           # before loading: a .png path is refused at once
    wanted = parse_condition(condition)
    started = time.perf_counter()
    model = edgegen.load(artifact, **runtime)
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    table = model.sample_rows(num, seed=seed, condition=wanted)
    sample_s = time.perf_counter() - started
    path = table.write(output, fmt)
    if as_json:
        echo_json({"files": [str(path)], "rows": len(table), "columns": table.columns, "provider": model.provider,
                   "load_s": round(load_s, 4), "sample_s": round(sample_s, 4)})
        return
    click.echo(f"wrote {path}")
    click.echo(f"[{model.provider}: {len(table):,} rows x {len(table.columns)} columns in {sample_s:.2f} s "
               f"({len(table) / max(sample_s, 1e-9):,.0f} rows/s), load {load_s:.2f} s]", err=True)


def columns_line(sampler: dict[str, Any]) -> str | None:
    """``x (continuous, 3 modes), color (3 values), ...`` from a tabular manifest's sampler (None if malformed)."""
    try:
        parts = [f"{c['name']} ({c['dtype']}, {len(c['means'])} mode{'s' * (len(c['means']) != 1)})"
                 if c["kind"] == "continuous" else f"{c['name']} ({c['dtype']}, {len(c['categories'])} values)"
                 for c in sampler["columns"]]
    except (KeyError, TypeError):
        return None
    shown = ", ".join(parts[:8]) + (f" and {len(parts) - 8} more" if len(parts) > 8 else "")
    return f"{sampler.get('model')}: {shown}"
