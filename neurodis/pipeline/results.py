"""Shaping a method's results summary: status counts per neuron, one terminal line per stage and
layer, and the warnings that say when a result cannot mean anything.

A method's part of ``summary.json`` (the value its ``steps`` generator returns) may hold:

* ``text``: a one-line headline for the stage;
* ``lines``: one line per layer (or explainer and layer), each starting with the layer's name;
* ``warnings``: one line each for results that cannot mean anything (every live neuron of a layer
  has one non-ok status, every patch is the whole image, ...), naming what to change.

The counts come from the method's committed tables, so they are right for a resumed run that
computed nothing new. Pure functions of plain values: no files, no tables.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

FAILED = "failed"  # every "error: ..." status counts as one status


def status_key(status: str) -> str:
    """``error: ...`` statuses count as ``failed``; every other status as itself."""
    return FAILED if status.startswith("error") else status


def count_statuses(statuses: Iterable[str]) -> dict[str, int]:
    """Per status, how many neurons (``ok``, ``dead`` and ``failed`` always present)."""
    counts = Counter(status_key(s) for s in statuses)
    out = {"ok": counts.pop("ok", 0), "dead": counts.pop("dead", 0), FAILED: counts.pop(FAILED, 0)}
    out.update(sorted(counts.items()))
    return out


def status_phrase(counts: Mapping[str, int]) -> str:
    """``"14 ok / 2 dead / 0 failed (empty 3)"``: the three main counts, then the others."""
    head = f"{counts.get('ok', 0)} ok / {counts.get('dead', 0)} dead / {counts.get(FAILED, 0)} failed"
    rest = [f"{s} {n}" for s, n in counts.items() if s not in ("ok", "dead", FAILED) and n]
    return f"{head} ({', '.join(rest)})" if rest else head


def uniform_status_warning(
    where: str, counts: Mapping[str, int], hints: Mapping[str, str] | None = None
) -> str | None:
    """A warning when every live (not dead) neuron has the same status and it is not ``ok``; ``hints``
    maps a status to what it means or what to change."""
    live = {s: n for s, n in counts.items() if s != "dead" and n}
    if len(live) != 1:
        return None
    status, n = next(iter(live.items()))
    if status == "ok":
        return None
    hint = (hints or {}).get(status)
    return f"{where}: every live neuron ({n}) is '{status}'" + (f": {hint}" if hint else "")


def median(values: Iterable[Any]) -> float | None:
    """The median of the finite values (None and NaN left out); None when there are none."""
    x = np.asarray([v for v in values if v is not None], np.float64)
    x = x[np.isfinite(x)]
    return float(np.median(x)) if x.size else None


def fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"
