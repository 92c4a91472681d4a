"""Whole-file writes that never leave a partial file under the final name.

Local: a temp file in the run's ``_tmp`` folder, fsync, then ``os.replace`` into place. Object store
(:class:`~neurodis.io.store.StorePath` with a filesystem): the bytes are built in memory and written
with one PUT, which the store makes visible whole or not at all (there is no rename to use).
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from neurodis.io.store import StorePath

Where = Path | StorePath


def _local(p: Where | None) -> Path | None:
    if p is None:
        return None
    return p if isinstance(p, Path) else p.local


def _tmp_for(final: Path, tmp_dir: Path | None) -> Path:
    d = tmp_dir if tmp_dir is not None else final.parent
    d.mkdir(parents=True, exist_ok=True)
    return d / f".{final.name}.{uuid.uuid4().hex}.tmp"


def _replace(tmp: Path, final: Path) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, final)


def write_bytes_atomic(data: bytes | pa.Buffer, final: Where, tmp_dir: Where | None = None) -> None:
    if isinstance(final, StorePath) and final.remote:
        final.write_bytes(data)
        return
    path = _local(final)
    assert path is not None
    tmp = _tmp_for(path, _local(tmp_dir))
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        _replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_parquet_atomic(table: pa.Table, final: Where, tmp_dir: Where | None = None) -> None:
    if isinstance(final, StorePath) and final.remote:
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        final.write_bytes(sink.getvalue())
        return
    path = _local(final)
    assert path is not None
    tmp = _tmp_for(path, _local(tmp_dir))
    try:
        pq.write_table(table, tmp, compression="zstd")
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        _replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(obj: Any, final: Where, tmp_dir: Where | None = None) -> None:
    write_bytes_atomic(json.dumps(obj, indent=1, sort_keys=True).encode(), final, tmp_dir)


def write_text_atomic(text: str, final: Where, tmp_dir: Where | None = None) -> None:
    write_bytes_atomic(text.encode(), final, tmp_dir)
