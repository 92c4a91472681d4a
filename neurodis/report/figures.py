"""Every figure of the report, drawn with matplotlib and written as SVG (text kept as text, so the
files stay small and need no font file). Each function takes plain numbers and returns SVG text; the
figures use the object API (no pyplot state), so pages can be drawn in worker processes."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
from matplotlib import rcParams
from matplotlib.figure import Figure

rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "neurodis", "font.size": 8, "axes.titlesize": 9})

#: chance level of log PSI: every component at its null mean (sigmoid(0) = 0.5, three components)
CHANCE_LOG_PSI = 3 * math.log(0.5)
#: scatter plots with more dots than this embed their dots as a raster (the axes stay vector)
RASTER_ABOVE = 200
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def _svg(fig: Figure, tight: bool = True) -> str:
    """The figure as SVG text. Pages drawn per neuron pass ``tight=False`` with fixed margins: a tight
    bounding box draws the figure twice."""
    buf = io.StringIO()
    fig.savefig(
        buf, format="svg", bbox_inches="tight" if tight else None, metadata={"Date": None, "Creator": None}
    )
    return buf.getvalue()


def _finite(xs: Sequence[float | None]) -> np.ndarray:
    a = np.array([x for x in xs if x is not None], dtype=float)
    return a[np.isfinite(a)]


def _range(*arrays: np.ndarray) -> tuple[float, float]:
    """A plotting range from the 1st to the 99th percentile of the values (null draws can sit at
    -1e5 when a null has no spread), padded."""
    a = np.concatenate([x for x in arrays if len(x)] or [np.zeros(1)])
    lo, hi = np.percentile(a, [1, 99])
    pad = max(hi - lo, 1e-3) * 0.08
    return float(lo - pad), float(hi + pad)


def psi_layers(layers: Sequence[tuple[str, list[float | None], list[float | None]]]) -> str:
    """Per layer: the histogram of log PSI with the null neurons' central 95 % as a band and their
    median as a line; the chance level dashed."""
    n = max(len(layers), 1)
    fig = Figure(figsize=(3.2 * min(n, 3), 2.4 * math.ceil(n / 3)))
    axes = np.atleast_1d(fig.subplots(math.ceil(n / 3), min(n, 3), squeeze=False)).ravel()
    for ax, (layer, real, null) in zip(axes, layers):
        r, z = _finite(real), _finite(null)
        # the range follows the real neurons and the null median: a null without spread sits near -1e5
        lo, hi = _range(r, np.array([np.median(z), CHANCE_LOG_PSI]) if len(z) else np.array([CHANCE_LOG_PSI]))
        if len(z) >= 2:
            zl, zh = np.percentile(z, [2.5, 97.5])
            ax.axvspan(max(zl, lo), min(zh, hi), color="0.85", label="null 95 %")
            ax.axvline(float(np.median(z)), color="0.4", lw=1, label="null median")
        ax.hist(np.clip(r, lo, hi), bins=min(30, max(5, len(r) // 3)), range=(lo, hi), color=COLOURS[0])
        ax.axvline(CHANCE_LOG_PSI, color="k", ls="--", lw=0.8, label="chance")
        ax.set_title(f"{layer} (n={len(r)})")
        ax.set_xlabel("log PSI")
    for ax in axes[len(layers) :]:
        ax.set_visible(False)
    axes[0].set_ylabel("neurons")
    axes[0].legend(fontsize=6, frameon=False)
    return _svg(fig)


def depth_trend(
    layers: Sequence[str], real: Sequence[list[float | None]], null: Sequence[list[float | None]]
) -> str:
    """Median log PSI per layer with its interquartile range, against the null neurons' median."""
    fig = Figure(figsize=(max(3.0, 0.9 * len(layers) + 1.5), 2.4))
    ax = fig.subplots()
    x = np.arange(len(layers))
    for vals, colour, name in ((real, COLOURS[0], "neurons"), (null, "0.5", "null neurons")):
        qs = [np.percentile(_finite(v), [25, 50, 75]) if len(_finite(v)) else [np.nan] * 3 for v in vals]
        q = np.array(qs, dtype=float)
        ax.plot(x, q[:, 1], "o-", color=colour, label=f"{name} (median, IQR)")
        ax.fill_between(x, q[:, 0], q[:, 2], color=colour, alpha=0.2)
    ax.axhline(CHANCE_LOG_PSI, color="k", ls="--", lw=0.8, label="chance")
    # the view follows the neurons' quartiles and both medians (a null without spread sits near -1e5)
    keep = np.concatenate([_finite(v) for v in real] + [np.array([CHANCE_LOG_PSI])])
    meds = [float(np.median(_finite(v))) for v in null if len(_finite(v))]
    lo, hi = _range(np.percentile(keep, [10, 90]) if len(keep) > 1 else keep, np.array(meds))
    ax.set_ylim(lo, hi)
    ax.set_xticks(x, list(layers), rotation=30, ha="right")
    ax.set_ylabel("log PSI")
    ax.legend(fontsize=6, frameon=False)
    return _svg(fig)


