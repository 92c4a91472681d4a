"""Compare every committed table of two run directories row for row.

Rows are compared as sets of full rows (each table's rows carry their full key, so the order of
files inside a table folder does not matter). Columns that hold wall-clock facts are left out.

    python scripts/compare_runs.py RUN_A RUN_B

Prints one line per table and a final JSON line; exits 1 when any table differs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

VOLATILE = {"path"}  # absolute probe paths differ between two run folders


def committed_tables(run: Path) -> dict[str, list[Path]]:
    """table -> files named by committed manifests (any namespace), including the nested runs a method
    keeps inside the run directory (LE's auxiliary embedding runs), prefixed with their folder."""
    out: dict[str, list[Path]] = {}
    for m in sorted(run.glob("**/_manifests/*/*.json")):
        root = m.parent.parent.parent
        prefix = "" if root == run else f"{root.relative_to(run)}/"
        d = json.loads(m.read_text())
        for table, rel in d["files"].items():
            if rel.endswith(".parquet"):
                out.setdefault(prefix + table, []).append(root / rel)
    return out


def canonical_rows(files: list[Path]) -> list[str]:
    rows: list[str] = []
    for f in files:
        t = pq.read_table(f)
        keep = [c for c in t.column_names if c not in VOLATILE]
        for r in t.select(keep).to_pylist():
            rows.append(json.dumps(r, sort_keys=True, default=_enc))
    return sorted(rows)


def _enc(o: Any) -> Any:
    if isinstance(o, bytes):
        return o.hex()
    return str(o)


def compare(a: Path, b: Path) -> dict[str, Any]:
    ta, tb = committed_tables(a), committed_tables(b)
    result: dict[str, Any] = {"tables": {}, "identical": True}
    for name in sorted(set(ta) | set(tb)):
        if name not in ta or name not in tb:
            status = f"only in {'A' if name in ta else 'B'}"
        else:
            ra, rb = canonical_rows(ta[name]), canonical_rows(tb[name])
            status = "identical" if ra == rb else f"DIFFERENT ({len(ra)} vs {len(rb)} rows)"
            result["tables"][name] = {"rows": len(ra), "status": status}
        if status != "identical":
            result["identical"] = False
            result["tables"].setdefault(name, {"status": status})
        print(f"{name:<24} {status}")
    return result


if __name__ == "__main__":
    res = compare(Path(sys.argv[1]), Path(sys.argv[2]))
    print(
        json.dumps(
            {
                "identical": res["identical"],
                "tables": len(res["tables"]),
                "rows": sum(v.get("rows", 0) for v in res["tables"].values()),
            }
        )
    )
    sys.exit(0 if res["identical"] else 1)
