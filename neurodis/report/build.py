"""Writing the report: the overview, the neuron index (a data script + ``static/table.js``), one page
per neuron (in worker processes, or Ray tasks through a caller's ``mapper``) and the diff report."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from neurodis.io.store import StorePath
from neurodis.report import figures
from neurodis.report.data import Run, open_report_run
from neurodis.types import NeuronRef, SpecError

log = logging.getLogger(__name__)

MARKER = ".neurodis-report"
STATIC = Path(__file__).parent / "static"
#: pages drawn per task; below ``SERIAL_PAGES`` pages the pool's start-up costs more than it saves
CHUNK = 64
SERIAL_PAGES = 128
#: patch-swap conditions in the order the pages show them (others follow, sorted)
SWAP_CONDITIONS = ("aligned", "non_aligned", "random", "shuffled_position", "ablate_elsewhere")

Key = tuple[str, int]
#: ``mapper(fn, chunks)``: ``[fn(c) for c in chunks]``, computed anywhere (a process pool, Ray tasks)
Mapper = Callable[[Callable[[Any], Any], list[Any]], list[Any]]


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _env(root: str) -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("neurodis.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.update(root=root, fmt=_fmt)
    return env


def slug(layer: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", layer)


def page_href(key: Key) -> str:
    """A neuron page's path from the report's root."""
    return f"n/{slug(key[0])}/{key[1]}.html"


def _prepare_out(out: Path) -> None:
    """An empty report folder: a folder of an earlier report is replaced, any other non-empty one refused."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise SpecError(f"{out} exists and is not a neurodis report folder; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by neurodis report; replaced by the next report written here\n")
    shutil.copytree(STATIC, out / "static")


def _write_table_page(
    out: Path, name: str, title: str, text: str, table: dict[str, Any], root: str = ""
) -> None:
    data = f"{Path(name).stem}.data.js"
    (out / data).write_text("window.NEURODIS_TABLE = " + json.dumps(table, separators=(",", ":")) + ";\n")
    html = _env(root).get_template("table.html.j2").render(title=title, text=text, data_js=data)
    (out / name).write_text(html)


def _clean(v: Any) -> Any:
    """JSON-safe: non-finite floats become null, numpy scalars plain."""
    if isinstance(v, (np.floating, float)):
        v = float(v)
        return v if math.isfinite(v) else None
    if isinstance(v, np.integer):
        return int(v)
    return v


# ---------------------------------------------------------------------------------------------------
# per-neuron facts


class Facts:
    """Per neuron, what the index and the pages show, read once from the run's tables."""

    def __init__(self, run: Run) -> None:
        self.run = run
        nt = run.rows("neurons")
        self.keys: list[Key] = [(r["layer"], int(r["channel"])) for r in nt]
        self.neuron = {(r["layer"], int(r["channel"])): r for r in nt}
        self.layers = list(dict.fromkeys(k[0] for k in self.keys))
        self.psi = {(r["layer"], int(r["channel"])): r for r in run.rows("psi")}
        self.pure = self._pure()
        spec_explainers = list((run.spec.get("explain") or {}).get("explainers") or [])
        self.expl: dict[Key, list[dict[str, Any]]] = defaultdict(list)
        for r in run.rows("explanations"):
            self.expl[(r["layer"], int(r["channel"]))].append(r)
        order = {e: i for i, e in enumerate(spec_explainers)}
        for rows in self.expl.values():
            rows.sort(key=lambda r: order.get(r["explainer"], len(order)))

    def _pure(self) -> dict[Key, dict[str, Any]]:
        """PURE's selected row per neuron (method 'pure'); a neuron without one: its smallest k's row."""
        out: dict[Key, dict[str, Any]] = {}
        for r in sorted(self.run.rows("pure_summary"), key=lambda r: int(r["k"])):
            if r["method"] != "pure":
                continue
            key = (r["layer"], int(r["channel"]))
            if key not in out or (r["selected"] and not out[key]["selected"]):
                out[key] = r
        return out

    def headline(self, key: Key) -> dict[str, Any] | None:
        """The first explainer's explanation (the spec's order) for the index."""
        rows = self.expl.get(key)
        return rows[0] if rows else None

    def status(self, key: Key) -> str:
        if self.neuron[key]["dead"]:
            return "dead"
        p = self.psi.get(key)
        return str(p["status"]).split(":")[0] if p else "ok"

    def index_table(self, pages: set[Key]) -> dict[str, Any]:
        columns = [
            {"key": "neuron", "label": "neuron", "type": "text"},
            {"key": "layer", "label": "layer", "type": "enum"},
            {"key": "channel", "label": "channel", "type": "num"},
            {"key": "status", "label": "status", "type": "enum"},
            {"key": "log_psi", "label": "log PSI", "type": "num"},
            {"key": "log_psi_ci_low", "label": "CI low", "type": "num"},
            {"key": "log_psi_ci_high", "label": "CI high", "type": "num"},
            {"key": "pure_k", "label": "k (PURE)", "type": "num"},
            {"key": "k_hat", "label": "k̂ (PSI)", "type": "num"},
            {"key": "explanation", "label": "LE explanation", "type": "text"},
            {"key": "test_corr", "label": "test corr", "type": "num"},
            {"key": "dead", "label": "dead", "type": "bool"},
        ]
        rows = []
        for key in self.keys:
            p = self.psi.get(key) or {}
            e = self.headline(key)
            pure = self.pure.get(key)
            expl = None
            if e is not None:
                expl = f"{e['explainer']}: " + (" + ".join(e["concepts"] or []) or f"({e['status']})")
            rows.append(
                [
                    f"{key[0]}/{key[1]}",
                    key[0],
                    key[1],
                    self.status(key),
                    *(_clean(p.get(c)) for c in ("log_psi", "log_psi_ci_low", "log_psi_ci_high")),
                    int(pure["k"]) if pure and pure["selected"] and pure["status"] == "ok" else None,
                    p.get("k_hat"),
                    expl,
                    _clean(e["test_corr"]) if e else None,
                    bool(self.neuron[key]["dead"]),
                    page_href(key) if key in pages else None,
                ]
            )
        return {"columns": columns, "rows": rows, "link": {"column": 0, "href": len(columns)}}


