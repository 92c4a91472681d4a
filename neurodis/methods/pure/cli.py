"""``neurodis assign RUN_DIR IMAGES... --neuron layer/channel``: argument parsing and printing only.

The CLI wires it in with ``register(sub)`` on its sub-parsers (``METHOD.cli`` names this module).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def cmd_assign(args: argparse.Namespace) -> int:
    from neurodis.methods.pure.query import assign

    rows = assign(args.run_dir, args.images, args.neuron, k=args.k)
    if args.json:
        sys.stdout.write(json.dumps(rows) + "\n")
        return 0
    for r in rows:
        if r["status"] == "ok":
            sys.stdout.write(
                f"{r['image']}: {r['neuron']} virtual neuron {r['cluster']} of {r['k']} "
                f"(distance {r['distance']:.4f})\n"
            )
        else:
            sys.stdout.write(f"{r['image']}: {r['neuron']} {r['status']}\n")
    return 0 if all(not r["status"].startswith("error") for r in rows) else 1


def register(sub: Any) -> argparse.ArgumentParser:
    """Add the ``assign`` command to an ``argparse`` sub-parsers object; returns its parser."""
    a = sub.add_parser(
        "assign", help="assign new images to a neuron's PURE virtual neurons (nearest centroid)"
    )
    a.add_argument("run_dir", help="run directory of an audit that ran the pure stage")
    a.add_argument("images", nargs="+", help="image files")
    a.add_argument("--neuron", required=True, help="layer/channel, e.g. layer4/117")
    a.add_argument(
        "--k", type=int, default=None, help="number of virtual neurons (default: the first of pure.k)"
    )
    a.add_argument("--json", action="store_true", help="print one JSON list instead of lines")
    a.set_defaults(fn=cmd_assign)
    return a
