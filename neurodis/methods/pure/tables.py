"""Tables of PURE (namespaces ``pure``: attributions and crops; ``pure-cluster``: k-means and evaluation)."""

from __future__ import annotations

import pyarrow as pa

from neurodis.tablespec import F32_VEC, I32_VEC, table_spec

PURE_ATTRIBUTIONS = table_spec(
    "pure_attributions",
    "pure",
    ("layer", "channel", "rank"),
    "Per neuron and reference: the signed, L1-normalised attribution over the channels of "
    "the lower layer (PURE's partial backward pass).",
    [
        ("layer", pa.string(), "module path of the neuron's layer L"),
        ("channel", pa.int32(), "channel index in L"),
        ("rank", pa.int32(), "reference rank (see references)"),
        ("image_id", pa.int64(), "image id"),
        ("lower_layer", pa.string(), "module path of the lower layer L'"),
        (
            "attribution",
            F32_VEC,
            "one value per channel of L'; sum of absolute values 1 (all zeros when l1 = 0)",
        ),
        (
            "l1",
            pa.float32(),
            "sum of absolute values before normalisation (0: the neuron gave no attribution)",
        ),
    ],
)

CROPS = table_spec(
    "crops",
    "pure",
    ("layer", "channel", "image_id", "purpose"),
    "Feature-visualisation crops of each reference: a square box around the LRP heatmap of the "
    "neuron's max site, in the model-input frame (after resize and centre crop).",
    [
        ("layer", pa.string(), "module path"),
        ("channel", pa.int32(), "channel index"),
        ("image_id", pa.int64(), "image id"),
        (
            "purpose",
            pa.string(),
            "'embed' (pure.embed_kernel/threshold, unmasked) or 'picture' (picture_*, masked)",
        ),
        ("box", I32_VEC, "x0, y0, x1, y1 with exclusive ends, in model-input pixels"),
        (
            "empty",
            pa.bool_(),
            "true when no smoothed heatmap value exceeded the threshold (box = whole image)",
        ),
        ("png", pa.binary(), "the rendered crop as PNG (pictures only, with pure.store_pictures); else null"),
    ],
)

PURE_EMBEDDINGS = table_spec(
    "_pure_embeddings",
    "pure",
    ("layer", "channel", "image_id", "embedder"),
    "Internal: the evaluation embedder's embedding of each reference's 'embed' crop.",
    [
        ("layer", pa.string(), "module path"),
        ("channel", pa.int32(), "channel index"),
        ("image_id", pa.int64(), "image id"),
        ("embedder", pa.string(), "embedder name (pure.eval_embedder)"),
        ("embedding", F32_VEC, "unit-norm embedding"),
    ],
)

PURE_CLUSTERS = table_spec(
    "pure_clusters",
    "pure-cluster",
    ("layer", "channel", "method", "k", "image_id"),
    "Cluster of each reference per neuron, method and k.",
    [
        ("layer", pa.string(), "module path"),
        ("channel", pa.int32(), "channel index"),
        (
            "method",
            pa.string(),
            "'pure' (attributions), 'activation' (mean activations of all channels of L), "
            "'embedding' (the embedder's crop embeddings: upper bound)",
        ),
        ("k", pa.int32(), "number of clusters"),
        ("image_id", pa.int64(), "image id"),
        ("rank", pa.int32(), "reference rank"),
        ("cluster", pa.int32(), "cluster index in [0, k)"),
    ],
)

PURE_SUMMARY = table_spec(
    "pure_summary",
    "pure-cluster",
    ("layer", "channel", "method", "k"),
    "Per neuron, method and k: status and the embedding-distance evaluation "
    "(method 'none' = no clustering, k = 1).",
    [
        ("layer", pa.string(), "module path"),
        ("channel", pa.int32(), "channel index"),
        ("method", pa.string(), "'pure', 'activation', 'embedding' or 'none'"),
        ("k", pa.int32(), "number of clusters (1 for 'none')"),
        (
            "status",
            pa.string(),
            "'ok', 'dead', 'degenerate' (fewer distinct references than k), 'zero_attribution', "
            "'no_embeddings' or 'error: ...'",
        ),
        ("n_refs", pa.int32(), "references used"),
        ("sizes", I32_VEC, "references per cluster"),
        (
            "intra",
            pa.float64(),
            "mean embedding distance over same-cluster pairs i != j (null without embedder)",
        ),
        ("inter", pa.float64(), "mean embedding distance over cross-cluster pairs (null without embedder)"),
        ("overall", pa.float64(), "mean embedding distance over all pairs i != j"),
        (
            "corr_embedding",
            pa.float64(),
            "Pearson correlation over reference pairs between the method's feature "
            "distances and embedding distances ('pure' and 'activation' only)",
        ),
        ("inertia", pa.float64(), "k-means inertia"),
        (
            "silhouette",
            pa.float64(),
            "mean Euclidean silhouette of the partition in the method's feature space (null unless ok)",
        ),
        (
            "selected",
            pa.bool_(),
            "true for the k PURE's rule picks for this neuron and method: the highest silhouette over "
            "pure.k (ties: smaller k); always true for 'none'",
        ),
    ],
)

PURE_CENTROIDS = table_spec(
    "pure_centroids",
    "pure-cluster",
    ("layer", "channel", "k", "cluster"),
    "Virtual neurons: the k-means centroids of each neuron's attributions.",
    [
        ("layer", pa.string(), "module path"),
        ("channel", pa.int32(), "channel index"),
        ("k", pa.int32(), "number of clusters"),
        ("cluster", pa.int32(), "cluster index"),
        ("lower_layer", pa.string(), "module path of L'"),
        ("size", pa.int32(), "references in the cluster"),
        ("centroid", F32_VEC, "centroid in the space of L1-normalised attributions"),
    ],
)

TABLES = (PURE_ATTRIBUTIONS, CROPS, PURE_EMBEDDINGS, PURE_CLUSTERS, PURE_SUMMARY, PURE_CENTROIDS)