# ---------------------------------------------------------------------------------------------------
# neuron pages


def select_pages(facts: Facts, neurons: Sequence[str] | None, max_pages: int | None) -> list[Key]:
    """The neurons that get a page: those named (``layer/channel``), else every neuron; with
    ``max_pages``, that many spread evenly over the log PSI ranking (index order without PSI)."""
    keys = list(facts.keys)
    if neurons:
        have = set(keys)
        picked = []
        for text in neurons:
            ref = NeuronRef.parse(text)
            key = (ref.layer, ref.channel)
            if key not in have:
                raise SpecError(
                    f"--neurons {text!r}: {facts.run.root} has no neuron {ref.layer}/{ref.channel}; "
                    "its layers: "
                    f"{facts.layers}"
                )
            picked.append(key)
        keys = list(dict.fromkeys(picked))
    if max_pages is not None and len(keys) > max_pages:
        ranked = sorted(keys, key=lambda k: -(_clean((facts.psi.get(k) or {}).get("log_psi")) or -math.inf))
        at = np.unique(np.linspace(0, len(ranked) - 1, max_pages).round().astype(int))
        chosen = {ranked[i] for i in at}
        keys = [k for k in keys if k in chosen]
    return keys


def _page_items(
    run: Run, facts: Facts, keys: list[Key], n_refs: int, out: Path
) -> tuple[list[dict[str, Any]], list[str]]:
    """Everything each page shows as plain values, and the problems met (one line each). Writes the
    thumbnails (one forward pass over the shown references)."""
    from neurodis.io.runs import run_spec
    from neurodis.report.images import Need, write_thumbnails

    images = run.get("images")
    paths = dict(zip(images["image_id"].to_pylist(), images["path"].to_pylist())) if images else {}
    labels = dict(zip(images["image_id"].to_pylist(), images["label"].to_pylist())) if images else {}
    wanted = set(keys)
    refs: dict[Key, list[dict[str, Any]]] = defaultdict(list)
    for r in run.rows("references"):
        k = (r["layer"], int(r["channel"]))
        if k in wanted:
            refs[k].append(r)
    clusters: dict[Key, dict[int, int]] = defaultdict(dict)
    attributions: dict[Key, dict[int, list[float]]] = defaultdict(dict)
    for r in run.rows("pure_clusters"):
        k = (r["layer"], int(r["channel"]))
        p = facts.pure.get(k)
        if k in wanted and p and r["method"] == "pure" and int(r["k"]) == int(p["k"]):
            clusters[k][int(r["rank"])] = int(r["cluster"])
    if clusters:
        for r in run.rows("pure_attributions"):
            k = (r["layer"], int(r["channel"]))
            if k in clusters:
                attributions[k][int(r["rank"])] = r["attribution"]
    crops: dict[tuple[str, int, int], tuple[int, int, int, int]] = {}
    for r in run.rows("crops"):
        if r["purpose"] == "embed" and (r["layer"], int(r["channel"])) in wanted:
            crops[(r["layer"], int(r["channel"]), int(r["image_id"]))] = tuple(r["box"])  # type: ignore[assignment]
    swaps = _swaps(run, wanted)
    sims, sim_notes = _simulations(run, facts, keys)

    needs: dict[int, list[Any]] = defaultdict(list)
    items: list[dict[str, Any]] = []
    for pos, key in enumerate(keys):
        layer, ch = key
        base = page_href(key)
        folder = base[: -len(".html")]
        scale = float(facts.neuron[key]["max"]) or 1.0
        rows = sorted(refs.get(key, []), key=lambda r: int(r["rank"]))
        by_rank = {int(r["rank"]): r for r in rows}

        def thumb(r: dict[str, Any], _folder: str = folder, _key: Key = key, _scale: float = scale) -> str:
            rel = f"{_folder}/r{int(r['rank']):03d}.jpg"
            needs[int(r["image_id"])].append(
                Need(_key[0], _key[1], int(r["h"]), int(r["w"]), _scale, out / rel)
            )
            return rel

        shown = [
            {
                "rank": int(r["rank"]),
                "value": float(r["value"]),
                "label": labels.get(r["image_id"]),
                "thumb": _rel(thumb(r), base),
            }
            for r in rows[:n_refs]
        ]
        pure = None
        p = facts.pure.get(key)
        if p is not None and clusters.get(key):
            cl = clusters[key]
            has_crops = any((layer, ch, int(by_rank[rk]["image_id"])) in crops for rk in cl if rk in by_rank)
            vns = []
            for c in range(int(p["k"])):
                ranks = sorted(rk for rk, cc in cl.items() if cc == c)
                thumbs = []
                for rk in ranks[:n_refs]:
                    if rk not in by_rank:
                        continue
                    r = by_rank[rk]
                    box = crops.get((layer, ch, int(r["image_id"])))
                    if box is not None:
                        rel = f"{folder}/c{rk:03d}.jpg"
                        needs[int(r["image_id"])].append(Need(layer, ch, 0, 0, scale, out / rel, box))
                    else:
                        rel = thumb(r)
                    thumbs.append({"rank": rk, "src": _rel(rel, base)})
                vns.append(
                    {
                        "cluster": c,
                        "size": len(ranks),
                        "share": len(ranks) / max(len(cl), 1),
                        "thumbs": thumbs,
                    }
                )
            att = attributions.get(key, {})
            ranks = sorted(rk for rk in att if rk in cl)
            pure = {
                "k": int(p["k"]),
                "status": p["status"],
                "silhouette": _clean(p.get("silhouette")),
                "n_refs": len(cl),
                "has_crops": has_crops,
                "vns": vns,
                "vectors": [att[rk] for rk in ranks],
                "labels": [cl[rk] for rk in ranks],
            }
        elif p is not None:
            pure = {
                "k": int(p["k"]),
                "status": p["status"],
                "silhouette": None,
                "n_refs": 0,
                "has_crops": False,
                "vns": [],
                "vectors": [],
                "labels": [],
            }
        les = []
        for e in facts.expl.get(key, []):
            sim = sims.get((e["explainer"], layer))
            entry = {
                "explainer": e["explainer"],
                "status": e["status"],
                "terms": list(zip(e["concepts"] or [], e["weights"] or [])),
                "intercept": _clean(e["intercept"]),
                "test_corr": _clean(e["test_corr"]),
                "val_corr": _clean(e["val_corr"]),
                "simulator": e["simulator"],
                "sim": None,
                "note": sim_notes.get((e["explainer"], layer), "no simulation for this neuron"),
            }
            if sim is not None and ch in sim["channels"]:
                j = sim["channels"][ch]
                x = sim["pred"][:, j]
                if np.isfinite(x).all():
                    entry["sim"] = (x.tolist(), sim["actual"][:, j].tolist())
            les.append(entry)
        neighbours: dict[str, Any] = {"prev": None, "next": None}
        for name, other in (("prev", pos - 1), ("next", pos + 1)):
            if 0 <= other < len(keys):
                o = keys[other]
                neighbours[name] = {"href": _rel(page_href(o), base), "name": f"{o[0]}/{o[1]}"}
        psi = facts.psi.get(key)
        items.append(
            {
                "key": key,
                "href": base,
                "layer": layer,
                "channel": ch,
                "max": float(facts.neuron[key]["max"]),
                "mean": float(facts.neuron[key]["mean"]),
                "dead": bool(facts.neuron[key]["dead"]),
                "refs": shown,
                "pure": pure,
                "le": les,
                "psi": {k: _clean(v) for k, v in psi.items() if not isinstance(v, list)} if psi else None,
                "swaps": swaps.get(key),
                "swaps_missing": [
                    c for c in SWAP_CONDITIONS if c not in {s[0] for s in swaps.get(key) or []}
                ],
                **neighbours,
            }
        )
    problems = []
    if needs:
        spec = run_spec(run.layout)
        problems = write_thumbnails(spec, paths, needs)
    return items, problems