def box_by_group(groups: dict[str, list[float | None]], ylabel: str) -> str:
    """One box per group (LE test correlations per explainer and layer)."""
    names = list(groups)
    fig = Figure(figsize=(max(3.0, 0.8 * len(names) + 1.5), 2.4))
    ax = fig.subplots()
    data = [_finite(groups[g]) for g in names]
    ax.boxplot([d if len(d) else np.zeros(0) for d in data], showfliers=True)
    ax.set_xticks(
        np.arange(1, len(names) + 1), [f"{g}\n(n={len(d)})" for g, d in zip(names, data)], fontsize=6
    )
    ax.set_ylabel(ylabel)
    ax.axhline(0, color="k", lw=0.5)
    return _svg(fig)


def top_impact(curves: dict[str, tuple[list[float], list[float], list[float], list[float]]]) -> str:
    """Top Impact TI(beta) per layer: the median over neurons and the interquartile band; the diagonal
    TI = beta is an impact spread evenly over the images."""
    fig = Figure(figsize=(3.4, 2.6))
    ax = fig.subplots()
    for i, (layer, (beta, q1, med, q3)) in enumerate(curves.items()):
        c = COLOURS[i % len(COLOURS)]
        ax.plot(beta, med, "o-", color=c, ms=3, label=layer)
        ax.fill_between(beta, q1, q3, color=c, alpha=0.2)
    allb = sorted({b for v in curves.values() for b in v[0]})
    if allb:
        ax.plot(allb, allb, color="k", ls="--", lw=0.8, label="TI = beta")
    ax.set_xscale("log")
    ax.set_xlabel("beta (top fraction of images)")
    ax.set_ylabel("TI")
    ax.legend(fontsize=6, frameon=False)
    return _svg(fig)


def grouped_bars(
    groups: dict[str, dict[str, float]],
    ylabel: str,
    errors: dict[str, dict[str, float]] | None = None,
    order: Sequence[str] | None = None,
) -> str:
    """Bars per group (x) and series (colour): PURE's virtual-neuron counts per layer and k, patch-swap
    means per layer and condition."""
    names = list(groups)
    present = {s for g in groups.values() for s in g}
    series = [s for s in order if s in present] if order else sorted(present, key=str)
    fig = Figure(figsize=(max(3.0, 0.7 * len(names) * max(1, len(series)) / 2 + 2), 2.4))
    ax = fig.subplots()
    width = 0.8 / max(len(series), 1)
    for j, s in enumerate(series):
        xs = np.arange(len(names)) + (j - (len(series) - 1) / 2) * width
        ys = [groups[g].get(s, np.nan) for g in names]
        err = [errors[g].get(s, 0.0) for g in names] if errors else None
        ax.bar(xs, ys, width, yerr=err, color=COLOURS[j % len(COLOURS)], label=str(s), capsize=2)
    ax.set_xticks(
        np.arange(len(names)),
        names,
        rotation=30 if len(names) > 3 else 0,
        ha="right" if len(names) > 3 else "center",
    )
    ax.set_ylabel(ylabel)
    ax.axhline(0, color="k", lw=0.5)
    if len(series) > 1:
        ax.legend(fontsize=6, frameon=False)
    return _svg(fig)


