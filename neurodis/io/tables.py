"""Reading committed tables: only files named by a committed manifest are read."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds

from neurodis.io.layout import RunLayout
from neurodis.io.manifest import Manifest, committed
from neurodis.schemas import TABLES


def committed_files(layout: RunLayout, table: str, stage: str | None = None) -> list[Path]:
    spec = TABLES[table]
    manifests: list[Manifest] = list(committed(layout, stage or spec.stage).values())
    return sorted(layout.root / m.files[table] for m in manifests if table in m.files)


def read_table(
    run_dir: str | Path | RunLayout,
    table: str,
    filter: ds.Expression | None = None,
    columns: list[str] | None = None,
    stage: str | None = None,
) -> pa.Table:
    """Read a table of a run (committed files only), sorted by its key."""
    layout = run_dir if isinstance(run_dir, RunLayout) else RunLayout(Path(run_dir))
    spec = TABLES[table]
    files = committed_files(layout, table, stage)
    if not files:
        return spec.schema.empty_table() if columns is None else spec.schema.empty_table().select(columns)
    dataset = ds.dataset([str(f) for f in files], schema=spec.schema, format="parquet")
    out = dataset.to_table(filter=filter, columns=columns)
    keys = [k for k in spec.key if k in out.column_names]
    return out.sort_by([(k, "ascending") for k in keys]) if keys else out
