"""Reading what the embed stage committed: concept and image vectors, the calibration, faiss queries."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from neurodis.io.layout import RunLayout
from neurodis.io.manifest import committed
from neurodis.io.store import StorePath
from neurodis.io.tables import read_table

STAGE = "embed"
IMAGES_STAGE = "embed-images"  # whole-image shards: their own namespace and hash, shared through the cache
TEXTS_UNIT, CALIBRATION_UNIT, INDEX_UNIT, GEOMETRY_UNIT = "texts", "calibration", "index", "geometry"


def index_paths(layout: RunLayout) -> dict[str, StorePath]:
    """The committed index unit's files (``concepts_index``, ``concept_names``, ``images_index``), as
    its manifest names them; ``FileNotFoundError`` when the unit is not committed."""
    m = committed(layout, STAGE).get(INDEX_UNIT)
    if m is None:
        raise FileNotFoundError(f"no committed vector indexes in {layout.root}; run the embed stage first")
    return {name: layout.root / rel for name, rel in m.files.items()}


def stack_vectors(col: pa.ChunkedArray, dim_hint: int = 0) -> np.ndarray:
    values = col.combine_chunks()
    if len(values) == 0:
        return np.zeros((0, dim_hint), np.float32)
    flat = values.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    return flat.reshape(len(values), -1)


def concept_vectors(
    run_dir: str | Path | RunLayout, embedder: str, concept_set: str, prompts: bool = False
) -> tuple[list[str], np.ndarray]:
    """(names, unit vectors ``[C, d]``) of a concept set -- or, with ``prompts``, of every prompt
    (names are then the prompts) -- sorted by concept (then template index)."""
    table = "prompt_embeddings" if prompts else "concept_embeddings"
    t = read_table(
        run_dir, table, filter=(ds.field("embedder") == embedder) & (ds.field("concept_set") == concept_set)
    )
    if t.num_rows == 0:
        raise FileNotFoundError(
            f"no {table} for embedder {embedder!r} and concept set {concept_set!r}; "
            "run the embed stage with 'texts' in embed.targets"
        )
    names = t["prompt" if prompts else "concept"].to_pylist()
    return names, stack_vectors(t["vector"])


def load_image_vectors(run_dir: str | Path | RunLayout, embedder: str) -> tuple[np.ndarray, np.ndarray]:
    """(image ids, unit vectors ``[n, d]``) of every embedded probe image."""
    t = read_table(run_dir, "image_embeddings", filter=ds.field("embedder") == embedder)
    return t["image_id"].to_numpy(), stack_vectors(t["vector"])


def calibration(run_dir: str | Path | RunLayout, embedder: str) -> tuple[float, float]:
    """The ``(a, b)`` of ``P = sigmoid(a * cos + a * b)`` recorded for ``embedder``."""
    t = read_table(run_dir, "embed_calibration", filter=ds.field("embedder") == embedder)
    if t.num_rows == 0:
        raise FileNotFoundError(
            f"no calibration for embedder {embedder!r}; run the embed stage (embed.calibration)"
        )
    return float(t["a"][0].as_py()), float(t["b"][0].as_py())


def nearest_concepts(
    run_dir: str | Path, embedder: str, vectors: np.ndarray, k: int = 5
) -> list[list[tuple[str, float]]]:
    """For each query vector, the ``k`` nearest concepts of the run's concept set by cosine."""
    from neurodis.io.vector_index import VectorIndex

    paths = index_paths(RunLayout(run_dir))
    if "concepts_index" not in paths:
        raise FileNotFoundError(f"no concept index in {run_dir}; run the embed stage with 'texts' in targets")
    names = json.loads(paths["concept_names"].read_text())
    scores, ids = VectorIndex(paths["concepts_index"]).search(vectors, k)
    return [
        [(names[i], float(s)) for s, i in zip(row_s, row_i) if i >= 0] for row_s, row_i in zip(scores, ids)
    ]


def nearest_images(
    run_dir: str | Path, embedder: str, vectors: np.ndarray, k: int = 5
) -> tuple[np.ndarray, np.ndarray]:
    """(cosines ``[q, k]``, image ids ``[q, k]``) of the probe images nearest each query vector."""
    from neurodis.io.vector_index import VectorIndex

    paths = index_paths(RunLayout(run_dir))
    if "images_index" not in paths:
        raise FileNotFoundError(f"no image index in {run_dir}; run the embed stage with 'images' in targets")
    return VectorIndex(paths["images_index"]).search(vectors, k)
