"""Shard manifests: the only commit marker. A unit of work is done iff its manifest exists and its
config hash matches; the table files it names were renamed into place before it was written."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from neurodis import faults
from neurodis.io.atomic import write_json_atomic, write_parquet_atomic
from neurodis.io.layout import RunLayout

log = logging.getLogger(__name__)


class StaleRunError(RuntimeError):
    """The run directory holds outputs computed from a different config. ``changes`` (one
    ``key: old -> new`` each, from the run's stored spec.yaml) say what changed; None when unknown."""

    def __init__(self, root: Path, stage: str, changes: Sequence[str] | None = None) -> None:
        self.root, self.stage = root, stage
        self.changes = None if changes is None else list(changes)
        if changes is None:
            why = ""
        elif changes:
            more = f", +{len(changes) - 6} more" if len(changes) > 6 else ""
            why = f" (changed: {'; '.join(changes[:6])}{more})"
        else:
            why = " (no spec key changed: the checkpoint's weights or the probe images did)"
        super().__init__(
            f"run directory {root} already holds stage {stage!r} outputs from a different config{why}; "
            "pass --overwrite to recompute them or --out to write a new run"
        )

    def with_changes(self, changes: Sequence[str]) -> StaleRunError:
        return StaleRunError(self.root, self.stage, changes)


@dataclass(frozen=True)
class Manifest:
    stage: str
    unit: str
    config_hash: str
    files: dict[str, str]  # table -> path relative to the run root
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> Manifest:
        d = json.loads(path.read_text())
        return cls(d["stage"], d["unit"], d["config_hash"], dict(d["files"]), dict(d.get("meta", {})))


def commit_unit(
    layout: RunLayout,
    stage: str,
    unit: str,
    config_hash: str,
    tables: Mapping[str, pa.Table],
    meta: Mapping[str, Any] | None = None,
    extra_files: Mapping[str, Path] | None = None,
) -> Manifest:
    """Write each table atomically, then the manifest (last: the commit marker). ``extra_files``
    (name -> path inside the run) are non-table files the caller already renamed into place; the
    manifest names them so they are committed and dropped together with the unit."""
    files: dict[str, str] = {
        name: str(Path(f).resolve().relative_to(layout.root.resolve()))
        for name, f in (extra_files or {}).items()
    }
    for name, table in tables.items():
        final = layout.table_file(name, stage, unit)
        write_parquet_atomic(table, final, layout.tmp_dir)
        files[name] = str(final.relative_to(layout.root))
    manifest = Manifest(stage, unit, config_hash, files, dict(meta or {}))
    write_json_atomic(
        {
            "stage": stage,
            "unit": unit,
            "config_hash": config_hash,
            "files": files,
            "meta": manifest.meta,
            "committed_at": time.time(),
        },
        layout.manifest_path(stage, unit),
        layout.tmp_dir,
    )
    return manifest


def record_attempt(layout: RunLayout, stage: str, unit: str) -> int:
    """Count one more attempt at a unit (written before the work starts); returns the count.
    After a worker death the driver reads these to name the unit that kept killing its worker.
    Fault-injection tests kill the worker here (:mod:`neurodis.faults`)."""
    path = layout.attempts_path(stage, unit)
    n = attempts(layout, stage, unit) + 1
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(str(n))
    faults.at_unit_start(stage, unit)
    return n


def attempts(layout: RunLayout, stage: str, unit: str) -> int:
    try:
        return int(layout.attempts_path(stage, unit).read_text() or 0)
    except (OSError, ValueError):
        return 0


def committed(layout: RunLayout, stage: str, config_hash: str | None = None) -> dict[str, Manifest]:
    """The committed units of a stage (unit -> manifest); with ``config_hash``, only matching ones."""
    d = layout.stage_manifest_dir(stage)
    out: dict[str, Manifest] = {}
    if not d.is_dir():
        return out
    for p in sorted(d.glob("*.json")):
        try:
            m = Manifest.load(p)
        except (OSError, ValueError, KeyError):
            continue  # unreadable manifest = not committed; the unit is redone
        if config_hash is None or m.config_hash == config_hash:
            out[m.unit] = m
    return out


def all_committed_files(layout: RunLayout) -> set[Path]:
    files: set[Path] = set()
    if layout.manifests_dir.is_dir():
        for stage_dir in layout.manifests_dir.iterdir():
            for m in committed(layout, stage_dir.name).values():
                files.update(layout.root / f for f in m.files.values())
    return files


def remove_uncommitted(layout: RunLayout, tables: Iterable[str]) -> list[Path]:
    """Delete table files no manifest names (left by a crash) and the temp folder."""
    keep = all_committed_files(layout)
    removed = []
    for t in tables:
        d = layout.table_dir(t)
        if d.is_dir():
            for p in d.glob("*.parquet"):
                if p not in keep:
                    p.unlink()
                    removed.append(p)
    shutil.rmtree(layout.tmp_dir, ignore_errors=True)
    return removed


def drop_stage(layout: RunLayout, stage: str) -> None:
    """Forget a stage's outputs (used with --overwrite when its config changed)."""
    for m in committed(layout, stage).values():
        for f in m.files.values():
            (layout.root / f).unlink(missing_ok=True)
    shutil.rmtree(layout.stage_manifest_dir(stage), ignore_errors=True)


def _link(src: Path, dst: Path) -> None:
    """Hard-link (committed files are immutable) or copy; atomically appear at ``dst``."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex}.tmp")
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def copy_unit(
    src_root: Path, dst_root: Path, manifest_src: Path, manifest_dst: Path, files: Iterable[str]
) -> None:
    """Link (or copy) a committed unit's files from ``src_root`` to ``dst_root`` (same relative paths),
    then its manifest, last: the unit appears committed only once every file is there."""
    for rel in files:
        _link(src_root / rel, dst_root / rel)
    _link(manifest_src, manifest_dst)  # last: the commit marker


def adopt_cached(layout: RunLayout, stage: str, config_hash: str) -> int:
    """Bring units committed by an earlier run with the same config hash into this run."""
    if layout.cache is None:
        return 0
    src = RunLayout(layout.cached_unit_root(stage, config_hash))
    have = committed(layout, stage, config_hash)
    n = 0
    for unit, m in committed(src, stage, config_hash).items():
        if unit in have or not all((src.root / f).is_file() for f in m.files.values()):
            continue
        copy_unit(
            src.root,
            layout.root,
            src.manifest_path(stage, unit),
            layout.manifest_path(stage, unit),
            m.files.values(),
        )
        n += 1
    return n


def publish_to_cache(layout: RunLayout) -> int:
    """Share every committed unit of this run with later runs (no-op without a cache)."""
    if layout.cache is None or not layout.manifests_dir.is_dir():
        return 0
    n = 0
    for stage_dir in sorted(layout.manifests_dir.iterdir()):
        for unit, m in committed(layout, stage_dir.name).items():
            dst = RunLayout(layout.cached_unit_root(m.stage, m.config_hash))
            if dst.manifest_path(m.stage, unit).is_file():
                continue
            copy_unit(
                layout.root,
                dst.root,
                layout.manifest_path(m.stage, unit),
                dst.manifest_path(m.stage, unit),
                m.files.values(),
            )
            n += 1
    return n


def check_stage_hash(layout: RunLayout, stage: str, config_hash: str, overwrite: bool) -> None:
    """Refuse to mix outputs of different configs in one run directory; then adopt units that an
    earlier run with identical inputs left in the cache."""
    stale = {u: m for u, m in committed(layout, stage).items() if m.config_hash != config_hash}
    if not stale:
        adopt_cached(layout, stage, config_hash)
        return
    if overwrite:
        drop_stage(layout, stage)
        adopt_cached(layout, stage, config_hash)
        return
    log.debug(
        "stage %s: committed hash %s, spec hash %s",
        stage,
        next(iter(stale.values())).config_hash,
        config_hash,
    )
    raise StaleRunError(layout.root, stage)
