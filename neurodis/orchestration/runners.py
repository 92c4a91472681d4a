"""Runners: the same stage code runs in-process (LocalRunner) or on Ray (RayRunner).

This package is the only place that imports ``ray``.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from neurodis.callables import search_folders, use_driver_folders
from neurodis.pipeline.step import Resources

log = logging.getLogger(__name__)


class Runner(Protocol):
    def map_actors(
        self,
        factory: Callable[[], Any],
        method: str,
        items: Sequence[Any],
        resources: Resources,
        workers: int,
    ) -> Iterator[dict[str, Any]]: ...

    def map_tasks(
        self, fn: Callable[..., dict[str, Any]], items: Sequence[tuple[Any, ...]], resources: Resources
    ) -> Iterator[dict[str, Any]]: ...

    def cluster_gpus(self) -> float: ...

    def cluster_cpus(self) -> float: ...


class LocalRunner:
    """Everything in this process, one item at a time (tests, debugging, no Ray start-up cost)."""

    def map_actors(
        self,
        factory: Callable[[], Any],
        method: str,
        items: Sequence[Any],
        resources: Resources,
        workers: int,
    ) -> Iterator[dict[str, Any]]:
        if not items:
            return
        worker = factory()
        for item in items:
            yield getattr(worker, method)(item)

    def map_tasks(
        self, fn: Callable[..., dict[str, Any]], items: Sequence[tuple[Any, ...]], resources: Resources
    ) -> Iterator[dict[str, Any]]:
        for args in items:
            yield fn(*args)

    def cluster_gpus(self) -> float:
        import torch

        return float(torch.cuda.device_count())

    def cluster_cpus(self) -> float:
        return float(os.cpu_count() or 1)


class _AttemptCounter:
    """Ray actor owned by the driver: how often each item of one ``map_actors`` call has been started.
    Ray Data restarts a dead worker and retries its item without bound; the adapters read this to stop
    an item that keeps killing its worker (``retries`` + 1 attempts) and report it as failed."""

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}

    def start(self, index: int) -> int:
        self.counts[index] = self.counts.get(index, 0) + 1
        return self.counts[index]


class _ActorAdapter:
    """Ray Data callable class: builds the worker once per actor, runs one item per batch row."""

    def __init__(
        self,
        factory: Callable[[], Any],
        method: str,
        threads: int,
        counter: Any,
        retries: int,
        folders: list[str],
    ) -> None:
        import ray
        import torch

        torch.set_num_threads(max(1, threads))
        use_driver_folders(folders)  # spec-named modules import from the driver's folders
        self.worker = factory()
        self.method = method
        self.counter, self.retries = counter, retries
        ctx = ray.get_runtime_context()
        self.placement = {
            "node": ctx.get_node_id(),
            "gpus": [str(g) for g in ray.get_gpu_ids()],
            "pid": os.getpid(),
        }

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        results = []
        import ray

        for index, b in zip(batch["index"], batch["item"]):
            item = pickle.loads(b)
            n = int(ray.get(self.counter.start.remote(int(index))))
            if n > self.retries + 1:
                unit = getattr(item, "unit", f"item-{int(index)}")
                r = {
                    "unit": unit,
                    "error": f"worker died on all {n - 1} attempts (the process exited while "
                    "running this unit: out of memory, a crash in native code, or a "
                    "lost node)",
                }
            else:
                r = getattr(self.worker, self.method)(item)
            r["placement"] = self.placement
            results.append(pickle.dumps(r))
        return {"result": results}


def _call_with_driver_folders(folders: list[str], fn: Callable[..., Any], *args: Any) -> Any:
    """Ray task body: ``fn(*args)`` with spec-named modules importable from the driver's folders."""
    use_driver_folders(folders)
    return fn(*args)


def ensure_ray(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """Connect to ``address`` (or ``RAY_ADDRESS`` inside a Ray job), else start an embedded local
    instance. An already initialised Ray is reused."""
    import ray

    if ray.is_initialized():
        return
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address or None, logging_level=logging.WARNING)
        return
    ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, logging_level=logging.WARNING)


