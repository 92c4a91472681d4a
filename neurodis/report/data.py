"""What the report reads from a run: its tables (committed units only), each read through one helper
that turns a missing or unreadable table into a one-line error naming the table and the fix."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import yaml

from neurodis.io.layout import RunLayout
from neurodis.io.runs import run_layout
from neurodis.io.store import StorePath
from neurodis.io.tables import read_table
from neurodis.schemas import TABLES
from neurodis.types import SpecError

#: the stage whose audit writes each table the report may read (for the fix in an error)
READ_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OSError, ValueError)


def table(layout: RunLayout, name: str, required: bool = False, **kw: Any) -> pa.Table | None:
    """The committed table ``name``; ``None`` when the run has none (or this version does not know the
    table) unless ``required``. A table whose files cannot be read raises a one-line ``SpecError``."""
    if name not in TABLES:
        if required:
            raise SpecError(f"this neurodis version has no table {name!r}")
        return None
    stage = TABLES[name].stage
    try:
        t = read_table(layout, name, **kw)
    except READ_ERRORS as e:
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise SpecError(
            f"table {name!r} of {layout.root} cannot be read ({type(e).__name__}: {first}); its files are "
            f"damaged or from another neurodis version: re-run its stage with `neurodis audit SPEC --stages "
            f"{stage} --overwrite`"
        ) from None
    if t.num_rows == 0:
        if required:
            raise SpecError(
                f"{layout.root} has no committed {name!r} table (its {stage} stage has not finished); "
                "resume the audit with the same command first"
            )
        return None
    return t


@dataclass
class Run:
    """One audit as the report sees it."""

    layout: RunLayout
    spec: dict[str, Any]
    summary: dict[str, Any]
    scorecard: dict[str, Any] | None
    scorecard_path: StorePath | None
    tables: dict[str, pa.Table | None] = field(default_factory=dict)

    @property
    def root(self) -> StorePath:
        return self.layout.root

    def get(self, name: str) -> pa.Table | None:
        if name not in self.tables:
            self.tables[name] = table(self.layout, name)
        return self.tables[name]

    def rows(self, name: str) -> list[dict[str, Any]]:
        t = self.get(name)
        return [] if t is None else t.to_pylist()


def find_scorecard(root: StorePath) -> StorePath | None:
    """The demo's ``scorecard.json``: in the run directory, or in its parent (the demo's OUT holds one
    run folder per network beside it)."""
    for p in (root / "scorecard.json", root.parent / "scorecard.json"):
        if p.is_file():
            return p
    return None


def open_report_run(run_dir: str | Path) -> Run:
    """The run at ``run_dir`` with its spec, summary, scorecard and ``neurons`` table; one-line errors
    for a folder that is not a run and for a run whose forward stage has not committed."""
    layout = run_layout(run_dir)
    try:
        spec = yaml.safe_load(layout.spec_path.read_text()) or {}
    except yaml.YAMLError as e:
        raise SpecError(
            f"{layout.spec_path} is not valid YAML ({str(e).splitlines()[0]}); re-run the audit"
        ) from None
    summary_path = layout.root / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    card_path = find_scorecard(layout.root)
    card = json.loads(card_path.read_text()) if card_path else None
    run = Run(layout, spec, summary, card, card_path)
    run.tables["neurons"] = table(layout, "neurons", required=True)
    return run
