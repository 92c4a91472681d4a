"""Where everything of a run lives. Paths are pure functions of the run directory, which is a local
folder or a prefix on an object store (:class:`~neurodis.io.store.StorePath`)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from neurodis.io.store import StorePath

_SAFE = re.compile(r"[^A-Za-z0-9_.=-]")


def safe_name(text: str) -> str:
    """A file-name-safe, still readable form of a unit id (``layer4.1`` stays ``layer4.1``)."""
    return _SAFE.sub("_", text)


@dataclass(frozen=True, init=False)
class RunLayout:
    root: StorePath
    cache: StorePath | None = None  # where committed units are shared across runs (keyed by config hash)

    def __init__(
        self,
        root: str | os.PathLike[str] | StorePath,
        cache: str | os.PathLike[str] | StorePath | None = None,
    ) -> None:
        object.__setattr__(self, "root", StorePath.of(root))
        object.__setattr__(self, "cache", None if cache is None else StorePath.of(cache))

    @property
    def remote(self) -> bool:
        """Whether the run lives on an object store."""
        return self.root.remote

    @property
    def spec_path(self) -> StorePath:
        return self.root / "spec.yaml"

    @property
    def run_json(self) -> StorePath:
        return self.root / "run.json"

    @property
    def tmp_dir(self) -> StorePath:
        return self.root / "_tmp"

    @property
    def manifests_dir(self) -> StorePath:
        return self.root / "_manifests"

    def table_dir(self, table: str) -> StorePath:
        return self.root / table

    def table_file(self, table: str, stage: str, unit: str, token: str) -> StorePath:
        """A unit's file of ``table``, named by its attempt's ``token``: attempts never share a name,
        so a file is written once and the manifest names the attempt it commits."""
        return self.table_dir(table) / f"{safe_name(stage)}-{safe_name(unit)}.{token}.parquet"

    @property
    def files_dir(self) -> StorePath:
        """Non-table files units commit (faiss indexes), one folder per stage."""
        return self.root / "_files"

    def extra_file(self, stage: str, unit: str, name: str, token: str, suffix: str) -> StorePath:
        return self.files_dir / safe_name(stage) / f"{safe_name(unit)}.{safe_name(name)}.{token}{suffix}"

    def stage_manifest_dir(self, stage: str) -> StorePath:
        return self.manifests_dir / safe_name(stage)

    def manifest_path(self, stage: str, unit: str) -> StorePath:
        return self.stage_manifest_dir(stage) / f"{safe_name(unit)}.json"

    @property
    def plan_dir(self) -> StorePath:
        """What the driver planned: one JSON per step (its units), read by ``neurodis status``."""
        return self.root / "_plan"

    def step_plan_path(self, method: str, step: str) -> StorePath:
        return self.plan_dir / safe_name(method) / f"{safe_name(step)}.json"

    def attempts_path(self, stage: str, unit: str) -> StorePath:
        return self.root / "_attempts" / safe_name(stage) / safe_name(unit)

    def cached_unit_root(self, stage: str, config_hash: str) -> StorePath:
        """The cache folder of one stage config: same relative layout as a run directory."""
        assert self.cache is not None
        return self.cache / safe_name(stage) / config_hash

    def summary_path(self) -> StorePath:
        return self.root / "summary.json"
