"""Shard manifests: the only commit marker. A unit of work is done iff its manifest exists and its
config hash matches. The protocol needs no rename, so it holds on object stores too: every attempt at a
unit writes its files under names of its own (a random token), each file whole, and then the manifest,
last, naming exactly those files. Readers list manifests and read only the files they name; files no
manifest names (an attempt that died, or lost a race) are never read and are deleted when an audit
starts. Two attempts at one unit that both finish each write a complete set of files and a manifest
naming only their own set: the manifest written last wins, and since units are deterministic its files
hold the same rows as the loser's (last-manifest-wins; no conditional put is needed)."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from neurodis import faults
from neurodis.io.atomic import write_bytes_atomic, write_json_atomic, write_parquet_atomic
from neurodis.io.layout import RunLayout
from neurodis.io.store import StorePath

log = logging.getLogger(__name__)


class StaleRunError(RuntimeError):
    """The run directory holds outputs computed from a different config. ``changes`` (one
    ``key: old -> new`` each, from the run's stored spec.yaml) say what changed; None when unknown."""

    def __init__(self, root: Path | StorePath, stage: str, changes: Sequence[str] | None = None) -> None:
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
    def load(cls, path: StorePath) -> Manifest:
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
    """Write each table under this attempt's own name, then the manifest (last: the commit marker).
    ``extra_files`` (name -> a finished local file, e.g. a faiss index) are copied into the run under
    this attempt's name next to the tables (``_files/<stage>/``); the manifest names them, so they are
    committed and dropped together with the unit, and the local file is removed."""
    token = uuid.uuid4().hex[:12]
    files: dict[str, str] = {}
    for name, src in (extra_files or {}).items():
        final = layout.extra_file(stage, unit, name, token, Path(src).suffix)
        write_bytes_atomic(Path(src).read_bytes(), final, layout.tmp_dir)
        Path(src).unlink(missing_ok=True)
        files[name] = final.relative_to(layout.root)
    for name, table in tables.items():
        final = layout.table_file(name, stage, unit, token)
        write_parquet_atomic(table, final, layout.tmp_dir)
        files[name] = final.relative_to(layout.root)
    manifest = Manifest(stage, unit, config_hash, files, dict(meta or {}))
    faults.before_manifest(stage, unit)
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
    for p in sorted(d.glob("*.json")) if layout.remote or d.is_dir() else []:
        try:
            m = Manifest.load(p)
        except (OSError, ValueError, KeyError):
            continue  # unreadable manifest = not committed; the unit is redone
        if config_hash is None or m.config_hash == config_hash:
            out[m.unit] = m
    return out


def _committed_stages(layout: RunLayout) -> list[str]:
    d = layout.manifests_dir
    return sorted(p.name for p in d.iterdir()) if layout.remote or d.is_dir() else []


def all_committed_files(layout: RunLayout) -> set[StorePath]:
    files: set[StorePath] = set()
    for stage in _committed_stages(layout):
        for m in committed(layout, stage).values():
            files.update(layout.root / f for f in m.files.values())
    return files


def remove_uncommitted(layout: RunLayout, tables: Iterable[str]) -> list[StorePath]:
    """Delete files that no manifest names (left by an attempt that died or lost a race to commit)
    from the table folders and ``_files/``, and the temp folder. Readers never read them anyway."""
    keep = all_committed_files(layout)
    removed = []
    folders = [layout.table_dir(t) for t in tables]
    if layout.remote or layout.files_dir.is_dir():
        folders += [d for d in layout.files_dir.iterdir()]
    for d in folders:
        for p in d.glob("*") if layout.remote or d.is_dir() else []:
            if p not in keep and (layout.remote or p.is_file()):
                p.unlink(missing_ok=True)
                removed.append(p)
    layout.tmp_dir.rmtree()
    return removed


def drop_stage(layout: RunLayout, stage: str) -> None:
    """Forget a stage's outputs (used with --overwrite when its config changed)."""
    for m in committed(layout, stage).values():
        for f in m.files.values():
            (layout.root / f).unlink(missing_ok=True)
    layout.stage_manifest_dir(stage).rmtree()


def copy_unit(
    src_root: StorePath,
    dst_root: StorePath,
    manifest_src: StorePath,
    manifest_dst: StorePath,
    files: Iterable[str],
) -> None:
    """Link (or copy) a committed unit's files from ``src_root`` to ``dst_root`` (same relative paths),
    then its manifest, last: the unit appears committed only once every file is there."""
    for rel in files:
        (src_root / rel).copy_to(dst_root / rel)
    manifest_src.copy_to(manifest_dst)  # last: the commit marker


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
    if layout.cache is None:
        return 0
    n = 0
    for stage in _committed_stages(layout):
        for unit, m in committed(layout, stage).items():
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
