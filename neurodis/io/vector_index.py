"""faiss inner-product indexes over unit vectors (cosine = inner product), written atomically.

An index file holds the vectors and their int64 ids (``IndexIDMap2`` over ``IndexFlatIP``: exact search).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np


def build_index(vectors: np.ndarray, ids: np.ndarray):  # type: ignore[no-untyped-def]
    import faiss

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"build_index: vectors must be [n, d], got shape {x.shape}")
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(x.shape[1]))
    if len(x):
        index.add_with_ids(x, np.ascontiguousarray(ids, dtype=np.int64))
    return index


def write_index(vectors: np.ndarray, ids: np.ndarray, final: Path, tmp_dir: Path) -> Path:
    """Build an exact inner-product index and rename it into place; returns ``final``."""
    import faiss

    tmp_dir.mkdir(parents=True, exist_ok=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir / f".{final.name}.{uuid.uuid4().hex}.tmp"
    try:
        faiss.write_index(build_index(vectors, ids), str(tmp))
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


class VectorIndex:
    """A loaded index: ``search(queries, k)`` -> (scores ``[q, k]``, ids ``[q, k]``; id -1 = no hit)."""

    def __init__(self, path: Path) -> None:
        import faiss

        if not Path(path).is_file():
            raise FileNotFoundError(f"no vector index at {path}; run the embed stage first")
        self.index = faiss.read_index(str(path))

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        scores, ids = self.index.search(q, min(k, max(self.size, 1)))
        return scores, ids
