"""Ablation scores and Top Impact of Linear Explanations (``le-ablation``, ``le-ti`` namespaces).

Two paths compute the logits of a model whose neuron ``k`` is replaced by a constant ``v(x)`` per image
(the simulated activation ``c s(x) + d``, the training mean, or 0):

- **fast** (a layer followed by global average pooling and a linear head, detected numerically at plan
  time): rank-1 updates of the logits computed from the stored mean activations; no forward pass, CPU
  tasks (``abl.<explainer>.<layer>``, ``ti.<layer>``);
- **model** (any other layer): the logits of many (image, neuron) ablations in one batch (one row of the
  layer's output per pair, its channel replaced; none for a pair the replacement leaves unchanged); only
  the network after the layer runs per pair where the model's ``torch.fx`` graph splits at the layer (skip
  connections around it included), else the layer's output is replayed through a hook, else whole forward
  passes (``ModelPatcher``, the choice checked against plain forward passes); GPU actors that load the
  model once (``AblationWorker``; units ``abl.<explainer>.<layer>.<first channel>``, ``ti.<layer>.<first>``).

Both paths feed the same scoring code, and agree where both apply (tested).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import torch
from torch import nn

from neurodis.config import AuditSpec, PreprocessConfig
from neurodis.data.concepts import label_text
from neurodis.data.probe import decode
from neurodis.data.transforms import preprocess
from neurodis.io.tables import read_table
from neurodis.kernels.ablation import (
    abs_loss_change,
    alpha_score,
    ce_losses,
    fit_temperature,
    impact,
    loss_changes,
    norm_scale,
    optim_scale,
    rank1_logits,
    top_impact,
)
from neurodis.methods.forward.shards import predicted_classes, predicts
from neurodis.methods.le.explanations import (
    device_of,
    load_activations,
    load_source,
    load_split,
    probe_records,
    simulate,
)
from neurodis.methods.le.plan import ABLATION_STEP, TI_STEP, ExplainPlan
from neurodis.methods.le.sources import load_embedder_source
from neurodis.methods.le.tables import ABLATION_SCORES, TOP_IMPACT
from neurodis.models.loading import load_model
from neurodis.models.subnet import capture
from neurodis.models.tail import Split, split_at
from neurodis.pipeline.step import UnitOutput, run_unit

log = logging.getLogger(__name__)

ALPHA_RESAMPLES = 200  # bootstrap resamples of the test images behind alpha's interval
FAST_BUDGET = 1 << 22  # logits elements per fast-path tile (rows x neurons x classes)
CPU_PASS_BYTES = 8 << 20  # layer-output bytes per model-path pass on a CPU (a pass within the caches)


def scored_channels(n_channels: int, sample: int | None) -> tuple[np.ndarray, int]:
    """The channels of a layer whose ablation is scored and the sampling interval ``i``: every channel
    (``i = 1``), or with ``explain.ablation_neurons: n`` below the layer's width, channels ``0, i, 2i, ...``
    with ``i = ceil(channels / n)`` (at most ``n`` of them, spread over the layer)."""
    interval = 1 if sample is None or sample >= n_channels else -(-n_channels // sample)
    return np.arange(0, n_channels, interval, dtype=np.int64), interval


def sampled_rows(rows: np.ndarray, cap: int | None, seed: Sequence[int]) -> np.ndarray:
    """``rows`` (ascending), or with ``explain.ablation_images: cap`` below their number a uniform sample of
    ``cap`` of them drawn with ``numpy.random.default_rng(seed)`` (ascending): the same images for every
    layer and unit of a run."""
    if cap is None or len(rows) <= cap:
        return rows
    return np.sort(np.random.default_rng(list(seed)).choice(rows, cap, replace=False))


def alpha_interval(
    sim: torch.Tensor, mean: torch.Tensor, seed: int, resamples: int = ALPHA_RESAMPLES
) -> tuple[torch.Tensor, torch.Tensor]:
    """95 % percentile-bootstrap interval of alpha over the test images: ``sim``, ``mean`` ``[n, kc]`` are
    the per-image ``|L_sim - L|`` and ``|L_mean - L|``; each resample weighs the images by counts drawn
    with ``numpy.random.default_rng(seed).multinomial(n, [1/n] * n, size=resamples)`` (the same draws for
    every neuron). NaN where fewer than two images or every resample's mean-ablation changes nothing."""
    n, kc = sim.shape
    if n < 2:
        nan = torch.full((kc,), float("nan"), dtype=torch.float64)
        return nan, nan.clone()
    counts = torch.from_numpy(
        np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)
    )
    boot = alpha_score(counts @ sim.double(), counts @ mean.double()).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: no interval
        lo, hi = np.nanpercentile(boot, [2.5, 97.5], axis=0)
    return torch.from_numpy(np.asarray(lo, np.float64)), torch.from_numpy(np.asarray(hi, np.float64))


