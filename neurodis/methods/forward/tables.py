"""Tables of the forward stage (manifest namespace ``forward``)."""

from __future__ import annotations

import pyarrow as pa

from neurodis.tablespec import F32_VEC, I32_VEC, table_spec

IMAGES = table_spec(
    "images",
    "forward",
    ("image_id",),
    "The probe set as read: one row per listed image (rejected ones too).",
    [
        ("image_id", pa.int64(), "stable id: position in the sorted listing of the probe set"),
        ("path", pa.string(), "file path (or synthetic://seed/index for the testbed world)"),
        ("label", pa.string(), "class label (imagefolder sub-folder or manifest column); null when unknown"),
    ],
)

ACTIVATIONS = table_spec(
    "activations",
    "forward",
    ("layer", "image_id"),
    "Per layer and image, one value per channel: spatial mean, spatial max and the max's site.",
    [
        ("layer", pa.string(), "module path of the audited layer"),
        ("image_id", pa.int64(), "image id (see images)"),
        ("mean", F32_VEC, "per-channel spatial mean (token mean, or CLS token, for token layers)"),
        ("max", F32_VEC, "per-channel spatial max"),
        ("argmax_h", I32_VEC, "per-channel row of the max (0 for vector layers)"),
        ("argmax_w", I32_VEC, "per-channel column of the max (0 for vector layers)"),
    ],
)

REFERENCES = table_spec(
    "references",
    "forward",
    ("layer", "channel", "rank"),
    "Per neuron its top-K images by spatial max; ties go to the smaller image id.",
    [
        ("layer", pa.string(), "module path"),
        ("channel", pa.int32(), "channel index"),
        ("rank", pa.int32(), "0 = highest max"),
        ("image_id", pa.int64(), "image id"),
        ("value", pa.float32(), "the neuron's spatial max on that image"),
        ("h", pa.int32(), "row of the max"),
        ("w", pa.int32(), "column of the max"),
    ],
)

NEURONS = table_spec(
    "neurons",
    "forward",
    ("layer", "channel"),
    "Per neuron over the whole probe set: max, mean and the dead flag (max < forward.dead_threshold).",
    [
        ("layer", pa.string(), "module path"),
        ("channel", pa.int32(), "channel index"),
        ("max", pa.float32(), "largest spatial max over the probe set"),
        ("mean", pa.float32(), "mean of the per-image spatial mean"),
        (
            "dead",
            pa.bool_(),
            "true when max < forward.dead_threshold; later stages skip it and averages exclude it",
        ),
    ],
)

REJECTS = table_spec(
    "rejects",
    "forward",
    ("image_id",),
    "Probe images that could not be decoded; the audit goes on without them.",
    [
        ("image_id", pa.int64(), "image id"),
        ("path", pa.string(), "file path"),
        ("reason", pa.string(), "why it was rejected (the decoder's error)"),
    ],
)

PREDICTIONS = table_spec(
    "predictions",
    "forward",
    ("image_id",),
    "The audited model's top class per probe image; written only with data.labels: predicted.",
    [
        ("image_id", pa.int64(), "image id"),
        ("predicted", pa.int32(), "index of the model's largest output (the first one on ties)"),
    ],
)

# Per-shard partial top-K, merged into `references`; internal but readable like any table.
TOPK_PARTIALS = table_spec(
    "_topk_partials",
    "forward",
    ("shard", "layer", "channel", "rank"),
    "Internal: each forward shard's own top-K per neuron, merged into references.",
    [
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
    ],
)

TABLES = (IMAGES, ACTIVATIONS, REFERENCES, NEURONS, REJECTS, PREDICTIONS, TOPK_PARTIALS)
