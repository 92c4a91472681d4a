"""Per-channel top-K by value with deterministic ties (larger value first, then smaller image id).

``merge_top_k(top_k(a), top_k(b)) == top_k(concat(a, b))``: the order is total (image ids are
unique), so the merge is associative and commutative, and any sharding gives identical results.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class TopK(NamedTuple):
    """Each field is ``[k, C]``; row r is rank r. ``k`` may be less than requested (few images)."""

    values: np.ndarray  # float32
    image_ids: np.ndarray  # int64
    h: np.ndarray  # int32
    w: np.ndarray  # int32


def empty_top_k(channels: int) -> TopK:
    return TopK(
        np.zeros((0, channels), np.float32),
        np.zeros((0, channels), np.int64),
        np.zeros((0, channels), np.int32),
        np.zeros((0, channels), np.int32),
    )


def _select(values: np.ndarray, ids: np.ndarray, h: np.ndarray, w: np.ndarray, k: int) -> TopK:
    """values/h/w: [N, C]; ids: [N, C] (ids may differ per column). Returns the top-k per column."""
    n = values.shape[0]
    k = min(k, n)
    if k == 0:
        return empty_top_k(values.shape[1])
    key = np.where(np.isnan(values), -np.inf, values).astype(np.float64)
    # lexsort along axis 0: last key is primary -> (-value) ascending, then image id ascending.
    order = np.lexsort((ids, -key), axis=0)[:k]
    take = lambda a: np.take_along_axis(a, order, axis=0)  # noqa: E731
    return TopK(
        take(values).astype(np.float32),
        take(ids).astype(np.int64),
        take(h).astype(np.int32),
        take(w).astype(np.int32),
    )


def top_k(values: np.ndarray, image_ids: np.ndarray, h: np.ndarray, w: np.ndarray, k: int) -> TopK:
    """Top-k per channel of a block of images. values/h/w: ``[N, C]``; image_ids: ``[N]`` unique."""
    if values.ndim != 2:
        raise ValueError(f"values must be [N, C], got shape {values.shape}")
    ids = np.broadcast_to(np.asarray(image_ids, np.int64)[:, None], values.shape)
    return _select(values, ids, h, w, k)


def merge_top_k(a: TopK, b: TopK, k: int) -> TopK:
    """Associative merge of two partial results over disjoint image sets."""
    if a.values.shape[1] != b.values.shape[1]:
        raise ValueError(f"cannot merge top-k over {a.values.shape[1]} and {b.values.shape[1]} channels")
    cat = [np.concatenate([x, y], axis=0) for x, y in zip(a, b)]
    return _select(cat[0], cat[1], cat[2], cat[3], k)