class RayRunner:
    """GPU-stage workers as a Ray Data actor pool (model loaded once per actor); CPU stages as
    Ray tasks with a bounded number in flight. Results are small metadata dicts."""

    def __init__(
        self,
        address: str | None = None,
        max_in_flight: int | None = None,
        retries: int = 3,
        env_vars: dict[str, str] | None = None,
        wait_for_workers_s: int | None = None,
    ) -> None:
        import ray

        self.started_ray = not ray.is_initialized()  # this runner owns the Ray it started
        ensure_ray(address)
        self.ray = ray
        self.max_in_flight = max_in_flight
        self.retries = retries
        # with a value, a stage's actor pool starts work only once all its workers are up (or fails after
        # that many seconds); by default work starts on the first worker and the others join as they come
        self.wait_for_workers_s = wait_for_workers_s
        # extra environment for the workers (e.g. fault injection in tests)
        self.runtime_env: dict[str, Any] | None = {"env_vars": dict(env_vars)} if env_vars else None

    def shutdown(self) -> None:
        """Stop the embedded Ray instance this runner started (disconnect from a cluster it joined);
        a Ray initialised by someone else is left alone."""
        if self.started_ray and self.ray.is_initialized():
            self.ray.shutdown()

    def cluster_gpus(self) -> float:
        return float(self.ray.cluster_resources().get("GPU", 0.0))

    def cluster_cpus(self) -> float:
        return float(self.ray.cluster_resources().get("CPU", 1.0))

    def map_actors(
        self,
        factory: Callable[[], Any],
        method: str,
        items: Sequence[Any],
        resources: Resources,
        workers: int,
    ) -> Iterator[dict[str, Any]]:
        if not items:
            return
        import ray.data
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        wait_before = ctx.wait_for_min_actors_s
        if self.wait_for_workers_s is not None:  # for this call only: the context is process-wide
            ctx.wait_for_min_actors_s = int(self.wait_for_workers_s)
        ds = ray.data.from_items(
            [{"index": i, "item": pickle.dumps(it)} for i, it in enumerate(items)],
            override_num_blocks=len(items),
        )
        # Ray Data restarts a dead actor and retries its item; the counter bounds that at `retries`
        # retries, after which the item comes back as a failed unit and the others go on. It lives on
        # the driver's node, as long as the driver does.
        here = NodeAffinitySchedulingStrategy(node_id=self.ray.get_runtime_context().get_node_id(), soft=True)
        counter: Any = self.ray.remote(_AttemptCounter).options(num_cpus=0, scheduling_strategy=here).remote()
        out = ds.map_batches(
            _ActorAdapter,
            fn_constructor_args=(factory, method, resources.threads, counter, self.retries, search_folders()),
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=min(workers, len(items))),
            num_cpus=resources.cpus,
            num_gpus=resources.gpus or None,
            runtime_env=self.runtime_env,
        )
        try:
            for row in out.iter_rows():
                yield pickle.loads(row["result"])
        finally:
            ctx.wait_for_min_actors_s = wait_before
            self.ray.kill(counter)

    def map_tasks(
        self, fn: Callable[..., dict[str, Any]], items: Sequence[tuple[Any, ...]], resources: Resources
    ) -> Iterator[dict[str, Any]]:
        options: dict[str, Any] = {
            "num_cpus": resources.cpus,
            "num_gpus": resources.gpus,
            "max_retries": self.retries,
        }
        if self.runtime_env:
            options["runtime_env"] = self.runtime_env
        name = getattr(fn, "__qualname__", "task")
        remote = self.ray.remote(**options)(_call_with_driver_folders).options(name=name)
        folders = search_folders()
        limit = self.max_in_flight or max(2, int(self.ray.cluster_resources().get("CPU", 2)) * 2)
        pending: list[Any] = []
        queue = list(items)
        while queue or pending:
            while queue and len(pending) < limit:
                pending.append(remote.remote(folders, fn, *queue.pop(0)))
            ready, pending = self.ray.wait(pending, num_returns=1)
            yield self.ray.get(ready[0])
