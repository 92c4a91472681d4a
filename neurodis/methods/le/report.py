"""Reading Linear Explanations back: one neuron on one screen (``neurodis explain RUN LAYER/CHANNEL``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.dataset as ds

from neurodis.io.runs import open_run, resolve_neuron
from neurodis.io.tables import read_table


def _fmt(x: Any, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def explain_report(run_dir: str | Path, neuron: str, top: int = 10) -> str:
    """A neuron's explanation(s), scores and top images, as text (``neurodis explain RUN layer4/117``)."""
    layout, spec = open_run(run_dir)
    ref = resolve_neuron(layout, spec, neuron)
    key = (ds.field("layer") == ref.layer) & (ds.field("channel") == ref.channel)
    ex = read_table(layout, "explanations", filter=key)
    n = read_table(layout, "neurons", filter=key).to_pylist()[0]
    lines = [
        f"{ref.layer}/{ref.channel}: max {_fmt(n['max'])}, mean {_fmt(n['mean'])}"
        + ("  DEAD" if n["dead"] else "")
    ]
    if ex.num_rows == 0:
        lines.append("  no explanations (run the explain stage)")
    abl = read_table(layout, "ablation_scores", filter=key)
    for r in ex.to_pylist():
        terms = " + ".join(f"{w:.3g} * {c!r}" for c, w in zip(r["concepts"], r["weights"]))
        body = f"{terms} + {r['intercept']:.3g}" if r["concepts"] else "(no concept)"
        lines.append(f"  LE({r['explainer']}) [{r['status']}]: {body}")
        lines.append(
            f"    length {r['length']}, val corr {_fmt(r['val_corr'])}, test corr {_fmt(r['test_corr'])} "
            f"(simulator {r['simulator']}), explainer's own test corr {_fmt(r['explainer_test_corr'])}"
        )
        for a in abl.filter(ds.field("explainer") == r["explainer"]).to_pylist():
            lines.append(
                f"    ablation ({a['method']}, {a['path']}): alpha {_fmt(a['alpha'], 4)}"
                + (
                    f" (95% CI {_fmt(a['alpha_low'], 3)} to {_fmt(a['alpha_high'], 3)}, "
                    f"{a['test_images']} test images)"
                    if a["alpha_low"] is not None
                    else ""
                )
                + f", c {_fmt(a['c'])}, d {_fmt(a['d'])} [{a['status']}]"
            )
    ti = read_table(layout, "top_impact", filter=key)
    if ti.num_rows:
        parts = [f"{b:g}: {_fmt(v, 4)}" for b, v in zip(ti["beta"].to_pylist(), ti["ti"].to_pylist())]
        n_img = ti["images"][0].as_py()  # null in runs written before the column
        lines.append("  top impact TI(beta): " + ", ".join(parts) + (f" ({n_img} images)" if n_img else ""))
    refs = read_table(layout, "references", filter=key).sort_by("rank")
    if refs.num_rows:
        images = read_table(layout, "images")
        label = dict(zip(images["image_id"].to_pylist(), images["label"].to_pylist()))
        items = [
            f"{i}{'(' + str(label.get(i)) + ')' if label.get(i) else ''}"
            for i in refs["image_id"].to_pylist()[:top]
        ]
        lines.append(f"  top images by max: {', '.join(items)}")
    from neurodis import registry

    for method in registry.METHODS:  # other methods' parts (patch swaps ...)
        lines += method.explain_lines(layout, ref.layer, ref.channel)
    return "\n".join(lines) + "\n"