def _rel(target: str, page: str) -> str:
    """``target`` (a path from the report's root) relative to the folder of ``page``."""
    return os.path.relpath(target, os.path.dirname(page) or ".")


def _p(x: float | None) -> str:
    return "-" if x is None else f"{x:.2g}"


def _half_width(r: dict[str, Any]) -> float:
    """The larger side of a row's 95 % interval around its mean (0 without one)."""
    m, lo, hi = r.get("mean_delta_norm"), r.get("ci_low"), r.get("ci_high")
    if m is None or lo is None or hi is None:
        return 0.0
    return float(max(m - lo, hi - m))


def _swaps(run: Run, wanted: set[Key]) -> dict[Key, list[tuple[str, float, float]]]:
    """Per tested neuron, (condition, mean normalised activation change, half-width of its 95 % interval)
    of its patch swaps, from the neuron rows of ``patch_swap_summary`` when the run has them."""
    t = run.get("patch_swap_summary")
    if t is None:
        return {}
    acc: dict[Key, dict[str, tuple[float, float]]] = defaultdict(dict)
    for r in t.to_pylist():
        k = (r["layer"], int(r["channel"]))
        if (
            r["scope"] == "neuron"
            and k in wanted
            and r["status"] in ("ok", "one_cluster")
            and r["mean_delta_norm"] is not None
        ):
            acc[k][r["condition"]] = (float(r["mean_delta_norm"]), _half_width(r))
    return {k: [(c, *by[c]) for c in SWAP_CONDITIONS if c in by] for k, by in acc.items()}


