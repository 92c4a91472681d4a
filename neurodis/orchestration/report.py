"""Neuron pages of ``neurodis report --address`` drawn as Ray tasks (``neurodis.report`` imports no Ray)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any


def ray_mapper(address: str) -> Callable[[Callable[[Any], Any], list[Any]], list[Any]]:
    """``mapper(fn, chunks)``: one Ray task per chunk on the cluster at ``address`` (``auto``: the
    running one); every worker writes into the report folder, so it must be on a filesystem they share."""
    import ray

    def mapper(fn: Callable[[Any], Any], chunks: list[Any]) -> list[Any]:
        if not ray.is_initialized():
            ray.init(address=address, logging_level=logging.WARNING)
        task = ray.remote(num_cpus=1)(fn)
        return list(ray.get([task.remote(c) for c in chunks]))

    return mapper
