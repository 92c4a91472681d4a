"""Reading committed tables: only files named by a committed manifest are read."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds

from neurodis.io.layout import RunLayout
from neurodis.io.manifest import Manifest, committed
from neurodis.io.store import StorePath, open_dataset_paths
from neurodis.schemas import TABLES


def committed_files(layout: RunLayout, table: str, stage: str | None = None) -> list[StorePath]:
    spec = TABLES[table]
    manifests: list[Manifest] = list(committed(layout, stage or spec.stage).values())
    return sorted(layout.root / m.files[table] for m in manifests if table in m.files)


def dataset(files: list[StorePath], schema: pa.Schema) -> ds.Dataset:
    """A Parquet dataset over exactly ``files`` (local or on one object store)."""
    paths, fs = open_dataset_paths(files)
    return ds.dataset(paths, schema=schema, format="parquet", filesystem=fs)


def read_table(
    run_dir: str | Path | StorePath | RunLayout,
    table: str,
    filter: ds.Expression | None = None,
    columns: list[str] | None = None,
    stage: str | None = None,
) -> pa.Table:
    """Read a table of a run (committed files only), sorted by its key."""
    layout = run_dir if isinstance(run_dir, RunLayout) else RunLayout(run_dir)
    spec = TABLES[table]
    files = committed_files(layout, table, stage)
    if not files:
        return spec.schema.empty_table() if columns is None else spec.schema.empty_table().select(columns)
    out = dataset(files, spec.schema).to_table(filter=filter, columns=columns)
    keys = [k for k in spec.key if k in out.column_names]
    return out.sort_by([(k, "ascending") for k in keys]) if keys else out
