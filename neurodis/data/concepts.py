"""Concept sets (plain text, one concept a line) and class -> superclass maps.

A concept set is named in the spec by a shipped set's name (``testbed``; files under
``neurodis/resources/concepts/``) or by a path to a text file. Blank lines and lines starting with
``#`` are skipped; a concept listed twice is kept once.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

from neurodis.types import SpecError

log = logging.getLogger(__name__)

LABELS_SET = "labels"  # the probe set's class and superclass names, embedded for calibration


def shipped_sets() -> list[str]:
    root = resources.files("neurodis") / "resources" / "concepts"
    return sorted(p.name[:-4] for p in root.iterdir() if p.name.endswith(".txt"))


def parse_lines(text: str) -> list[str]:
    out: list[str] = []
    seen: set[str] = set()
    for line in text.splitlines():
        item = line.strip()
        if not item or item.startswith("#"):
            continue
        if item in seen:
            log.warning("concept %r is listed twice; keeping one", item)
            continue
        seen.add(item)
        out.append(item)
    return out


def load_concept_set(ref: str, key: str = "embed.concepts") -> tuple[str, tuple[str, ...]]:
    """(set name, concepts) of a shipped set name or a text file path."""
    path = Path(ref).expanduser()
    if path.is_file():
        name, text = path.stem, path.read_text()
    elif ref in shipped_sets():
        name = ref
        text = (resources.files("neurodis") / "resources" / "concepts" / f"{ref}.txt").read_text()
    else:
        raise SpecError(
            f"{key} {ref!r} is neither a file nor a shipped concept set ({', '.join(shipped_sets())}); "
            "point it at a text file with one concept per line"
        )
    concepts = tuple(parse_lines(text))
    if len(concepts) < 2:
        raise SpecError(f"{key} {ref!r} lists {len(concepts)} concept(s); PSI's D needs at least two")
    if name == LABELS_SET:
        raise SpecError(
            f"{key}: the set name {LABELS_SET!r} is reserved for the probe labels; rename the file"
        )
    return name, concepts


def load_superclasses(path: str | None, key: str = "embed.superclasses") -> dict[str, tuple[str, ...]]:
    """``class<TAB or comma>superclass`` lines (a class may appear on several lines) -> class ->
    superclasses."""
    if path is None:
        return {}
    p = Path(path).expanduser()
    if not p.is_file():
        raise SpecError(f"{key} {path!r} does not exist; give a text file of 'class<TAB>superclass' lines")
    out: dict[str, list[str]] = {}
    for n, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        sep = "\t" if "\t" in line else ","
        parts = [x.strip() for x in line.split(sep)]
        if len(parts) != 2 or not all(parts):
            raise SpecError(f"{key} {path!r} line {n}: expected 'class<TAB>superclass', got {line!r}")
        out.setdefault(parts[0], []).append(parts[1])
    return {k: tuple(v) for k, v in out.items()}


def label_text(label: str) -> str:
    """A class label as a concept string (folder names use underscores for spaces)."""
    return label.replace("_", " ").strip()
