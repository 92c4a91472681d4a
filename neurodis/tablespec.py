"""The shape of a table declaration: every Parquet table neurodis writes is a ``TableSpec``.

Vectors (one value per channel) are stored as ``list<float32>`` / ``list<int32>``: one table holds
several layers with different channel counts, and a fixed-size list type would make the per-layer
files of one dataset disagree on their schema. Every row carries its full key. Each method declares
its tables in its own package (``neurodis/methods/<name>/tables.py``); ``neurodis.schemas`` collects
them from the method registry.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

SCHEMA_VERSION = 1

F32_VEC = pa.list_(pa.float32())
I32_VEC = pa.list_(pa.int32())


@dataclass(frozen=True)
class TableSpec:
    name: str
    schema: pa.Schema
    key: tuple[str, ...]
    stage: str  # the manifest namespace whose units commit this table
    doc: str
    column_docs: dict[str, str]


def table_spec(
    name: str, stage: str, key: tuple[str, ...], doc: str, cols: list[tuple[str, pa.DataType, str]]
) -> TableSpec:
    """Declare a table: columns as (name, type, meaning); key columns are not nullable."""
    schema = pa.schema(
        [pa.field(n, t, nullable=(n not in key)) for n, t, _ in cols],
        metadata={b"neurodis.schema_version": str(SCHEMA_VERSION).encode(), b"neurodis.table": name.encode()},
    )
    return TableSpec(name, schema, key, stage, doc, {n: d for n, _, d in cols})
