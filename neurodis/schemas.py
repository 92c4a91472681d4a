"""Every Parquet table neurodis writes, in one place: each method's tables (declared in its package,
collected from the method registry) and the tables of the cross-method tools (``neurodis diff``).

``python -m neurodis.schemas`` prints ``docs/schemas.md``.
"""

from __future__ import annotations

import pyarrow as pa

from neurodis.registry import METHODS
from neurodis.tablespec import SCHEMA_VERSION, TableSpec, table_spec

__all__ = ["NEURON_DIFF", "SCHEMA_VERSION", "TABLES", "TableSpec", "render_markdown"]

NEURON_DIFF = table_spec(
    "neuron_diff",
    "diff",
    ("layer", "channel"),
    "Written by `neurodis diff RUN_A RUN_B --out DIR` (DIR/neuron_diff.parquet): one row per "
    "neuron audited in both runs; null where a run lacks that stage.",
    [
        ("layer", pa.string(), "module path"),
        ("channel", pa.int32(), "channel index"),
        ("dead_a", pa.bool_(), "dead in run A"),
        ("dead_b", pa.bool_(), "dead in run B"),
        ("newly_dead", pa.bool_(), "alive in A, dead in B"),
        ("revived", pa.bool_(), "dead in A, alive in B"),
        ("max_a", pa.float32(), "max over the probe set in A"),
        ("max_b", pa.float32(), "max over the probe set in B"),
        ("reference_overlap", pa.float64(), "Jaccard overlap of the top-K reference images (by path)"),
        ("psi_a", pa.float64(), "PSI in A"),
        ("psi_b", pa.float64(), "PSI in B"),
        ("d_psi", pa.float64(), "psi_b - psi_a"),
        ("log_psi_a", pa.float64(), "log PSI in A"),
        ("log_psi_b", pa.float64(), "log PSI in B"),
        ("log_psi_ci_low_a", pa.float64(), "lower end of A's bootstrap 95 % interval of log PSI"),
        ("log_psi_ci_high_a", pa.float64(), "upper end of A's interval"),
        ("log_psi_ci_low_b", pa.float64(), "lower end of B's interval"),
        ("log_psi_ci_high_b", pa.float64(), "upper end of B's interval"),
        (
            "psi_by_interval",
            pa.bool_(),
            "both runs have an interval for this neuron, so psi_changed uses them",
        ),
        (
            "psi_changed",
            pa.bool_(),
            "with intervals in both runs: the two intervals do not overlap; otherwise: log PSI differs at "
            "all (the rule before intervals); null unless both runs scored the neuron",
        ),
        ("pure_split_a", pa.float64(), "PURE inter - intra embedding distance in A (smallest k)"),
        ("pure_split_b", pa.float64(), "the same in B"),
        ("explanation_a", pa.string(), "linear explanation's concepts in A, joined by ' + '"),
        ("explanation_b", pa.string(), "the same in B"),
        ("explanation_changed", pa.bool_(), "the concept lists differ"),
    ],
)

TABLES: dict[str, TableSpec] = {t.name: t for m in METHODS for t in m.tables}
TABLES[NEURON_DIFF.name] = NEURON_DIFF


def render_markdown() -> str:
    lines = [
        "# Tables",
        "",
        f"Generated from each method's `tables.py` (collected by `neurodis/schemas.py`, schema version "
        f"{SCHEMA_VERSION}) by "
        "`python -m neurodis.schemas > docs/schemas.md`; do not edit by hand.",
        "",
        "Each table is a directory of Parquet files under the run directory; read one with "
        '`pyarrow.dataset.dataset(RUN_DIR / "<table>")`. Only files named in a committed shard '
        "manifest count: `neurodis.io.tables.read_table` reads exactly those.",
        "",
    ]
    for t in TABLES.values():
        lines += [
            f"## `{t.name}`",
            "",
            t.doc,
            "",
            f"Key: {', '.join(f'`{k}`' for k in t.key)}. Written by stage `{t.stage}`.",
            "",
            "| column | type | meaning |",
            "|---|---|---|",
        ]
        lines += [f"| `{f.name}` | `{f.type}` | {t.column_docs[f.name]} |" for f in t.schema]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    import sys

    sys.stdout.write(render_markdown())