def ablation_unit(explainer: str, layer: str, start: int | None = None) -> str:
    return f"abl.{explainer}.{layer}" + ("" if start is None else f".{start:05d}")


def ti_unit(layer: str, start: int | None = None) -> str:
    return f"ti.{layer}" + ("" if start is None else f".{start:05d}")


# ---------------------------------------------------------------------------------------------------
# patchers: logits with neurons replaced by per-image constants


class Patcher(Protocol):
    tile: int  # image rows per call that keep memory bounded (for the neurons of one call)

    def base_logits(self, rows: np.ndarray) -> torch.Tensor: ...

    def logits(self, rows: np.ndarray, channels: np.ndarray, values: torch.Tensor) -> torch.Tensor: ...


class FastPatcher:
    """Rank-1 updates through global pooling + linear head. ``q`` ``[n, K]`` = the layer's mean
    activations."""

    def __init__(
        self, q: np.ndarray, weight: torch.Tensor, bias: torch.Tensor | None, n_channels: int
    ) -> None:
        self.q = torch.from_numpy(np.asarray(q, np.float64))
        self.w = weight.detach().double()
        self.base = self.q @ self.w.T + (bias.detach().double() if bias is not None else 0.0)
        self.tile = max(1, FAST_BUDGET // max(1, n_channels * self.w.shape[0]))

    def base_logits(self, rows: np.ndarray) -> torch.Tensor:
        return self.base[torch.as_tensor(rows)]

    def logits(self, rows: np.ndarray, channels: np.ndarray, values: torch.Tensor) -> torch.Tensor:
        r, c = torch.as_tensor(rows), torch.as_tensor(channels)
        return rank1_logits(self.base[r], self.q[r][:, c], self.w[:, c], values)


def patch_channels(
    out: torch.Tensor, channels: torch.Tensor, v: torch.Tensor, inplace: bool = False
) -> torch.Tensor:
    """Row ``r`` of ``out`` gets channel ``channels[r]`` replaced by ``v[r]`` everywhere (space / tokens);
    rows with a negative channel are left as they are. Differentiable in ``v``. ``inplace``: write into
    ``out`` (a fresh tensor nothing else reads) instead of a copy."""
    x = out if inplace else out.clone()
    channels = channels.to(out.device)
    rows = torch.nonzero(channels >= 0).flatten()
    ch = channels[rows]
    vals = v.to(out.device, out.dtype)[rows]
    if out.dim() == 3:  # tokens [N, T, C]: the channel on every token
        x[rows, :, ch] = vals[:, None].expand(len(rows), out.shape[1])
    else:  # [N, C, ...]
        x[rows, ch] = vals.reshape([len(rows)] + [1] * (out.dim() - 2)).expand(len(rows), *out.shape[2:])
    return x


@contextlib.contextmanager
def channel_patch(module: nn.Module, channels: torch.Tensor, values: torch.Tensor) -> Iterator[None]:
    """While active, ``module``'s output (one row per entry of ``channels``) is patched by
    ``patch_channels`` with ``values``. The hook is always removed."""

    def hook(_m: nn.Module, _i: Any, out: Any) -> Any:
        if not isinstance(out, torch.Tensor):
            raise TypeError(
                f"explain: cannot patch a {type(out).__name__} module output; audit a tensor output"
            )
        return patch_channels(out, channels, values)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def output_replaced(module: nn.Module, tensor: torch.Tensor) -> Iterator[None]:
    """While active, ``module`` returns ``tensor`` (whatever its input's batch size)."""
    handle = module.register_forward_hook(lambda _m, _i, _o: tensor)
    try:
        yield
    finally:
        handle.remove()


def unchanged(a: torch.Tensor, src: torch.Tensor, channels: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Per pair (image ``src[j]`` of the layer's output ``a``, channel ``channels[j]``, value ``v[j]``):
    whether the channel's map already equals the value everywhere, so that patching changes nothing."""
    cdim = 2 if a.dim() == 3 else 1  # tokens [N, T, C], else [N, C, ...]
    flat = a.movedim(cdim, 1).reshape(a.shape[0], a.shape[cdim], -1)
    lo, hi = flat.amin(-1), flat.amax(-1)
    s, c, val = src.to(a.device), channels.to(a.device), v.to(a.device, a.dtype)
    return ((lo[s, c] == val) & (hi[s, c] == val)).cpu()


class ModelPatcher:
    """Logits of ``model`` with channels of ``layer`` patched; ``images(rows)`` gives the preprocessed
    inputs. The logits of many (image, neuron) pairs run as one batch: one row of the layer's output per
    pair, gathered from the output for a tile of images, with the pair's channel replaced (at most
    ``batch_size`` rows per pass; on a CPU at most ``CPU_PASS_BYTES`` of the layer's output, a pass that
    stays in the caches). Where the layer's output is at hand (``graph``, ``hooked``) and no gradient is
    asked for, a pair whose channel map already equals its value everywhere (a zero-ablated map that is
    all zero) runs no pass of its own: its logits are those of the image's unpatched row, run through
    the same path. Three ways to run a batch, the first that passes a check against plain forward passes
    (once per patcher, on two images and two neurons) is used (``mode``):

    - ``graph``: the model's ``torch.fx`` graph cut at the layer (``neurodis.models.tail``): the part
      below runs once per tile of images and is cached (within ``cache_bytes``) together with every value
      the part above reads from below (a skip connection around the layer, functional ops); only the
      part above runs per pair;
    - ``hooked`` (models ``torch.fx`` cannot trace): the layer's output cached the same way and fed
      through a hook to the modules above while the modules below see a single stand-in image; right
      only when the part above reads nothing from below the layer but its output;
    - ``full``: forward passes of the pairs' images from the input, the layer patched by a hook.
    """

    def __init__(
        self,
        model: nn.Module,
        layer: str,
        images: Callable[[np.ndarray], torch.Tensor],
        device: str,
        batch_size: int,
        n_channels: int,
        n_rows: int = 2,
        cache_bytes: int = 1 << 30,
    ) -> None:
        self.model, self.layer, self.module = model, layer, dict(model.named_modules())[layer]
        self.images, self.device = images, device
        self.batch_size = max(1, batch_size)
        self.tile = max(1, batch_size // max(1, n_channels))
        self.cache: dict[bytes, tuple[torch.Tensor, tuple[Any, ...]]] = {}
        self.cache_bytes, self.cached_bytes = cache_bytes, 0
        self.split: Split | None = None
        self.mode: str | None = None if n_rows >= 2 else "full"  # the check needs two different images

    def base_logits(self, rows: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            return self.model(self.images(rows).to(self.device)).double().cpu()

    def _lower(self, rows: np.ndarray) -> tuple[torch.Tensor, tuple[Any, ...]]:
        """The layer's output on ``rows`` and (graph mode) the values the tail reads from below it."""
        key = rows.tobytes()
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        x = self.images(rows).to(self.device)
        with torch.no_grad():
            if self.mode == "graph" and self.split is not None:
                a, frontier = self.split.lower(x)
                frontier = tuple(f.detach() if isinstance(f, torch.Tensor) else f for f in frontier)
            else:
                a, frontier = capture(self.model, x, self.layer), ()
        size = sum(t.numel() * t.element_size() for t in (a, *frontier) if isinstance(t, torch.Tensor))
        if self.cached_bytes + size <= self.cache_bytes:
            self.cache[key] = (a, frontier)
            self.cached_bytes += size
        return a, frontier

    def _pass_rows(self, a: torch.Tensor) -> int:
        if torch.device(self.device).type != "cpu":
            return self.batch_size
        return max(1, min(self.batch_size, CPU_PASS_BYTES // max(1, a[0].numel() * a.element_size())))

    def _full(
        self, rows: np.ndarray, src: torch.Tensor, ch: torch.Tensor, vals: torch.Tensor
    ) -> torch.Tensor:
        x = self.images(rows).to(self.device)
        parts = []
        for s in _tiles(len(src), self.batch_size):
            with channel_patch(self.module, ch[s], vals[s].to(self.device)):
                parts.append(self.model(x[src[s].to(self.device)]))
        return torch.cat(parts)

    def _pass(
        self,
        rows: np.ndarray,
        a: torch.Tensor,
        frontier: tuple[Any, ...],
        src: torch.Tensor,
        ch: torch.Tensor,
        vals: torch.Tensor,
    ) -> torch.Tensor:
        patched = patch_channels(a[src.to(a.device)], ch, vals, inplace=True)
        if self.mode == "graph" and self.split is not None:
            out: torch.Tensor = self.split.upper(patched, Split.take(frontier, len(rows), src))
            return out
        with output_replaced(self.module, patched):
            out = self.model(self.images(rows[:1]).to(self.device))
        return out

    def _upper(
        self, rows: np.ndarray, src: torch.Tensor, ch: torch.Tensor, vals: torch.Tensor
    ) -> torch.Tensor:
        a, frontier = self._lower(rows)
        same = torch.zeros(len(src), dtype=torch.bool) if vals.requires_grad else unchanged(a, src, ch, vals)
        run = torch.nonzero(~same).flatten()
        plain, inverse = torch.unique(src[same], return_inverse=True)  # the unpatched rows they need
        src_all = torch.cat([src[run], plain])
        ch_all = torch.cat([ch[run], torch.full((len(plain),), -1, dtype=ch.dtype)])
        vals_all = torch.cat([vals[run], vals.new_zeros(len(plain))])
        out = torch.cat(
            [
                self._pass(rows, a, frontier, src_all[s], ch_all[s], vals_all[s])
                for s in _tiles(len(src_all), self._pass_rows(a))
            ]
        )
        if not len(plain):
            return out
        full = out.new_empty((len(src), *out.shape[1:]))
        full[run.to(out.device)] = out[: len(run)]
        full[torch.nonzero(same).flatten().to(out.device)] = out[len(run) + inverse.to(out.device)]
        return full

    def _run(self, rows: np.ndarray, channels: np.ndarray, values: torch.Tensor) -> torch.Tensor:
        """Logits ``[len(channels) * len(rows), classes]``, row ``g * len(rows) + b`` = image ``b`` with
        neuron ``channels[g]`` set to ``values[b, g]``."""
        b = len(rows)
        src = torch.arange(b).repeat(len(channels))
        ch = torch.as_tensor(channels).repeat_interleave(b)
        vals = values.T.reshape(-1)
        return (self._full if self.mode == "full" else self._upper)(rows, src, ch, vals)

    def _agrees(self, mode: str, full: torch.Tensor, r: np.ndarray, ch: np.ndarray, v: torch.Tensor) -> bool:
        self.mode, self.cache, self.cached_bytes = mode, {}, 0
        try:
            with torch.no_grad():
                got = self._run(r, ch, v)
        except Exception as e:  # noqa: BLE001 - any failure means: this mode does not apply
            log.info("explain: layer %s: %s mode failed its check: %s", self.layer, mode, e)
            return False
        finally:
            self.cache, self.cached_bytes = {}, 0
        return (
            isinstance(got, torch.Tensor)
            and got.shape == full.shape
            and torch.allclose(got, full, rtol=1e-4, atol=1e-5 * (1.0 + float(full.abs().max())))
        )

    def _check(self, channels: np.ndarray) -> str:
        g = torch.Generator().manual_seed(0)
        r, ch = np.arange(2), channels[:2]
        v = torch.randn(len(r), len(ch), generator=g, dtype=torch.float64)
        self.mode = "full"
        with torch.no_grad():
            full = self._run(r, ch, v)
        self.split = split_at(self.model, self.layer)
        mode = "full"
        if self.split is not None and self._agrees("graph", full, r, ch, v):
            mode = "graph"
        elif self._agrees("hooked", full, r, ch, v):
            mode = "hooked"
        if mode != "graph":
            self.split = None
        log.info(
            "explain: layer %s: forward passes %s",
            self.layer,
            {
                "graph": "of the graph after the layer",
                "hooked": "from the layer on",
                "full": "from the input (neither the graph split nor the hook replay matches the model)",
            }[mode],
        )
        return mode

    def logits(self, rows: np.ndarray, channels: np.ndarray, values: torch.Tensor) -> torch.Tensor:
        if self.mode is None:
            self.mode = self._check(channels)
        out = self._run(rows, channels, values)
        return out.reshape(len(channels), len(rows), -1).transpose(0, 1).double().cpu()


# ---------------------------------------------------------------------------------------------------
# scoring, shared by both paths


def _tiles(n: int, tile: int) -> Iterator[slice]:
    for a in range(0, n, tile):
        yield slice(a, min(a + tile, n))


def losses(
    p: Patcher,
    rows: np.ndarray,
    channels: np.ndarray,
    values: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """``[n, kc]`` cross-entropies with each neuron replaced by ``values`` (no grad)."""
    out = []
    with torch.no_grad():
        for s in _tiles(len(rows), p.tile):
            out.append(ce_losses(p.logits(rows[s], channels, values[s]), labels[s, None], temperature))
    return torch.cat(out) if out else torch.zeros(0, len(channels), dtype=torch.float64)


def base_losses(p: Patcher, rows: np.ndarray, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    parts = [
        ce_losses(p.base_logits(rows[s]), labels[s], temperature) for s in _tiles(len(rows), max(p.tile, 256))
    ]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)


@dataclass(frozen=True)
class Scores:
    c: torch.Tensor
    d: torch.Tensor
    alpha: torch.Tensor
    val_objective: torch.Tensor
    alpha_low: torch.Tensor  # alpha's 95 % bootstrap interval over the test images
    alpha_high: torch.Tensor


def _optim(
    p: Patcher,
    rows: np.ndarray,
    channels: np.ndarray,
    s: torch.Tensor,
    labels: torch.Tensor,
    base: torch.Tensor,
    temperature: float,
    steps: int,
    lr: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    def step(c: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(len(channels), dtype=torch.float64)
        for sl in _tiles(len(rows), p.tile):
            v = c[None, :] * s[sl] + d[None, :]
            obj = (
                (ce_losses(p.logits(rows[sl], channels, v), labels[sl, None], temperature) - base[sl, None])
                .abs()
                .sum(0)
            )
            obj.sum().backward()
            total += obj.detach()
        return total

    c, d, _ = optim_scale(step, len(channels), steps, lr)
    return c, d


def score(
    p: Patcher,
    channels: np.ndarray,
    val: tuple[np.ndarray, torch.Tensor, torch.Tensor, torch.Tensor],
    test: tuple[np.ndarray, torch.Tensor, torch.Tensor],
    mu: torch.Tensor,
    method: str,
    temperature: float,
    steps: int,
    lr: float,
    shared: dict[str, torch.Tensor] | None = None,
    seed: int = 0,
) -> Scores:
    """(c, d) on val by ``method`` and alpha on test with its bootstrap interval (``alpha_interval``,
    ``seed``), for neurons ``channels``. ``val`` = (rows, labels, simulations ``[n, kc]``, activations
    ``[n, kc]``); ``test`` = (rows, labels, simulations). ``shared`` (a dict the caller keeps for one set of
    neurons and rows) carries what does not depend on the method or the explanation from one call to the
    next: the base losses and the mean-ablation losses."""
    vrows, vlab, vs, vq = val
    trows, tlab, ts = test
    cache = {} if shared is None else shared
    if "vbase" not in cache:
        cache["vbase"] = base_losses(p, vrows, vlab, temperature)
        cache["tbase"] = base_losses(p, trows, tlab, temperature)
    vbase, tbase = cache["vbase"], cache["tbase"]
    if method == "norm":
        c, d = norm_scale(vs, vq)
    else:
        c, d = _optim(p, vrows, channels, vs, vlab, vbase, temperature, steps, lr)
    sim_i = loss_changes(losses(p, trows, channels, c * ts + d, tlab, temperature), tbase)
    if "mean_i" not in cache:
        mean_l = losses(p, trows, channels, mu.expand(len(trows), -1), tlab, temperature)
        cache["mean_i"] = loss_changes(mean_l, tbase)
    mean_i = cache["mean_i"]
    val_obj = abs_loss_change(losses(p, vrows, channels, c * vs + d, vlab, temperature), vbase)
    low, high = alpha_interval(sim_i.detach(), mean_i, seed)
    return Scores(c, d, alpha_score(sim_i.sum(0), mean_i.sum(0)), val_obj, low, high)


def top_impact_of(
    p: Patcher,
    rows: np.ndarray,
    channels: np.ndarray,
    labels: torch.Tensor,
    acts: torch.Tensor,
    betas: Sequence[float],
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """TI ``[kc, len(betas)]`` and total impact ``[kc]`` from zero-ablating each neuron on ``rows``."""
    base = torch.cat([p.base_logits(rows[s]) for s in _tiles(len(rows), max(p.tile, 256))])
    loss0 = ce_losses(base, labels, temperature)
    correct0 = base.argmax(-1) == labels
    loss_abl, correct_abl = [], []
    zeros = torch.zeros(len(rows), len(channels), dtype=torch.float64)
    with torch.no_grad():
        for s in _tiles(len(rows), p.tile):
            lg = p.logits(rows[s], channels, zeros[s])
            loss_abl.append(ce_losses(lg, labels[s, None], temperature))
            correct_abl.append(lg.argmax(-1) == labels[s, None])
    imp = impact(correct0, loss0, torch.cat(correct_abl), torch.cat(loss_abl))
    return top_impact(imp, acts, betas)


def temperature_of(spec: AuditSpec, p: Patcher, rows: np.ndarray, labels: torch.Tensor) -> float:
    t = spec.explain.temperature
    if t != "fit":
        return float(t)
    base = torch.cat([p.base_logits(rows[s]) for s in _tiles(len(rows), max(p.tile, 256))])
    return fit_temperature(base, labels)


# ---------------------------------------------------------------------------------------------------
# tables


def ablation_table(
    layer: str,
    explainer: str,
    simulator: str,
    channels: Sequence[int],
    status: Sequence[str],
    results: dict[str, Scores | None],
    temperature: float,
    path: str,
    interval: int = 1,
    images: tuple[int, int] = (0, 0),
) -> pa.Table:
    """``images``: the (val, test) images the scores were computed on."""
    rows: dict[str, list[Any]] = {n: [] for n in ABLATION_SCORES.schema.names}

    def num(x: torch.Tensor, i: int) -> float | None:
        v = float(x[i])
        return v if np.isfinite(v) else None

    for method, res in results.items():
        for i, (ch, st) in enumerate(zip(channels, status)):
            ok = st == "ok" and res is not None
            vals = (
                {
                    "c": num(res.c, i),
                    "d": num(res.d, i),
                    "alpha": num(res.alpha, i),
                    "val_objective": num(res.val_objective, i),
                    "alpha_low": num(res.alpha_low, i),
                    "alpha_high": num(res.alpha_high, i),
                }
                if ok and res is not None
                else dict.fromkeys(("c", "d", "alpha", "val_objective", "alpha_low", "alpha_high"))
            )
            row = {
                "layer": layer,
                "channel": int(ch),
                "explainer": explainer,
                "method": method,
                "simulator": simulator,
                **vals,
                "temperature": temperature,
                "path": path,
                "status": st,
                "sample_interval": interval,
                "val_images": images[0],
                "test_images": images[1],
            }
            for n in rows:
                rows[n].append(row[n])
    return pa.table(rows, schema=ABLATION_SCORES.schema)


def ti_table(
    layer: str,
    channels: Sequence[int],
    betas: Sequence[float],
    ti: torch.Tensor,
    total: torch.Tensor,
    path: str,
    interval: int = 1,
    images: int = 0,
) -> pa.Table:
    """``images``: the labelled images the impacts were summed over."""
    rows = [
        {
            "layer": layer,
            "channel": int(ch),
            "beta": float(b),
            "ti": float(ti[i, j]) if np.isfinite(float(ti[i, j])) else None,
            "total_impact": float(total[i]),
            "path": path,
            "sample_interval": interval,
            "images": images,
        }
        for i, ch in enumerate(channels)
        for j, b in enumerate(betas)
    ]
    return pa.Table.from_pylist(rows, schema=TOP_IMPACT.schema)


def explanations_of(layout: Any, explainer: str, layer: str) -> pa.Table:
    f = (ds.field("explainer") == explainer) & (ds.field("layer") == layer)
    return read_table(layout, "explanations", filter=f)


# ---------------------------------------------------------------------------------------------------
# units


@dataclass
class LayerInputs:
    """A layer's activations (all channels) on the labelled images, with split and class index."""

    ids: np.ndarray  # [n] sorted image ids
    q: np.ndarray  # [n, K]
    split: np.ndarray  # [n] 0/1/2 (-1 outside the split)
    label: np.ndarray  # [n] class index


def layer_inputs(plan: ExplainPlan, layer: str) -> LayerInputs:
    ids, q = load_activations(plan.layout, layer)
    split = load_split(plan.layout)
    if predicts(plan.spec):  # data.labels: predicted: the model's own class index
        lab = predicted_classes(plan.layout)
    else:
        index = {c: i for i, c in enumerate(plan.classes)}
        index.update({label_text(c): i for i, c in enumerate(plan.classes) if label_text(c) not in index})
        lab = {
            r.image_id: index.get(r.label, index.get(label_text(r.label), -1)) if r.label is not None else -1
            for r in probe_records(plan.layout)
        }
    labels = np.array([lab.get(i, -1) for i in ids.tolist()], np.int64)
    keep = labels >= 0
    return LayerInputs(
        ids[keep], q[keep], np.array([split.get(i, -1) for i in ids[keep].tolist()], np.int8), labels[keep]
    )


PatcherFactory = Callable[[np.ndarray, np.ndarray, int], Patcher]  # (image ids, q rows, neurons per call)


def _sources(plan: ExplainPlan, explainer: str) -> tuple[Any, str]:
    if plan.simulator is not None:
        e = plan.embedder(plan.simulator)
        return load_embedder_source(e.aux_dir, plan.simulator, concepts=e.exposed), plan.simulator
    return load_source(plan, explainer), explainer


def _columns(source: Any, names: Sequence[str]) -> np.ndarray:
    index = {c: j for j, c in enumerate(source.concepts)}
    missing = [c for c in names if c not in index]
    if missing:
        raise KeyError(f"the simulator {source.name!r} has no concept(s) {missing[:5]}")
    return np.array([index[c] for c in names], np.int64)


def ablation_block(
    plan: ExplainPlan, explainer: str, layer: str, start: int, stop: int, factory: PatcherFactory, path: str
) -> pa.Table:
    """Ablation scores of channels ``start:stop`` of ``layer`` for ``explainer``'s explanations."""
    cfg = plan.spec.explain
    inp = layer_inputs(plan, layer)
    source, simulator = _sources(plan, explainer)
    ex = explanations_of(plan.layout, explainer, layer).to_pylist()
    by_channel = {int(r["channel"]): r for r in ex}
    scored, interval = scored_channels(plan.layer(layer).channels, cfg.ablation_neurons)
    channels = [int(c) for c in scored if start <= c < stop]
    status = [
        ("dead" if by_channel[c]["status"] == "dead" else "no_explanation")
        if c not in by_channel or by_channel[c]["status"] != "ok"
        else "ok"
        for c in channels
    ]
    have = np.isin(inp.ids, source.image_ids())
    vrows = sampled_rows(np.flatnonzero((inp.split == 1) & have), cfg.ablation_images, (cfg.split_seed, 1))
    trows = sampled_rows(np.flatnonzero((inp.split == 2) & have), cfg.ablation_images, (cfg.split_seed, 2))
    train = np.flatnonzero(inp.split == 0)
    live = [i for i, s in enumerate(status) if s == "ok"]
    if not len(vrows) or not len(trows) or not len(train):
        status = ["no_labels" if s == "ok" else s for s in status]
        live = []
    results: dict[str, Scores | None] = {m: None for m in cfg.ablation_methods}
    temperature = float("nan")
    if live:
        ch = np.array([channels[i] for i in live], np.int64)
        rows = np.concatenate([vrows, trows])
        p = factory(inp.ids[rows], inp.q[rows], len(ch))
        lv, lt = np.arange(len(vrows)), np.arange(len(vrows), len(rows))
        labels = torch.from_numpy(inp.label[rows])
        temperature = temperature_of(plan.spec, p, lv, labels[: len(vrows)])
        recs = [by_channel[c] for c in ch.tolist()]
        cols = [_columns(source, r["concepts"]) for r in recs]
        ws, bs = [r["weights"] for r in recs], [r["intercept"] for r in recs]
        s_val = torch.from_numpy(simulate(source, cols, ws, bs, inp.ids[vrows], cfg.chunk_images))
        s_test = torch.from_numpy(simulate(source, cols, ws, bs, inp.ids[trows], cfg.chunk_images))
        q_val = torch.from_numpy(inp.q[vrows][:, ch].astype(np.float64))
        mu = torch.from_numpy(inp.q[train][:, ch].astype(np.float64).mean(0))
        shared: dict[str, torch.Tensor] = {}  # base and mean-ablation losses: the same for every method
        for m in cfg.ablation_methods:
            res = score(
                p,
                ch,
                (lv, labels[lv], s_val, q_val),
                (lt, labels[lt], s_test),
                mu,
                m,
                temperature,
                cfg.optim_steps,
                cfg.optim_lr,
                shared,
                cfg.split_seed,
            )
            full = {}
            for f in Scores.__dataclass_fields__:
                full[f] = torch.full((len(channels),), float("nan"), dtype=torch.float64)
                full[f][torch.as_tensor(live)] = getattr(res, f).detach().double()
            results[m] = Scores(**full)
    images = (len(vrows), len(trows)) if live else (0, 0)
    return ablation_table(
        layer, explainer, simulator, channels, status, results, temperature, path, interval, images
    )


def ti_block(
    plan: ExplainPlan, layer: str, start: int, stop: int, factory: PatcherFactory, path: str
) -> pa.Table:
    """Top Impact of channels ``start:stop`` over every labelled probe image (or the sample of
    ``explain.ablation_images``)."""
    cfg = plan.spec.explain
    inp = layer_inputs(plan, layer)
    scored, interval = scored_channels(plan.layer(layer).channels, cfg.ablation_neurons)
    ch = scored[(scored >= start) & (scored < stop)]
    keep = sampled_rows(np.arange(len(inp.ids)), cfg.ablation_images, (cfg.split_seed, 3))
    if len(keep) < len(inp.ids):  # a sample (without one, no copy of the activations)
        inp = LayerInputs(inp.ids[keep], inp.q[keep], inp.split[keep], inp.label[keep])
    rows = np.arange(len(inp.ids))
    p = factory(inp.ids, inp.q, len(ch))
    labels = torch.from_numpy(inp.label)
    val = np.flatnonzero(inp.split == 1)
    temperature = temperature_of(plan.spec, p, val if len(val) else rows, labels[val] if len(val) else labels)
    acts = torch.from_numpy(inp.q[:, ch].astype(np.float64))
    ti, total = top_impact_of(p, rows, ch, labels, acts, cfg.betas, temperature)
    return ti_table(layer, ch.tolist(), cfg.betas, ti, total, path, interval, len(inp.ids))


def _fast_factory(plan: ExplainPlan, layer: str) -> PatcherFactory:
    model = load_model(plan.spec.model)
    head = dict(model.named_modules())[plan.layer(layer).head]
    assert isinstance(head, nn.Linear)
    return lambda ids, q, kc: FastPatcher(q, head.weight, head.bias, kc)


def _ablation_output(table: pa.Table) -> UnitOutput:
    meta = _meta(table)
    return UnitOutput({"ablation_scores": table}, meta, meta)


def _ti_output(table: pa.Table) -> UnitOutput:
    meta = {"rows": table.num_rows}
    return UnitOutput({"top_impact": table}, meta, meta)


def fast_ablation_task(plan: ExplainPlan, item: tuple[str, str]) -> dict[str, Any]:
    """CPU task: ablation scores of a whole layer (``item`` = explainer, layer) through its linear head."""
    explainer, layer = item

    def compute() -> UnitOutput:
        return _ablation_output(
            ablation_block(
                plan, explainer, layer, 0, plan.layer(layer).channels, _fast_factory(plan, layer), "fast"
            )
        )

    return run_unit(plan.layout, ABLATION_STEP, ablation_unit(explainer, layer), plan.ablation_hash, compute)


def fast_ti_task(plan: ExplainPlan, layer: str) -> dict[str, Any]:
    """CPU task: Top Impact of a whole layer through its linear head."""

    def compute() -> UnitOutput:
        return _ti_output(
            ti_block(plan, layer, 0, plan.layer(layer).channels, _fast_factory(plan, layer), "fast")
        )

    return run_unit(plan.layout, TI_STEP, ti_unit(layer), plan.ti_hash, compute)


def _meta(table: pa.Table) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in set(table["method"].to_pylist()):
        a = [
            x
            for x, mm in zip(table["alpha"].to_pylist(), table["method"].to_pylist())
            if mm == m and x is not None
        ]
        out[f"mean_alpha_{m}"] = float(np.mean(a)) if a else None
    return out


@dataclass(frozen=True)
class BlockTask:
    """A model-path unit: ``kind`` 'ablation' (with ``explainer``) or 'ti', channels ``start:stop``."""

    kind: str
    layer: str
    start: int
    stop: int
    explainer: str = ""

    @property
    def unit(self) -> str:
        return (
            ablation_unit(self.explainer, self.layer, self.start)
            if self.kind == "ablation"
            else ti_unit(self.layer, self.start)
        )


def model_blocks(plan: ExplainPlan, kind: str) -> list[BlockTask]:
    """The model-path units of ``kind``: blocks of ``explain.neurons_per_unit`` scored channels
    (``scored_channels``) of every layer without a fast-path head (per explainer for ablation scores)."""
    cfg = plan.spec.explain
    step = cfg.neurons_per_unit
    explainers = cfg.explainers if kind == "ablation" else ("",)
    out = []
    for e in explainers:
        for lp in plan.layers:
            if lp.head is not None:
                continue
            scored, _ = scored_channels(lp.channels, cfg.ablation_neurons)
            for a in range(0, len(scored), step):
                block = scored[a : a + step]
                out.append(BlockTask(kind, lp.path, int(block[0]), int(block[-1]) + 1, e))
    return out


class ImageBank:
    """Preprocessed probe images by id, decoded once and kept while under ``max_bytes``."""

    def __init__(self, paths: dict[int, str], pre: PreprocessConfig, max_bytes: int = 2 << 30) -> None:
        self.paths, self.pre, self.max_bytes = paths, pre, max_bytes
        self.cache: dict[int, torch.Tensor] = {}
        self.bytes = 0

    def batch(self, ids: np.ndarray) -> torch.Tensor:
        out = []
        for i in ids.tolist():
            x = self.cache.get(i)
            if x is None:
                x = preprocess(decode(self.paths[i]), self.pre)
                if self.bytes + x.numel() * 4 <= self.max_bytes:
                    self.cache[i] = x
                    self.bytes += x.numel() * 4
            out.append(x)
        return torch.stack(out)


class AblationWorker:
    """GPU actor for the model path: loads the model once, runs ablation and Top Impact blocks."""

    def __init__(self, plan: ExplainPlan) -> None:
        self.plan = plan
        self.device = device_of(plan.spec)
        self.model = load_model(plan.spec.model).to(self.device)
        self.bank = ImageBank({r.image_id: r.path for r in probe_records(plan.layout)}, plan.preprocess)

    def factory(self, layer: str, patcher: type[ModelPatcher] = ModelPatcher) -> PatcherFactory:
        """Patchers of ``layer`` over this worker's model and images (``patcher``: the class)."""

        def make(ids: np.ndarray, _q: np.ndarray, kc: int) -> Patcher:
            return patcher(
                self.model,
                layer,
                lambda rows: self.bank.batch(ids[rows]),
                self.device,
                self.plan.spec.explain.batch_size,
                kc,
                n_rows=len(ids),
            )

        return make

    def run(self, task: BlockTask) -> dict[str, Any]:
        plan = self.plan

        def compute() -> UnitOutput:
            factory = self.factory(task.layer)
            if task.kind == "ablation":
                return _ablation_output(
                    ablation_block(plan, task.explainer, task.layer, task.start, task.stop, factory, "model")
                )
            return _ti_output(ti_block(plan, task.layer, task.start, task.stop, factory, "model"))

        if task.kind == "ablation":
            return run_unit(plan.layout, ABLATION_STEP, task.unit, plan.ablation_hash, compute)
        return run_unit(plan.layout, TI_STEP, task.unit, plan.ti_hash, compute)
