"""Every Parquet table neurodis writes, in one place.

Vectors (one value per channel) are stored as ``list<float32>`` / ``list<int32>``: one table holds
several layers with different channel counts, and a fixed-size list type would make the per-layer
files of one dataset disagree on their schema. Plain ``pyarrow.dataset.dataset(RUN/"<table>")``
reads each vector back as a list with its length. Every row carries its full key.

``python -m neurodis.schemas`` prints ``docs/schemas.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

SCHEMA_VERSION = 1

_F32_VEC = pa.list_(pa.float32())
_I32_VEC = pa.list_(pa.int32())


@dataclass(frozen=True)
class TableSpec:
    name: str
    schema: pa.Schema
    key: tuple[str, ...]
    stage: str
    doc: str
    column_docs: dict[str, str]


def _spec(name: str, stage: str, key: tuple[str, ...], doc: str, cols: list[tuple[str, pa.DataType, str]]) -> TableSpec:
    schema = pa.schema([pa.field(n, t, nullable=(n not in key)) for n, t, _ in cols],
                       metadata={b"neurodis.schema_version": str(SCHEMA_VERSION).encode(), b"neurodis.table": name.encode()})
    return TableSpec(name, schema, key, stage, doc, {n: d for n, _, d in cols})


IMAGES = _spec("images", "forward", ("image_id",), "The probe set as read: one row per listed image (rejected ones too).", [
    ("image_id", pa.int64(), "stable id: position in the sorted listing of the probe set"),
    ("path", pa.string(), "file path (or synthetic://seed/index for the testbed world)"),
    ("label", pa.string(), "class label (imagefolder sub-folder or manifest column); null when unknown"),
])

ACTIVATIONS = _spec("activations", "forward", ("layer", "image_id"),
                    "Per layer and image, one value per channel: spatial mean, spatial max and the max's site.", [
    ("layer", pa.string(), "module path of the audited layer"),
    ("image_id", pa.int64(), "image id (see images)"),
    ("mean", _F32_VEC, "per-channel spatial mean (token mean, or CLS token, for token layers)"),
    ("max", _F32_VEC, "per-channel spatial max"),
    ("argmax_h", _I32_VEC, "per-channel row of the max (0 for vector layers)"),
    ("argmax_w", _I32_VEC, "per-channel column of the max (0 for vector layers)"),
])

REFERENCES = _spec("references", "forward", ("layer", "channel", "rank"),
                   "Per neuron its top-K images by spatial max; ties go to the smaller image id.", [
    ("layer", pa.string(), "module path"),
    ("channel", pa.int32(), "channel index"),
    ("rank", pa.int32(), "0 = highest max"),
    ("image_id", pa.int64(), "image id"),
    ("value", pa.float32(), "the neuron's spatial max on that image"),
    ("h", pa.int32(), "row of the max"),
    ("w", pa.int32(), "column of the max"),
])

NEURONS = _spec("neurons", "forward", ("layer", "channel"),
                "Per neuron over the whole probe set: max, mean and the dead flag (max < forward.dead_threshold).", [
    ("layer", pa.string(), "module path"),
    ("channel", pa.int32(), "channel index"),
    ("max", pa.float32(), "largest spatial max over the probe set"),
    ("mean", pa.float32(), "mean of the per-image spatial mean"),
    ("dead", pa.bool_(), "true when max < forward.dead_threshold; later stages skip it and averages exclude it"),
])

REJECTS = _spec("rejects", "forward", ("image_id",), "Probe images that could not be decoded; the audit goes on without them.", [
    ("image_id", pa.int64(), "image id"),
    ("path", pa.string(), "file path"),
    ("reason", pa.string(), "why it was rejected (the decoder's error)"),
])

# Per-shard partial top-K, merged into `references`; internal but readable like any table.
TOPK_PARTIALS = _spec("_topk_partials", "forward", ("shard", "layer", "channel", "rank"),
                      "Internal: each forward shard's own top-K per neuron, merged into references.", [
    ("shard", pa.int32(), "forward shard id"),
    ("layer", pa.string(), "module path"),
    ("channel", pa.int32(), "channel index"),
    ("rank", pa.int32(), "rank within the shard"),
    ("image_id", pa.int64(), "image id"),
    ("value", pa.float32(), "spatial max"),
    ("h", pa.int32(), "row of the max"),
    ("w", pa.int32(), "column of the max"),
    ("sum_mean", pa.float64(), "sum over the shard's images of the spatial mean (rank 0 rows only)"),
    ("count", pa.int64(), "images in the shard (rank 0 rows only)"),
])

NEURON_DIFF = _spec("neuron_diff", "diff", ("layer", "channel"),
                     "Written by `neurodis diff RUN_A RUN_B --out DIR` (DIR/neuron_diff.parquet): one row per "
                     "neuron audited in both runs; null where a run lacks that stage.", [
    ("layer", pa.string(), "module path"),
    ("channel", pa.int32(), "channel index"),
    ("dead_a", pa.bool_(), "dead in run A"),
    ("dead_b", pa.bool_(), "dead in run B"),
    ("newly_dead", pa.bool_(), "alive in A, dead in B"),
    ("revived", pa.bool_(), "dead in A, alive in B"),
    ("max_a", pa.float32(), "max over the probe set in A"),
    ("max_b", pa.float32(), "max over the probe set in B"),
    ("reference_overlap", pa.float64(), "Jaccard overlap of the top-K reference images (by path)"),
    ("psi_a", pa.float64(), "PSI in A"),
    ("psi_b", pa.float64(), "PSI in B"),
    ("d_psi", pa.float64(), "psi_b - psi_a"),
    ("pure_split_a", pa.float64(), "PURE inter - intra embedding distance in A (smallest k)"),
    ("pure_split_b", pa.float64(), "the same in B"),
    ("explanation_a", pa.string(), "linear explanation's concepts in A, joined by ' + '"),
    ("explanation_b", pa.string(), "the same in B"),
    ("explanation_changed", pa.bool_(), "the concept lists differ"),
])

TABLES: dict[str, TableSpec] = {t.name: t for t in (IMAGES, ACTIVATIONS, REFERENCES, NEURONS, REJECTS, TOPK_PARTIALS,
                                                     NEURON_DIFF)}


def render_markdown() -> str:
    lines = ["# Tables", "",
             f"Generated from `neurodis/schemas.py` (schema version {SCHEMA_VERSION}) by "
             "`python -m neurodis.schemas > docs/schemas.md`; do not edit by hand.", "",
             "Each table is a directory of Parquet files under the run directory; read one with "
             "`pyarrow.dataset.dataset(RUN_DIR / \"<table>\")`. Only files named in a committed shard "
             "manifest count: `neurodis.io.tables.read_table` reads exactly those.", ""]
    for t in TABLES.values():
        lines += [f"## `{t.name}`", "", t.doc, "", f"Key: {', '.join(f'`{k}`' for k in t.key)}. Written by stage `{t.stage}`.", "",
                  "| column | type | meaning |", "|---|---|---|"]
        lines += [f"| `{f.name}` | `{f.type}` | {t.column_docs[f.name]} |" for f in t.schema]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    import sys

    sys.stdout.write(render_markdown())
