"""Atomic writes: a temp file in the run's _tmp folder, fsync, then ``os.replace`` into place."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


def _tmp_for(final: Path, tmp_dir: Path | None) -> Path:
    d = tmp_dir if tmp_dir is not None else final.parent
    d.mkdir(parents=True, exist_ok=True)
    return d / f".{final.name}.{uuid.uuid4().hex}.tmp"


def _replace(tmp: Path, final: Path) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, final)


def write_parquet_atomic(table: pa.Table, final: Path, tmp_dir: Path | None = None) -> None:
    tmp = _tmp_for(final, tmp_dir)
    try:
        pq.write_table(table, tmp, compression="zstd")
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        _replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(obj: Any, final: Path, tmp_dir: Path | None = None) -> None:
    tmp = _tmp_for(final, tmp_dir)
    try:
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        _replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(text: str, final: Path, tmp_dir: Path | None = None) -> None:
    tmp = _tmp_for(final, tmp_dir)
    try:
        tmp.write_text(text)
        _replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