def _simulations(
    run: Run, facts: Facts, keys: list[Key]
) -> tuple[dict[tuple[str, str], dict[str, Any]], dict[tuple[str, str], str]]:
    """Per (explainer, layer) of the page neurons: each explanation's simulation (by its simulator) and
    the neuron's mean activation on the test split, as LE scored them. A simulation that cannot be
    recomputed here (an embedder that does not load) gives a note instead, naming why."""
    if not any(facts.expl.get(k) for k in keys):
        return {}, {}
    try:
        from neurodis.io.runs import run_spec
        from neurodis.methods.le.ablation import _columns
        from neurodis.methods.le.explanations import layer_data, load_source, simulate
        from neurodis.methods.le.plan import plan_explain

        plan, _ = plan_explain(run_spec(run.layout), run.layout)
    except Exception as e:  # noqa: BLE001 - the pages say why instead
        why = f"simulation not recomputed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        return {}, {(r["explainer"], k[0]): why for k in keys for r in facts.expl.get(k, [])}
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for k in keys:
        for r in facts.expl.get(k, []):
            groups[(r["explainer"], k[0])].append(r)
    sims: dict[tuple[str, str], dict[str, Any]] = {}
    notes: dict[tuple[str, str], str] = {}
    sources: dict[str, Any] = {}
    for (explainer, layer), rows in groups.items():
        simulator = rows[0]["simulator"] or explainer
        try:
            if simulator not in sources:
                sources[simulator] = load_source(plan, simulator)
            source = sources[simulator]
            data = layer_data(plan, layer, source.image_ids())
            test = data.rows(2)
            ok = [r for r in rows if r["concepts"]]
            cols = [_columns(source, r["concepts"]) for r in ok]
            pred = simulate(
                source, cols, [r["weights"] for r in ok], [r["intercept"] for r in ok], data.ids[test], 4096
            )
            actual = data.q[test][:, [int(r["channel"]) for r in ok]].astype(np.float64)
            sims[(explainer, layer)] = {
                "channels": {int(r["channel"]): j for j, r in enumerate(ok)},
                "pred": pred,
                "actual": actual,
            }
        except Exception as e:  # noqa: BLE001 - one explainer's failure keeps the others
            notes[(explainer, layer)] = (
                f"simulation not recomputed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            )
    return sims, notes


def _embed_2d(vectors: list[list[float]], method: str) -> tuple[np.ndarray, str]:
    x = np.asarray(vectors, dtype=np.float64)
    if method == "umap" and len(x) > 4:
        import umap  # type: ignore[import-not-found]

        xy = umap.UMAP(n_neighbors=min(15, len(x) - 1), random_state=0).fit_transform(x)
        return np.asarray(xy), "UMAP"
    from sklearn.decomposition import PCA

    n = min(2, x.shape[0], x.shape[1])
    xy = PCA(n_components=n).fit_transform(x) if n > 0 else np.zeros((len(x), 0))
    if xy.shape[1] < 2:
        xy = np.hstack([xy, np.zeros((len(x), 2 - xy.shape[1]))])
    return xy, "PCA"


def render_pages(args: tuple[str, list[dict[str, Any]], str]) -> int:
    """Draw and write a chunk of neuron pages under ``out``; returns the number written. A pure
    function of its arguments, so any worker (a process, a Ray task) can run it."""
    out_s, items, map_method = args
    out = Path(out_s)
    written = 0
    for it in items:
        page = out / it["href"]
        folder = page.with_suffix("")
        folder.mkdir(parents=True, exist_ok=True)
        figs: dict[str, str] = {}

        def save(name: str, svg: str, _folder: Path = folder) -> str:
            (_folder / name).write_text(svg)
            return f"{_folder.name}/{name}"

        pure = it["pure"]
        if pure and len(pure["vectors"]) >= 2:
            xy, how = _embed_2d(pure["vectors"], map_method)
            pure["map_caption"] = (
                f"{how} of the {len(xy)} references' attribution vectors (L1-normalised relevance of "
                "the lower "
                "layer's channels), coloured by virtual neuron."
            )
            figs["map"] = save("map.svg", figures.embedding_map(xy, pure["labels"], f"attributions ({how})"))
        psi = it["psi"]
        if psi and psi.get("S") is not None:
            rows = [
                (c, psi[c], psi[f"{c}_null_mean"], psi[f"{c}_null_sd"] or 0.0)
                for c in ("S", "Q", "D")
                if psi.get(c) is not None and psi.get(f"{c}_null_mean") is not None
            ]
            if rows:
                figs["psi"] = save("psi.svg", figures.components(rows))
        for j, e in enumerate(it["le"]):
            e["fig"] = None
            if e["sim"] is not None:
                x, y = e["sim"]
                e["fig"] = save(
                    f"le{j}.svg",
                    figures.scatter(
                        x, y, f"simulated ({e['simulator']})", "actual", f"r = {_fmt(e['test_corr'])}"
                    ),
                )
        if it["swaps"]:
            names, means, sems = zip(*it["swaps"])
            figs["swaps"] = save("swaps.svg", figures.bars(names, means, sems, "mean normalised ΔA"))
        root = "../" * it["href"].count("/")
        html = _env(root).get_template("neuron.html.j2").render(n={**it, "figs": figs})
        page.write_text(html)
        written += 1
    return written


def local_mapper(workers: int | None) -> Mapper:
    """``[fn(c) for c in chunks]`` in a pool of ``workers`` spawned processes (default: the CPUs, at
    most 8); serial for one worker or a single chunk."""

    def mapper(fn: Callable[[Any], Any], chunks: list[Any]) -> list[Any]:
        n = workers or min(8, os.cpu_count() or 1)
        if n <= 1 or len(chunks) <= 1:
            return [fn(c) for c in chunks]
        with ProcessPoolExecutor(max_workers=min(n, len(chunks)), mp_context=get_context("spawn")) as pool:
            return list(pool.map(fn, chunks))

    return mapper


# ---------------------------------------------------------------------------------------------------
# the overview


def _status_rows(facts: Facts) -> tuple[list[str], list[dict[str, Any]]]:
    """Neurons per status, per stage and layer (explain: per explainer and layer), from the tables."""
    rows: list[dict[str, Any]] = []
    for layer in facts.layers:
        keys = [k for k in facts.keys if k[0] == layer]
        rows.append(
            {
                "stage": "forward",
                "layer": layer,
                "counts": Counter("dead" if facts.neuron[k]["dead"] else "ok" for k in keys),
            }
        )
        pure = [facts.pure[k]["status"].split(":")[0] for k in keys if k in facts.pure]
        if pure:
            rows.append({"stage": "pure", "layer": layer, "counts": Counter(pure)})
        psi = [str(facts.psi[k]["status"]).split(":")[0] for k in keys if k in facts.psi]
        if psi:
            rows.append({"stage": "psi", "layer": layer, "counts": Counter(psi)})
        by_expl: dict[str, Counter[str]] = defaultdict(Counter)
        for k in keys:
            for e in facts.expl.get(k, []):
                by_expl[e["explainer"]][str(e["status"]).split(":")[0]] += 1
        for explainer, c in by_expl.items():
            rows.append({"stage": f"explain ({explainer})", "layer": layer, "counts": c})
    names = sorted({s for r in rows for s in r["counts"]}, key=lambda s: (s not in ("ok", "dead"), s))
    return names, rows


def _scorecard(card: dict[str, Any], path: Path | StorePath) -> dict[str, Any]:
    """The scorecard's sections as (figure, value) pairs: scalars, one level of nested scalars, an
    interval beside its figure; sections that are absent or failed say so."""
    sections = []
    for name, sec in card.items():
        if not isinstance(sec, dict) or name == "goals":
            continue
        if sec.get("status") in ("absent", "error"):
            sections.append((name, [(sec["status"], sec.get("why") or sec.get("error", ""))]))
            continue
        items = []
        for k, v in sec.items():
            if "_ci_" in k or k in ("model_dir", "truth"):
                continue
            if isinstance(v, dict):
                items += [(f"{k}.{kk}", _fmt(vv)) for kk, vv in v.items() if not isinstance(vv, (dict, list))]
            elif not isinstance(v, list):
                lo, hi = sec.get(f"{k}_ci_low"), sec.get(f"{k}_ci_high")
                ci = f" [{_fmt(lo)}, {_fmt(hi)}]" if isinstance(lo, float) and isinstance(hi, float) else ""
                items.append((k, _fmt(v) + ci))
        sections.append((name, items))
    top = [(k, _fmt(v)) for k, v in card.items() if not isinstance(v, (dict, list))]
    if top:
        sections.insert(0, ("run", top))
    goals = [
        (name, g.get("met"), ", ".join(f"{k}={_fmt(v)}" for k, v in g.items() if k != "met"))
        for name, g in (card.get("goals") or {}).items()
        if isinstance(g, dict)
    ]
    return {"path": str(path), "sections": sections, "goals": goals}


def _figure(out: Path, name: str, svg: str, caption: str) -> dict[str, str]:
    (out / "fig").mkdir(exist_ok=True)
    (out / "fig" / name).write_text(svg)
    return {"src": f"fig/{name}", "caption": caption}


def _overview_sections(run: Run, facts: Facts, out: Path) -> list[dict[str, Any]]:
    sections: list[dict[str, Any]] = []
    psi_rows = run.rows("psi")
    if psi_rows:
        nulls = run.rows("psi_nulls")
        scored = ("ok", "no_labels")
        real = {
            layer: [r["log_psi"] for r in psi_rows if r["layer"] == layer and r["status"] in scored]
            for layer in facts.layers
        }
        null = {
            layer: [r["log_psi"] for r in nulls if r["layer"] == layer and r["status"] in scored]
            for layer in facts.layers
        }
        layers = [layer for layer in facts.layers if real[layer] or null[layer]]
        figs = [
            _figure(
                out,
                "psi_layers.svg",
                figures.psi_layers([(layer, real[layer], null[layer]) for layer in layers]),
                "log PSI of the scored neurons per layer; grey: the central 95 % of the null neurons (random "
                "reference sets), their median as a line; dashed: chance (every component at its null mean).",
            )
        ]
        if len(layers) > 1:
            figs.append(
                _figure(
                    out,
                    "psi_depth.svg",
                    figures.depth_trend(layers, [real[x] for x in layers], [null[x] for x in layers]),
                    "Depth trend: median log PSI per layer (band: interquartile range), neurons and null "
                    "neurons.",
                )
            )
        tables = []
        lt = run.rows("psi_layers")
        if lt:
            cols = [
                "layer",
                "n_neurons",
                "n_null",
                "auroc_psi",
                "auroc_S",
                "auroc_Q",
                "auroc_D",
                "log_psi_median",
                "null_log_psi_median",
            ]
            tables.append({"header": cols, "rows": [[_fmt(r.get(c)) for c in cols] for r in lt]})
        dt = run.rows("psi_depth")
        if dt:
            cols = ["layer_a", "layer_b", "median_log_psi_a", "median_log_psi_b", "ks_statistic", "ks_pvalue"]
            tables.append({"header": cols, "rows": [[_fmt(r.get(c)) for c in cols] for r in dt]})
        sections.append({"title": "PSI", "text": "", "figures": figs, "tables": tables})
    expl = run.rows("explanations")
    if expl:
        groups: dict[str, list[float | None]] = defaultdict(list)
        for r in expl:
            if r["status"] == "ok":
                groups[f"{r['explainer']}/{r['layer']}"].append(r["test_corr"])
        figs = []
        if groups:
            figs.append(
                _figure(
                    out,
                    "le_corr.svg",
                    figures.box_by_group(dict(sorted(groups.items())), "test correlation"),
                    "Linear Explanations: test correlation of the simulated activation with the neuron "
                    "(status ok), per explainer and layer.",
                )
            )
        ti = run.rows("top_impact")
        if ti:
            curves = {}
            for layer in facts.layers:
                by_beta: dict[float, list[float]] = defaultdict(list)
                for r in ti:
                    if r["layer"] == layer and r["ti"] is not None:
                        by_beta[float(r["beta"])].append(float(r["ti"]))
                if by_beta:
                    betas = sorted(by_beta)
                    q = np.array([np.percentile(by_beta[b], [25, 50, 75]) for b in betas])
                    curves[layer] = (betas, q[:, 0].tolist(), q[:, 1].tolist(), q[:, 2].tolist())
            if curves:
                figs.append(
                    _figure(
                        out,
                        "top_impact.svg",
                        figures.top_impact(curves),
                        "Top Impact: the share of a neuron's ablation impact carried by its top beta of "
                        "images (median and IQR over neurons).",
                    )
                )
        sections.append({"title": "Linear Explanations", "text": "", "figures": figs, "tables": []})
    if facts.pure:
        counts: dict[str, dict[str, float]] = {}
        total = {}
        for layer in facts.layers:
            ks = Counter(
                int(r["k"])
                for k, r in facts.pure.items()
                if k[0] == layer and r["selected"] and r["status"] == "ok"
            )
            counts[layer] = {f"k={k}": float(n) for k, n in sorted(ks.items())}
            total[layer] = sum(k * n for k, n in ks.items())
        text = "Virtual neurons (sum of the selected k over the neurons PURE split): " + ", ".join(
            f"{layer}: {n}" for layer, n in total.items()
        )
        figs = [
            _figure(
                out,
                "pure_k.svg",
                figures.grouped_bars(counts, "neurons"),
                "PURE: neurons per selected k (highest silhouette), per layer.",
            )
        ]
        sections.append({"title": "PURE virtual neurons", "text": text, "figures": figs, "tables": []})
    swap = run.get("patch_swap_summary")
    if swap is not None:
        sections.append(_swap_section(swap, out))
    return sections


def swap_layers(t: Any) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]], list[list[str]]]:
    """From the layer rows of ``patch_swap_summary``: per layer each condition's mean normalised change
    and the half-width of its 95 % interval, and one table row per layer and control (aligned minus the
    control across neurons, its interval, Holm-corrected t-test and Wilcoxon p values)."""
    means: dict[str, dict[str, float]] = {}
    errors: dict[str, dict[str, float]] = {}
    table: list[list[str]] = []
    rows = [r for r in t.to_pylist() if r["scope"] == "layer" and r["status"] == "ok"]
    for r in rows:
        if r["mean_delta_norm"] is not None:
            means.setdefault(r["layer"], {})[r["condition"]] = float(r["mean_delta_norm"])
            errors.setdefault(r["layer"], {})[r["condition"]] = _half_width(r)
        if r["condition"] != "aligned":
            interval = f"[{_fmt(r['diff_ci_low'])}, {_fmt(r['diff_ci_high'])}]"
            table.append(
                [r["layer"], r["condition"], _fmt(r["n_pairs"]), _fmt(r["diff"]), interval]
                + [_p(r["p_holm"]), _p(r["wilcoxon_p"])]
            )
    return means, errors, table


