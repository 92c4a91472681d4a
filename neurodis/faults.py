"""Fault injection for the fault-tolerance tests, driven by environment variables that a runner passes
to its workers (``RayRunner(env_vars=...)`` or a job's runtime environment). Unset, nothing happens.

- ``NEURODIS_FAULT_EXIT_UNIT=PATTERN[,PATTERN...]``: a worker process that starts a unit whose
  ``stage/unit`` name matches a shell pattern (``forward/shard-00001``, ``pure/*``,
  ``le-ablation/*``) is killed with SIGKILL, as a crashed GPU worker would be. With
  ``NEURODIS_FAULT_MARKER=DIR`` each pattern fires once (``DIR/<i>`` records the unit that died for
  pattern ``i``); without it, on every attempt (a persistent failure).
- ``NEURODIS_FAULT_EXIT_COMMIT=PATTERN[,PATTERN...]``: the same, but after the unit wrote its table
  files and before its manifest: the files are left behind uncommitted (same marker rule, its own
  ``NEURODIS_FAULT_MARKER/commit-<i>`` files).
- ``NEURODIS_FAULT_PAUSE_UNIT=PATTERN[,PATTERN...]``: a worker that starts a matching unit sleeps
  ``NEURODIS_FAULT_PAUSE_S`` seconds (default 60) first, as a slow unit would (the interrupt tests
  signal the driver while it waits there).
- ``NEURODIS_FAULT_KILL_DRIVER_AFTER=N`` (read by the audit driver): SIGKILL the driver after N units.
"""

from __future__ import annotations

import fnmatch
import os
import signal
import time
from pathlib import Path


def _matches(patterns: str, name: str) -> list[int]:
    """Indexes of the comma-separated shell patterns that match ``name``."""
    return [
        i for i, p in enumerate(p.strip() for p in patterns.split(",")) if p and fnmatch.fnmatchcase(name, p)
    ]


def at_unit_start(stage: str, unit: str) -> None:
    """Called by every worker when it starts a unit, after its attempt is recorded."""
    name = f"{stage}/{unit}"
    if _matches(os.environ.get("NEURODIS_FAULT_PAUSE_UNIT", ""), name):
        time.sleep(float(os.environ.get("NEURODIS_FAULT_PAUSE_S", "60")))
    _exit_if("NEURODIS_FAULT_EXIT_UNIT", name, "")


def before_manifest(stage: str, unit: str) -> None:
    """Called by :func:`neurodis.io.manifest.commit_unit` after the unit's files, before its manifest."""
    _exit_if("NEURODIS_FAULT_EXIT_COMMIT", f"{stage}/{unit}", "commit-")


def _exit_if(variable: str, name: str, prefix: str) -> None:
    patterns = os.environ.get(variable)
    if not patterns:
        return
    for i in _matches(patterns, name):
        marker = os.environ.get("NEURODIS_FAULT_MARKER")
        if marker:
            Path(marker).mkdir(parents=True, exist_ok=True)
            try:  # exclusive create: of several workers racing for one pattern, one dies
                fd = os.open(Path(marker) / f"{prefix}{i}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                continue
            with os.fdopen(fd, "w") as f:
                f.write(name)
        os.kill(os.getpid(), signal.SIGKILL)
