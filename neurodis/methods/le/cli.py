"""``neurodis explain RUN_DIR LAYER/CHANNEL``: argument parsing and printing only.

The CLI wires it in with ``register(sub)`` on its sub-parsers (``METHOD.cli`` names this module).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def cmd_explain(args: argparse.Namespace) -> int:  # Linear Explanations
    from neurodis.methods.le.report import explain_report

    sys.stdout.write(explain_report(args.run_dir, args.neuron, top=args.top))
    return 0


def register(sub: Any) -> argparse.ArgumentParser:
    """Add the ``explain`` command to an ``argparse`` sub-parsers object; returns its parser."""
    e = sub.add_parser("explain", help="one neuron's linear explanation(s), scores and top images")
    e.add_argument("run_dir")
    e.add_argument("neuron", help="LAYER/CHANNEL, e.g. layer4/117")
    e.add_argument("--top", type=int, default=10, help="top images to list")
    e.set_defaults(fn=cmd_explain)
    return e
