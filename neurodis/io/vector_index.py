"""faiss inner-product indexes over unit vectors (cosine = inner product). A unit writes its index to a
local file that ``commit_unit`` copies into the run under the attempt's name; readers load it from the
run (local or object store) into memory.

An index file holds the vectors and their int64 ids (``IndexIDMap2`` over ``IndexFlatIP``: exact search).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from neurodis.io.store import StorePath


def build_index(vectors: np.ndarray, ids: np.ndarray):  # type: ignore[no-untyped-def]
    import faiss

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"build_index: vectors must be [n, d], got shape {x.shape}")
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(x.shape[1]))
    if len(x):
        index.add_with_ids(x, np.ascontiguousarray(ids, dtype=np.int64))
    return index


def write_index(vectors: np.ndarray, ids: np.ndarray, final: Path) -> Path:
    """Build an exact inner-product index and write it to the local file ``final``; returns it."""
    import faiss

    final.parent.mkdir(parents=True, exist_ok=True)
    faiss.write_index(build_index(vectors, ids), os.fspath(final))
    return final


def read_faiss(path: Path | StorePath) -> Any:
    """Load a faiss index from a run (a local file, or an object read into memory)."""
    import faiss

    p = StorePath.of(path)
    if not p.remote:
        return faiss.read_index(os.fspath(p))
    return faiss.deserialize_index(np.frombuffer(p.read_bytes(), dtype=np.uint8))


class VectorIndex:
    """A loaded index: ``search(queries, k)`` -> (scores ``[q, k]``, ids ``[q, k]``; id -1 = no hit)."""

    def __init__(self, path: Path | StorePath) -> None:
        if not StorePath.of(path).is_file():
            raise FileNotFoundError(f"no vector index at {path}; run the embed stage first")
        self.index = read_faiss(path)

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        scores, ids = self.index.search(q, min(k, max(self.size, 1)))
        return scores, ids
