"""Probe sets: the listing (image id, path, label) and decoding of one image into pixels.

Image ids are positions in a deterministic listing (sorted paths for image folders, file order for
manifests, render index for the synthetic world), so every worker and every rerun agrees on them.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from neurodis.data.sources import SYNTHETIC_SCHEME, parse_path, synthetic_path, synthetic_source
from neurodis.io.store import StorePath, input_path, is_remote, join_input, list_files, read_table_file
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


def _list_imagefolder(root: str) -> list[ProbeRecord]:
    """Every image below ``root`` (a local folder or a URI), sorted by path; the label is the first
    folder below ``root``."""
    folder = StorePath.of(root)
    if not folder.is_dir():
        raise SpecError(
            f"data.root {root!r} is not a folder; point it at a folder of class sub-folders of images"
        )
    base = str(folder).rstrip("/") + ("/" if folder.remote else os.sep)
    files: list[tuple[str, str | None]] = []
    for path, _, _ in list_files(folder, stats=False):
        parts = path[len(base) :].replace(os.sep, "/").split("/")
        if any(p.startswith(".") for p in parts) or not parts[-1].lower().endswith(IMAGE_EXTENSIONS):
            continue
        files.append((path, parts[0] if len(parts) > 1 else None))
    files.sort(key=lambda t: t[0])
    return [ProbeRecord(i, p, lab) for i, (p, lab) in enumerate(files)]


def _list_manifest(location: str) -> list[ProbeRecord]:
    """A CSV or Parquet manifest (local or a URI) with a ``path`` column and optionally ``label``;
    relative paths are read from the manifest's folder."""
    if not StorePath.of(location).is_file():
        raise SpecError(
            f"data.manifest {location!r} does not exist; give a CSV or Parquet file with a 'path' column"
        )
    table = read_table_file(location)
    if "path" not in table.column_names:
        raise SpecError(f"data.manifest {location!r} has no 'path' column (columns: {table.column_names})")
    paths = [str(p) for p in table.column("path").to_pylist()]
    labels = table.column("label").to_pylist() if "label" in table.column_names else [None] * len(paths)
    base = str(StorePath.of(location).parent)
    return [
        ProbeRecord(i, join_input(base, p), None if lab is None else str(lab))
        for i, (p, lab) in enumerate(zip(paths, labels))
    ]


def _list_synthetic(cfg: DataConfig) -> list[ProbeRecord]:
    labels = synthetic_source().labels(cfg.n_images, cfg.image_size, cfg.seed)
    return [
        ProbeRecord(i, synthetic_path(cfg.seed, cfg.image_size, i), labels[i]) for i in range(cfg.n_images)
    ]


def list_probe_set(cfg: DataConfig) -> list[ProbeRecord]:
    """The listing of a probe set (cheap: no decoding). Empty listings are an error."""
    if cfg.kind == "imagefolder":
        records = _list_imagefolder(os.path.expanduser(cfg.root or ""))
    elif cfg.kind == "manifest":
        records = _list_manifest(os.path.expanduser(cfg.manifest or cfg.root or ""))
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
    from PIL import UnidentifiedImageError

    k = min(sample, len(records))
    picks = sorted({round(i * (len(records) - 1) / max(1, k - 1)) for i in range(k)})
    failures = []
    for i in picks:
        try:
            with _open_image(records[i].path):  # reads the header only (the whole file from a store)
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
    """Identity of a probe set: paths, labels, file sizes and modification times (on an object store
    from one listing of the folder that holds the images, not one request per image)."""
    stats = _remote_stats([r.path for r in records if _on_store(r.path)])
    h = hashlib.sha256()
    for r in records:
        h.update(f"{r.image_id}\0{r.path}\0{r.label}\0".encode())
        if r.path.startswith(SYNTHETIC_SCHEME):
            continue
        if _on_store(r.path):
            st = stats.get(r.path)
            h.update(b"missing\n" if st is None else f"{st[0]}:{st[1]}\n".encode())
            continue
        try:
            s = os.stat(r.path)
            h.update(f"{s.st_size}:{s.st_mtime_ns}\n".encode())
        except OSError:
            h.update(b"missing\n")
    return h.hexdigest()[:16]


def _on_store(path: str) -> bool:
    return is_remote(path) and not path.startswith(SYNTHETIC_SCHEME)


def _remote_stats(paths: list[str]) -> dict[str, tuple[int, int]]:
    """``{uri: (size, mtime_ns)}`` by listing, per bucket, the deepest folder that holds all of them."""
    by_bucket: dict[str, list[str]] = {}
    for p in paths:
        by_bucket.setdefault(p.split("/", 3)[2], []).append(p)  # scheme:, "", bucket, key
    out: dict[str, tuple[int, int]] = {}
    for group in by_bucket.values():
        common = os.path.commonprefix(group)
        wanted = set(group)
        try:
            for loc, size, mtime in list_files(StorePath.of(common[: common.rfind("/")])):
                if loc in wanted:
                    out[loc] = (size, mtime)
        except OSError:
            pass  # unreachable: these images count as missing, the forward stage rejects them
    return out


def _open_image(path: str, data: bytes | None = None) -> Any:
    """``PIL.Image.open`` of a local path, or of the bytes of an object on a store (``data``: those
    bytes, already fetched)."""
    from PIL import Image

    if _on_store(path):
        return Image.open(io.BytesIO(input_path(path).read_bytes() if data is None else data))
    return Image.open(path)


def decode(path: str, data: bytes | None = None) -> np.ndarray:
    """RGB ``uint8 [H, W, 3]`` pixels of one probe image (a local path or a URI; ``data``: the object's
    bytes when already fetched); raises ``BadImageError`` with the reason."""
    if path.startswith(SYNTHETIC_SCHEME):
        return synthetic_source().render(*parse_path(path))
    from PIL import UnidentifiedImageError

    try:
        with _open_image(path, data) as im:
            im.load()
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise _bad(e) from None


def _bad(e: BaseException) -> BadImageError:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    return BadImageError(f"{type(e).__name__}: {msg}")


def _fetch(path: str) -> bytes | OSError:
    try:
        return input_path(path).read_bytes()
    except OSError as e:
        return e


def decoders(paths: Iterable[str], ahead: int = 16) -> Iterator[Callable[[], np.ndarray]]:
    """For each path in order, a call that returns its pixels or raises ``BadImageError`` (as
    ``decode``). Images on an object store are downloaded up to ``ahead`` images in advance by a pool
    of threads, so a worker does not wait one request's latency per image; local paths are read when
    called."""
    window: deque[tuple[str, Future[bytes | OSError] | None]] = deque()

    def call(path: str, fetched: Future[bytes | OSError] | None) -> Callable[[], np.ndarray]:
        if fetched is None:
            return lambda: decode(path)

        def run() -> np.ndarray:
            data = fetched.result()
            if isinstance(data, OSError):
                raise _bad(data)
            return decode(path, data)

        return run

    with ThreadPoolExecutor(max_workers=ahead, thread_name_prefix="neurodis-fetch") as pool:
        for path in paths:
            window.append((path, pool.submit(_fetch, path) if _on_store(path) else None))
            if len(window) > ahead:
                yield call(*window.popleft())
        while window:
            yield call(*window.popleft())