def _swap_section(t: Any, out: Path) -> dict[str, Any]:
    means, errors, rows = swap_layers(t)
    fig = _figure(
        out,
        "patch_swap.svg",
        figures.grouped_bars(means, "mean normalised ΔA", errors, order=SWAP_CONDITIONS),
        "Patch swaps: mean change of the activation at the target site / the neuron's range, per layer "
        "and condition, 95 % intervals over neurons (table patch_swap_summary).",
    )
    header = ["layer", "control", "neurons", "aligned - control", "95 % interval", "Holm p", "Wilcoxon p"]
    text = (
        "Aligned patches replace a top site's patch with another of its cluster's; the controls paste "
        "another cluster's, a random site's, the aligned patch elsewhere, or a fill elsewhere "
        "(docs/patch-swap.md)."
    )
    return {
        "title": "Patch swaps",
        "text": text,
        "figures": [fig],
        "tables": [{"header": header, "rows": rows}],
    }


def _overview(run: Run, facts: Facts, out: Path, page_count: int) -> None:
    from neurodis import __version__

    spec = run.spec
    model = spec.get("model") or {}
    data = spec.get("data") or {}
    images = run.get("images")
    rejects = run.get("rejects")
    stages = run.summary.get("stages") or {}
    seconds = [(s, float(v["seconds"])) for s, v in stages.items() if isinstance(v, dict) and "seconds" in v]
    if "seconds" in run.summary:
        seconds.append(("total", float(run.summary["seconds"])))
    status_names, status_rows = _status_rows(facts)
    html = (
        _env("")
        .get_template("overview.html.j2")
        .render(
            model=model.get("name") or run.summary.get("model") or model.get("arch", "?"),
            arch=model.get("arch", "?") + (f" ({model['checkpoint']})" if model.get("checkpoint") else ""),
            run_dir=str(run.root),
            probe=data.get("root") or data.get("manifest") or data.get("kind", "?"),
            n_images=images.num_rows if images is not None else 0,
            n_rejects=rejects.num_rows if rejects is not None else 0,
            layers=facts.layers,
            n_neurons=len(facts.keys),
            stages=spec.get("stages") or list(stages),
            run_status=run.summary.get("status", "no summary.json (the audit did not finish)"),
            seconds=seconds,
            spec_text=yaml.safe_dump(spec, sort_keys=False),
            warnings=run.summary.get("warnings") or [],
            status_names=status_names,
            status_rows=status_rows,
            scorecard=_scorecard(run.scorecard, run.scorecard_path)
            if run.scorecard and run.scorecard_path
            else None,
            sections=_overview_sections(run, facts, out),
            version=__version__,
        )
    )
    (out / "index.html").write_text(html)


