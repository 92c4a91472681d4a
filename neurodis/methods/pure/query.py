"""Questions asked of a finished PURE run: which virtual neuron does a new image use (``assign``) and
the pixels of a reference's crop (``render_crop``). How well PURE recovers planted circuits on the
testbed is in :mod:`neurodis.methods.pure.scorer`."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.dataset as ds
import torch

from neurodis.config import AuditSpec
from neurodis.data.probe import decode
from neurodis.data.transforms import preprocess
from neurodis.io.layout import RunLayout
from neurodis.io.manifest import committed
from neurodis.io.runs import open_run, resolve_neuron
from neurodis.io.tables import read_table
from neurodis.io.vector_index import read_faiss
from neurodis.kernels.attribution import l1_normalise
from neurodis.kernels.crops import Box, apply_box, crop_boxes, mask_outside
from neurodis.methods.pure.common import (
    attribute_rows,
    device_for,
    example_input,
    flat_sites,
    heatmap_method,
    heatmap_rows,
    model_view,
)
from neurodis.methods.pure.plan import ID_STRIDE, INDEX_STEP, index_unit_name
from neurodis.models.loading import load_model, resolve_preprocess
from neurodis.models.subnet import SubNetwork, capture
from neurodis.pipeline.step import error_text
from neurodis.types import NeuronRef, SpecError

log = logging.getLogger(__name__)


def _neuron_status(layout: RunLayout, ref: NeuronRef, k: int) -> str:
    t = read_table(
        layout,
        "pure_summary",
        filter=(ds.field("layer") == ref.layer)
        & (ds.field("channel") == ref.channel)
        & (ds.field("method") == "pure")
        & (ds.field("k") == k),
    )
    return str(t["status"][0].as_py()) if t.num_rows else "not audited"


def _index(layout: RunLayout, spec: AuditSpec, ref: NeuronRef, k: int) -> tuple[Any, dict[str, Any], int]:
    """(faiss index, manifest meta, number of the neuron's centroids) of ``ref``'s layer and ``k``."""
    import faiss

    m = committed(layout, INDEX_STEP).get(index_unit_name(ref.layer, k))
    if m is None:
        raise SpecError(
            f"run {layout.root} has no PURE index for layer {ref.layer!r} with k={k}; run the pure stage "
            f"on that layer (pure.k = {list(spec.pure.k)})"
        )
    index = read_faiss(layout.root / m.files["faiss_index"])
    ids = faiss.vector_to_array(index.id_map) if index.ntotal else np.zeros(0, np.int64)  # type: ignore[attr-defined]
    n = int(((ids >= ref.channel * ID_STRIDE) & (ids < (ref.channel + 1) * ID_STRIDE)).sum())
    if n == 0:
        raise SpecError(
            f"neuron {ref} has no virtual neurons with k={k} (PURE status: "
            f"{_neuron_status(layout, ref, k)}); pick another neuron"
        )
    return index, dict(m.meta), n


def assign(
    run_dir: str | Path, image_paths: Sequence[str | Path], neuron: str, k: int | None = None
) -> list[dict[str, Any]]:
    """For each image, the neuron's attribution (same rule as the run) and its nearest virtual neuron.

    ``neuron`` is ``layer/channel`` (or ``model/layer/channel``). Returns one dict per image:
    ``image, neuron, k, cluster, distance`` (Euclidean, in L1-normalised attribution space), ``l1``
    and ``status`` (``ok``; ``zero_attribution`` when the neuron gives no attribution on the image,
    then ``cluster`` is None; ``error: ...`` for an unreadable image).
    """
    import faiss

    layout, spec = open_run(run_dir)
    ref = resolve_neuron(layout, spec, neuron)
    k = k if k is not None else spec.pure.k[0]
    index, meta, n_c = _index(layout, spec, ref, k)
    device = device_for(spec)
    model = load_model(spec.model).to(device)
    pre = resolve_preprocess(spec.model, model)
    sub = SubNetwork(model, meta["lower_layer"], ref.layer, example_input(pre, device))
    out: list[dict[str, Any]] = []
    xs, rows = [], []
    for p in image_paths:
        base = {
            "image": str(p),
            "neuron": f"{ref.layer}/{ref.channel}",
            "k": k,
            "cluster": None,
            "distance": None,
        }
        try:
            xs.append(preprocess(decode(str(p)), pre))
            rows.append(len(out))
            out.append({**base, "l1": None, "status": "ok"})
        except Exception as e:  # noqa: BLE001 - reported per image
            out.append({**base, "l1": None, "status": f"error: {error_text(e)}"})
    if not xs:
        return out
    x = torch.stack(xs).to(device)
    a_low = capture(model, x, meta["lower_layer"])
    ch = torch.full((len(xs),), ref.channel, dtype=torch.long)
    raw = attribute_rows(model, sub, spec.pure, x, a_low, np.arange(len(xs)), ch, None)
    norm, l1 = l1_normalise(raw)
    lo = ref.channel * ID_STRIDE
    params = faiss.SearchParameters(sel=faiss.IDSelectorRange(lo, lo + ID_STRIDE))  # type: ignore[call-arg]
    dist, ids = index.search(np.ascontiguousarray(norm.numpy(), np.float32), n_c, params=params)
    for j, r in enumerate(rows):
        out[r]["l1"] = float(l1[j])
        if float(l1[j]) == 0.0:
            out[r]["status"] = "zero_attribution"
            continue
        out[r]["cluster"] = int(ids[j, 0] - lo)
        out[r]["distance"] = math.sqrt(max(float(dist[j, 0]), 0.0))
    return out


def render_crop(run_dir: str | Path, neuron: str, image_id: int, purpose: str = "embed") -> np.ndarray:
    """The ``uint8 [h, w, 3]`` crop of one reference: the stored PNG of a picture if there is one, else
    rendered from the image and the stored box (a picture's mask is recomputed from a fresh heatmap)."""
    layout, spec = open_run(run_dir)
    ref = resolve_neuron(layout, spec, neuron)
    f = (
        (ds.field("layer") == ref.layer)
        & (ds.field("channel") == ref.channel)
        & (ds.field("image_id") == image_id)
        & (ds.field("purpose") == purpose)
    )
    crops = read_table(layout, "crops", filter=f)
    if crops.num_rows == 0:
        raise ValueError(
            f"no {purpose!r} crop of image {image_id} for neuron {ref} in {run_dir}; it is not one of the "
            "neuron's references, or pure.crops was off"
        )
    row = crops.to_pylist()[0]
    if row["png"] is not None:
        import io

        from PIL import Image

        return np.asarray(Image.open(io.BytesIO(row["png"])).convert("RGB"))
    images = read_table(layout, "images", filter=ds.field("image_id") == image_id)
    model = load_model(spec.model)
    pre = resolve_preprocess(spec.model, model)
    x = preprocess(decode(images["path"][0].as_py()), pre)
    box = Box(*row["box"])
    view = model_view(x, pre)
    if purpose != "picture":
        return apply_box(view, box)
    refs = read_table(
        layout,
        "references",
        filter=(ds.field("layer") == ref.layer)
        & (ds.field("channel") == ref.channel)
        & (ds.field("image_id") == image_id),
    )
    shape = tuple(capture(model, x[None], ref.layer).shape[1:])
    site = torch.as_tensor(flat_sites(shape, refs["h"].to_numpy(), refs["w"].to_numpy()))
    heat = heatmap_rows(
        model, ref.layer, heatmap_method(spec.pure, model), x[None], torch.tensor([ref.channel]), site
    )
    _, _, mask = crop_boxes(heat, spec.pure.picture_kernel, spec.pure.picture_threshold)
    m = mask[0].numpy()[box.y0 : box.y1, box.x0 : box.x1]
    return mask_outside(apply_box(view, box), m, spec.pure.picture_opacity)
