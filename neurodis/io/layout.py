"""Where everything of a run lives. Paths are pure functions of the run directory."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_SAFE = re.compile(r"[^A-Za-z0-9_.=-]")


def safe_name(text: str) -> str:
    """A file-name-safe, still readable form of a unit id (``layer4.1`` stays ``layer4.1``)."""
    return _SAFE.sub("_", text)


@dataclass(frozen=True)
class RunLayout:
    root: Path
    cache: Path | None = None  # where committed units are shared across runs (keyed by config hash)

    @property
    def spec_path(self) -> Path:
        return self.root / "spec.yaml"

    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    @property
    def tmp_dir(self) -> Path:
        return self.root / "_tmp"

    @property
    def manifests_dir(self) -> Path:
        return self.root / "_manifests"

    def table_dir(self, table: str) -> Path:
        return self.root / table

    def table_file(self, table: str, stage: str, unit: str) -> Path:
        return self.table_dir(table) / f"{safe_name(stage)}-{safe_name(unit)}.parquet"

    def stage_manifest_dir(self, stage: str) -> Path:
        return self.manifests_dir / safe_name(stage)

    def manifest_path(self, stage: str, unit: str) -> Path:
        return self.stage_manifest_dir(stage) / f"{safe_name(unit)}.json"

    @property
    def plan_dir(self) -> Path:
        """What the driver planned: one JSON per step (its units), read by ``neurodis status``."""
        return self.root / "_plan"

    def step_plan_path(self, method: str, step: str) -> Path:
        return self.plan_dir / safe_name(method) / f"{safe_name(step)}.json"

    def attempts_path(self, stage: str, unit: str) -> Path:
        return self.root / "_attempts" / safe_name(stage) / safe_name(unit)

    def cached_unit_root(self, stage: str, config_hash: str) -> Path:
        """The cache folder of one stage config: same relative layout as a run directory."""
        assert self.cache is not None
        return self.cache / safe_name(stage) / config_hash

    def summary_path(self) -> Path:
        return self.root / "summary.json"