def _size(out: Path) -> int:
    return sum(p.stat().st_size for p in out.rglob("*") if p.is_file())


def build_report(
    run_dir: str | Path,
    out: str | Path | None = None,
    neurons: Sequence[str] | None = None,
    max_pages: int | None = None,
    refs: int = 12,
    workers: int | None = None,
    mapper: Mapper | None = None,
    map_method: str = "pca",
) -> dict[str, Any]:
    """Write the report of the audit at ``run_dir`` into ``out`` (default ``RUN/report``): the overview
    (``index.html``), the neuron index (``neurons.html``) and a page per neuron (``n/<layer>/<channel>
    .html``: all, those of ``neurons``, or ``max_pages`` spread over the PSI ranking). ``refs``: the
    references shown per neuron and per virtual neuron. Pages are drawn by ``mapper`` (default: a local
    process pool of ``workers``, serial below 128 pages). Returns the paths, counts and seconds."""
    t0 = time.time()
    if map_method not in ("pca", "umap"):
        raise SpecError(f"map method {map_method!r}: choose pca or umap")
    run = open_report_run(run_dir)
    if out is None and run.root.remote:
        raise SpecError(f"{run.root} is on object storage; pass --out DIR, a local folder for the report")
    out = Path(out) if out is not None else run.root.local / "report"
    facts = Facts(run)
    keys = select_pages(facts, neurons, max_pages)
    _prepare_out(out)
    items, problems = _page_items(run, facts, keys, refs, out)
    t_thumbs = time.time() - t0
    chunks = [(str(out), items[a : a + CHUNK], map_method) for a in range(0, len(items), CHUNK)]
    if mapper is None:
        mapper = local_mapper(1 if len(items) < SERIAL_PAGES else workers)
    written = sum(mapper(render_pages, chunks))
    _write_table_page(
        out,
        "neurons.html",
        f"Neuron index ({len(facts.keys)} neurons)",
        "Click a column to sort, type to filter, pick a layer or status; a neuron links to its page when "
        f"the report has one ({written} pages).",
        facts.index_table(set(keys)),
    )
    _overview(run, facts, out, written)
    return {
        "index": str(out / "index.html"),
        "neurons": len(facts.keys),
        "pages": written,
        "problems": problems,
        "seconds": round(time.time() - t0, 2),
        "thumbnail_seconds": round(t_thumbs, 2),
        "bytes": _size(out),
    }