def components(rows: Sequence[tuple[str, float, float, float]]) -> str:
    """PSI's components against their nulls: per component (name, observed, null mean, null sd) the
    null mean with +/- 2 sd as a bar and the observed value as a dot."""
    fig = Figure(figsize=(3.0, 0.45 * len(rows) + 0.8))
    ax = fig.subplots()
    for i, (_name, obs, mu, sd) in enumerate(rows):
        ax.errorbar(
            [mu],
            [i],
            xerr=[[2 * sd], [2 * sd]],
            fmt="|",
            color="0.5",
            capsize=4,
            label="null mean ± 2 sd" if i == 0 else None,
        )
        ax.plot([obs], [i], "o", color=COLOURS[3], label="observed" if i == 0 else None)
    ax.set_yticks(np.arange(len(rows)), [r[0] for r in rows])
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.legend(fontsize=6, frameon=False, loc="best")
    fig.subplots_adjust(left=0.16, right=0.97, bottom=0.22, top=0.95)
    return _svg(fig, tight=False)


def scatter(x: Sequence[float], y: Sequence[float], xlabel: str, ylabel: str, title: str = "") -> str:
    """Simulated vs actual activations (one dot per test image), with the least-squares line."""
    fig = Figure(figsize=(2.8, 2.6))
    ax = fig.subplots()
    xa, ya = np.asarray(x, float), np.asarray(y, float)
    # many dots are drawn as one embedded raster: an SVG element per test image would make pages large
    ax.scatter(xa, ya, s=6, alpha=0.6, color=COLOURS[0], linewidths=0, rasterized=len(xa) > RASTER_ABOVE)
    if len(xa) > 1 and np.ptp(xa) > 0:
        slope, icept = np.polyfit(xa, ya, 1)
        xs = np.array([xa.min(), xa.max()])
        ax.plot(xs, slope * xs + icept, color=COLOURS[3], lw=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.set_dpi(100)
    if title:
        ax.set_title(title)
    fig.subplots_adjust(left=0.2, right=0.96, bottom=0.17, top=0.9)
    return _svg(fig, tight=False)


def embedding_map(xy: np.ndarray, labels: Sequence[int], title: str) -> str:
    """A 2-D map of a neuron's attribution vectors, one dot per reference, coloured by virtual neuron."""
    fig = Figure(figsize=(2.8, 2.6))
    ax = fig.subplots()
    labs = np.asarray(labels)
    for c in sorted(set(labs.tolist())):
        m = labs == c
        ax.scatter(xy[m, 0], xy[m, 1], s=14, color=COLOURS[c % len(COLOURS)], label=f"VN {c}", linewidths=0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title)
    ax.legend(fontsize=6, frameon=False)
    fig.subplots_adjust(left=0.05, right=0.95, bottom=0.05, top=0.9)
    return _svg(fig, tight=False)


def bars(names: Sequence[str], values: Sequence[float], errors: Sequence[float] | None, ylabel: str) -> str:
    """One bar per name (a neuron's patch-swap means per condition), with error bars."""
    fig = Figure(figsize=(3.2, 2.4))
    ax = fig.subplots()
    ax.bar(
        np.arange(len(names)),
        values,
        yerr=errors,
        color=[COLOURS[i % len(COLOURS)] for i in range(len(names))],
        capsize=2,
    )
    ax.set_xticks(np.arange(len(names)), list(names), rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    ax.axhline(0, color="k", lw=0.5)
    fig.subplots_adjust(left=0.2, right=0.97, bottom=0.33, top=0.95)
    return _svg(fig, tight=False)


def diff_scatter(a: Sequence[float], b: Sequence[float], changed: Sequence[bool], label: str) -> str:
    """A quantity in run A against run B, one dot per neuron, changed neurons in red; the diagonal."""
    fig = Figure(figsize=(3.0, 2.8))
    ax = fig.subplots()
    xa, xb, ch = np.asarray(a, float), np.asarray(b, float), np.asarray(changed, bool)
    lo, hi = _range(xa, xb)
    xa, xb = np.clip(xa, lo, hi), np.clip(xb, lo, hi)
    ax.scatter(xa[~ch], xb[~ch], s=8, color="0.5", linewidths=0, label="unchanged")
    ax.scatter(xa[ch], xb[ch], s=10, color=COLOURS[3], linewidths=0, label="changed")
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xlabel(f"{label} (A)")
    ax.set_ylabel(f"{label} (B)")
    ax.legend(fontsize=6, frameon=False)
    return _svg(fig)


def histogram(values: Sequence[float | None], xlabel: str) -> str:
    fig = Figure(figsize=(3.0, 2.4))
    ax = fig.subplots()
    v = _finite(values)
    ax.hist(v, bins=min(30, max(5, len(v) // 3)), color=COLOURS[0])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("neurons")
    return _svg(fig)
