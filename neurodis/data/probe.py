"""Probe sets: the listing (image id, path, label) and decoding of one image into pixels.

Image ids are positions in a deterministic listing (sorted paths for image folders, file order for
manifests, render index for the synthetic world), so every worker and every rerun agrees on them.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from neurodis.data.sources import SYNTHETIC_SCHEME, parse_path, synthetic_path, synthetic_source
from neurodis.sections import DataConfig
from neurodis.types import SpecError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@dataclass(frozen=True)
class ProbeRecord:
    image_id: int
    path: str
    label: str | None


class BadImageError(Exception):
    """An image that cannot be decoded; it goes to the rejects table."""


def _list_imagefolder(root: Path) -> list[ProbeRecord]:
    if not root.is_dir():
        raise SpecError(
            f"data.root {str(root)!r} is not a folder; point it at a folder of class sub-folders of images"
        )
    files: list[tuple[str, str | None]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = Path(dirpath).relative_to(root)
        for name in sorted(filenames):
            if name.startswith(".") or not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            label = rel.parts[0] if rel.parts else None
            files.append((str(Path(dirpath) / name), label))
    files.sort(key=lambda t: t[0])
    return [ProbeRecord(i, p, lab) for i, (p, lab) in enumerate(files)]


def _list_manifest(path: Path) -> list[ProbeRecord]:
    if not path.is_file():
        raise SpecError(
            f"data.manifest {str(path)!r} does not exist; give a CSV or Parquet file with a 'path' column"
        )
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    table = pq.read_table(path) if path.suffix.lower() in (".parquet", ".pq") else pcsv.read_csv(path)
    if "path" not in table.column_names:
        raise SpecError(f"data.manifest {str(path)!r} has no 'path' column (columns: {table.column_names})")
    paths = [str(p) for p in table.column("path").to_pylist()]
    labels = table.column("label").to_pylist() if "label" in table.column_names else [None] * len(paths)
    base = path.parent
    out = []
    for i, (p, lab) in enumerate(zip(paths, labels)):
        full = p if Path(p).is_absolute() else str(base / p)
        out.append(ProbeRecord(i, full, None if lab is None else str(lab)))
    return out


def _list_synthetic(cfg: DataConfig) -> list[ProbeRecord]:
    labels = synthetic_source().labels(cfg.n_images, cfg.image_size, cfg.seed)
    return [
        ProbeRecord(i, synthetic_path(cfg.seed, cfg.image_size, i), labels[i]) for i in range(cfg.n_images)
    ]


def list_probe_set(cfg: DataConfig) -> list[ProbeRecord]:
    """The listing of a probe set (cheap: no decoding). Empty listings are an error."""
    if cfg.kind == "imagefolder":
        records = _list_imagefolder(Path(cfg.root or ""))
    elif cfg.kind == "manifest":
        records = _list_manifest(Path(cfg.manifest or cfg.root or ""))
    else:
        records = _list_synthetic(cfg)
    if cfg.limit is not None:
        records = records[: cfg.limit]
    if not records:
        where = cfg.root or cfg.manifest
        raise SpecError(
            f"data: the probe set at {where!r} lists no images (extensions {', '.join(IMAGE_EXTENSIONS)}); "
            "point data.root at a folder of class sub-folders holding images"
        )
    return records


def data_key(cfg: DataConfig) -> str:
    """The spec key that names where the probe images (and their labels) come from."""
    return "data.manifest" if cfg.kind == "manifest" else "data.root" if cfg.kind == "imagefolder" else "data"


def check_readable(cfg: DataConfig, records: Sequence[ProbeRecord], sample: int = 16) -> None:
    """Open the headers (not the pixels) of up to ``sample`` evenly spaced images of the listing; a
    ``SpecError`` when none opens (files that are not images, a manifest naming missing files). Some
    unreadable images are no error: the forward stage rejects them one by one."""
    if cfg.kind == "synthetic" or not records:
        return
    from PIL import Image, UnidentifiedImageError

    k = min(sample, len(records))
    picks = sorted({round(i * (len(records) - 1) / max(1, k - 1)) for i in range(k)})
    failures = []
    for i in picks:
        try:
            with Image.open(records[i].path):  # reads the header only
                pass
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
            failures.append(f"{records[i].path!r}: {type(e).__name__}")
    if len(failures) == len(picks):
        raise SpecError(
            f"{data_key(cfg)}: none of the {len(picks)} sampled probe images opens as an image (e.g. "
            f"{failures[0]}); point {data_key(cfg)} at image files"
        )
    if failures:
        log.warning(
            "%s: %d of %d sampled probe images do not open (e.g. %s); the forward stage rejects them",
            data_key(cfg),
            len(failures),
            len(picks),
            failures[0],
        )


def fingerprint(records: list[ProbeRecord]) -> str:
    """Identity of a probe set: paths, labels, file sizes and modification times."""
    h = hashlib.sha256()
    for r in records:
        h.update(f"{r.image_id}\0{r.path}\0{r.label}\0".encode())
        if not r.path.startswith(SYNTHETIC_SCHEME):
            try:
                st = os.stat(r.path)
                h.update(f"{st.st_size}:{st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(b"missing\n")
    return h.hexdigest()[:16]


def decode(path: str) -> np.ndarray:
    """RGB ``uint8 [H, W, 3]`` pixels of one probe image; raises ``BadImageError`` with the reason."""
    if path.startswith(SYNTHETIC_SCHEME):
        return synthetic_source().render(*parse_path(path))
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise BadImageError(f"{type(e).__name__}: {msg}") from None