# ---------------------------------------------------------------------------------------------------
# the diff report


def build_diff_report(
    run_a: str | Path, run_b: str | Path, diff_out: str | Path, out: str | Path | None = None
) -> dict[str, Any]:
    """``neurodis diff A B --out DIFF --report DIR``: the diff (``DIFF/neuron_diff.parquet``, its
    summary; ``neurodis.tools.diff``) and a page of it in ``DIR`` (default ``DIFF/report``): the
    summary, log PSI and max activation in A against B, the reference overlap, and every
    compared neuron in a sortable, filterable table."""
    import pyarrow.parquet as pq

    from neurodis.tools.diff import diff_runs

    diff_out = Path(diff_out)
    out = Path(out) if out is not None else diff_out / "report"
    summary = diff_runs(run_a, run_b, diff_out)
    rows = pq.read_table(diff_out / "neuron_diff.parquet").to_pylist()
    _prepare_out(out)
    figs = []
    both = [r for r in rows if r["log_psi_a"] is not None and r["log_psi_b"] is not None]
    if both:
        figs.append(
            _figure(
                out,
                "diff_psi.svg",
                figures.diff_scatter(
                    [r["log_psi_a"] for r in both],
                    [r["log_psi_b"] for r in both],
                    [bool(r["psi_changed"]) for r in both],
                    "log PSI",
                ),
                "log PSI in A and B; red: changed (95 % intervals apart, or any change without intervals).",
            )
        )
    figs.append(
        _figure(
            out,
            "diff_max.svg",
            figures.diff_scatter(
                [r["max_a"] for r in rows],
                [r["max_b"] for r in rows],
                [bool(r["newly_dead"] or r["revived"]) for r in rows],
                "max activation",
            ),
            "Largest activation over the probe set in A and B; red: newly dead or revived.",
        )
    )
    overlap = [r["reference_overlap"] for r in rows if r["reference_overlap"] is not None]
    if overlap:
        figs.append(
            _figure(
                out,
                "diff_overlap.svg",
                figures.histogram(overlap, "reference overlap (Jaccard)"),
                "Overlap of each neuron's top references between A and B.",
            )
        )
    columns = [
        ("neuron", "neuron", "text"),
        ("layer", "layer", "enum"),
        ("channel", "channel", "num"),
        ("change", "change", "enum"),
        ("reference_overlap", "ref. overlap", "num"),
        ("log_psi_a", "log PSI A", "num"),
        ("log_psi_b", "log PSI B", "num"),
        ("d_psi", "ΔPSI", "num"),
        ("psi_changed", "PSI changed", "bool"),
        ("explanation_a", "explanation A", "text"),
        ("explanation_b", "explanation B", "text"),
        ("explanation_changed", "expl. changed", "bool"),
    ]

    def change(r: dict[str, Any]) -> str:
        parts = [
            n
            for n, f in (
                ("newly dead", r["newly_dead"]),
                ("revived", r["revived"]),
                ("PSI", r["psi_changed"]),
                ("explanation", r["explanation_changed"]),
            )
            if f
        ]
        return ", ".join(parts) or "none"

    table_rows = [
        [
            f"{r['layer']}/{r['channel']}",
            r["layer"],
            r["channel"],
            change(r),
            *(_clean(r[c]) for c, _, _ in columns[4:]),
        ]
        for r in rows
    ]
    table = {
        "columns": [{"key": k, "label": lab, "type": t} for k, lab, t in columns],
        "rows": table_rows,
        "link": None,
    }
    (out / "diff.data.js").write_text(
        "window.NEURODIS_TABLE = " + json.dumps(table, separators=(",", ":")) + ";\n"
    )
    html = (
        _env("")
        .get_template("diff.html.j2")
        .render(a=str(run_a), b=str(run_b), summary=summary["text"], figures=figs, data_js="diff.data.js")
    )
    (out / "index.html").write_text(html)
    return {**summary, "index": str(out / "index.html"), "table": str(diff_out / "neuron_diff.parquet")}
