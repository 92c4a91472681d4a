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


# ---- PURE: steps "pure" (attributions, crops), "pure-cluster" (k-means, evaluation) -----
PURE_ATTRIBUTIONS = _spec("pure_attributions", "pure", ("layer", "channel", "rank"),
                          "Per neuron and reference: the signed, L1-normalised attribution over the channels of "
                          "the lower layer (PURE's partial backward pass).", [
    ("layer", pa.string(), "module path of the neuron's layer L"),
    ("channel", pa.int32(), "channel index in L"),
    ("rank", pa.int32(), "reference rank (see references)"),
    ("image_id", pa.int64(), "image id"),
    ("lower_layer", pa.string(), "module path of the lower layer L'"),
    ("attribution", _F32_VEC, "one value per channel of L'; sum of absolute values 1 (all zeros when l1 = 0)"),
    ("l1", pa.float32(), "sum of absolute values before normalisation (0: the neuron gave no attribution)"),
])

CROPS = _spec("crops", "pure", ("layer", "channel", "image_id", "purpose"),
              "Feature-visualisation crops of each reference: a square box around the LRP heatmap of the "
              "neuron's max site, in the model-input frame (after resize and centre crop).", [
    ("layer", pa.string(), "module path"),
    ("channel", pa.int32(), "channel index"),
    ("image_id", pa.int64(), "image id"),
    ("purpose", pa.string(), "'embed' (pure.embed_kernel/threshold, unmasked) or 'picture' (picture_*, masked)"),
    ("box", _I32_VEC, "x0, y0, x1, y1 with exclusive ends, in model-input pixels"),
    ("empty", pa.bool_(), "true when no smoothed heatmap value exceeded the threshold (box = whole image)"),
    ("png", pa.binary(), "the rendered crop as PNG (pictures only, with pure.store_pictures); else null"),
])

PURE_EMBEDDINGS = _spec("_pure_embeddings", "pure", ("layer", "channel", "image_id", "embedder"),
                        "Internal: the evaluation embedder's embedding of each reference's 'embed' crop.", [
    ("layer", pa.string(), "module path"),
    ("channel", pa.int32(), "channel index"),
    ("image_id", pa.int64(), "image id"),
    ("embedder", pa.string(), "embedder name (pure.eval_embedder)"),
    ("embedding", _F32_VEC, "unit-norm embedding"),
])

PURE_CLUSTERS = _spec("pure_clusters", "pure-cluster", ("layer", "channel", "method", "k", "image_id"),
                      "Cluster of each reference per neuron, method and k.", [
    ("layer", pa.string(), "module path"),
    ("channel", pa.int32(), "channel index"),
    ("method", pa.string(), "'pure' (attributions), 'activation' (mean activations of all channels of L), "
                            "'embedding' (the embedder's crop embeddings: upper bound)"),
    ("k", pa.int32(), "number of clusters"),
    ("image_id", pa.int64(), "image id"),
    ("rank", pa.int32(), "reference rank"),
    ("cluster", pa.int32(), "cluster index in [0, k)"),
])

PURE_SUMMARY = _spec("pure_summary", "pure-cluster", ("layer", "channel", "method", "k"),
                     "Per neuron, method and k: status and the embedding-distance evaluation "
                     "(method 'none' = no clustering, k = 1).", [
    ("layer", pa.string(), "module path"),
    ("channel", pa.int32(), "channel index"),
    ("method", pa.string(), "'pure', 'activation', 'embedding' or 'none'"),
    ("k", pa.int32(), "number of clusters (1 for 'none')"),
    ("status", pa.string(), "'ok', 'dead', 'degenerate' (fewer distinct references than k), 'zero_attribution', "
                            "'no_embeddings' or 'error: ...'"),
    ("n_refs", pa.int32(), "references used"),
    ("sizes", _I32_VEC, "references per cluster"),
    ("intra", pa.float64(), "mean embedding distance over same-cluster pairs i != j (null without embedder)"),
    ("inter", pa.float64(), "mean embedding distance over cross-cluster pairs (null without embedder)"),
    ("overall", pa.float64(), "mean embedding distance over all pairs i != j"),
    ("corr_embedding", pa.float64(), "Pearson correlation over reference pairs between the method's feature "
                                     "distances and embedding distances ('pure' and 'activation' only)"),
    ("inertia", pa.float64(), "k-means inertia"),
])

PURE_CENTROIDS = _spec("pure_centroids", "pure-cluster", ("layer", "channel", "k", "cluster"),
                       "Virtual neurons: the k-means centroids of each neuron's attributions.", [
    ("layer", pa.string(), "module path"),
    ("channel", pa.int32(), "channel index"),
    ("k", pa.int32(), "number of clusters"),
    ("cluster", pa.int32(), "cluster index"),
    ("lower_layer", pa.string(), "module path of L'"),
    ("size", pa.int32(), "references in the cluster"),
    ("centroid", _F32_VEC, "centroid in the space of L1-normalised attributions"),
])

TABLES.update({t.name: t for t in (PURE_ATTRIBUTIONS, CROPS, PURE_EMBEDDINGS, PURE_CLUSTERS, PURE_SUMMARY,
                                   PURE_CENTROIDS)})
# ---- end PURE --------------------------------------------------------------------------------------


# ---- Embedding + PSI: manifest namespaces "embed-images", "embed", "psi" -------------------
IMAGE_EMBEDDINGS = _spec("image_embeddings", "embed-images", ("embedder", "image_id"),
                         "Whole probe images embedded once per probe set and embedder (their config hash covers "
                         "only the embedder and the probe set's fingerprint: cache_dir shares them across audits).", [
    ("embedder", pa.string(), "embedder name (embed.embedder)"),
    ("image_id", pa.int64(), "image id (see images)"),
    ("vector", _F32_VEC, "unit-norm image embedding"),
])

EMBED_CALIBRATION = _spec("embed_calibration", "embed", ("embedder",),
                          "Sigmoid calibration of concept probabilities P = sigmoid(a*cos + a*b) for an embedder "
                          "on a probe set: fitted by binary cross-entropy against the labels, or fixed in the spec.", [
    ("embedder", pa.string(), "embedder name"),
    ("a", pa.float64(), "slope"),
    ("b", pa.float64(), "offset (in cosine units)"),
    ("source", pa.string(), "'fitted' or 'fixed'"),
    ("n_images", pa.int64(), "images used in the fit (0 when fixed)"),
    ("n_concepts", pa.int64(), "label concepts (classes + superclasses) used in the fit"),
    ("bce", pa.float64(), "mean binary cross-entropy at (a, b) on the fitting pairs (null when fixed)"),
])

CONCEPT_EMBEDDINGS = _spec("concept_embeddings", "embed", ("embedder", "concept_set", "concept"),
                           "One vector per concept: the renormalised mean of its template prompts' embeddings. "
                           "concept_set 'labels' holds the probe set's class and superclass names.", [
    ("embedder", pa.string(), "embedder name"),
    ("concept_set", pa.string(), "concept set name (embed.concepts file stem, or 'labels')"),
    ("concept", pa.string(), "the concept as written in the set"),
    ("n_templates", pa.int32(), "templates averaged"),
    ("vector", _F32_VEC, "unit-norm concept embedding"),
])

PROMPT_EMBEDDINGS = _spec("prompt_embeddings", "embed", ("embedder", "concept_set", "concept", "template"),
                          "Every prompt (concept x template) embedded on its own.", [
    ("embedder", pa.string(), "embedder name"),
    ("concept_set", pa.string(), "concept set name"),
    ("concept", pa.string(), "concept"),
    ("template", pa.int32(), "template index in embed.templates (or the embedder's defaults)"),
    ("prompt", pa.string(), "the text embedded"),
    ("vector", _F32_VEC, "unit-norm text embedding"),
])

CROP_EMBEDDINGS = _spec("crop_embeddings", "embed", ("embedder", "layer", "channel", "crop", "image_id"),
                        "Embedded image crops per neuron: 'psi' = receptive-field patches around each of the "
                        "neuron's top psi.top_k sites; 'psi_null' = random probe sites of the layer's null "
                        "neurons (channel = null-neuron index).", [
    ("embedder", pa.string(), "embedder name"),
    ("layer", pa.string(), "module path"),
    ("channel", pa.int32(), "channel index (null-neuron index for 'psi_null')"),
    ("crop", pa.string(), "'psi' or 'psi_null'"),
    ("image_id", pa.int64(), "source image id"),
    ("rank", pa.int32(), "reference rank of the site (draw order for null neurons)"),
    ("h", pa.int32(), "row of the site in the layer's activation map"),
    ("w", pa.int32(), "column of the site"),
    ("box", _I32_VEC, "x0, y0, x1, y1 with exclusive ends, in pixels of the original (decoded) image"),
    ("vector", _F32_VEC, "unit-norm crop embedding"),
])

_PSI_COLUMNS: list[tuple[str, pa.DataType, str]] = [
    ("layer", pa.string(), "module path"),
    ("channel", pa.int32(), "channel index (null-neuron index in psi_nulls)"),
    ("embedder", pa.string(), "embedder of the patches and concepts"),
    ("n_sites", pa.int32(), "patches used (psi.top_k unless the probe set is smaller)"),
    ("S", pa.float64(), "max(0, best mean cosine silhouette of k-means over psi.k_range)"),
    ("Q", pa.float64(), "NMI of the best partition with the source images' class labels; null without labels"),
    ("D", pa.float64(), "mean over clusters of the prototype's top-1 minus top-2 cosine to the concepts"),
    ("S_hat", pa.float64(), "sigmoid(z) of S against its null"),
    ("Q_hat", pa.float64(), "sigmoid(z) of Q; null without labels"),
    ("D_hat", pa.float64(), "sigmoid(z) of D"),
    ("S_z", pa.float64(), "z = (S - null mean) / (null sd + psi.eps)"),
    ("Q_z", pa.float64(), "z of Q"),
    ("D_z", pa.float64(), "z of D"),
    ("S_null_mean", pa.float64(), "mean of the S null draws"),
    ("S_null_sd", pa.float64(), "sd of the S null draws"),
    ("Q_null_mean", pa.float64(), "mean of the Q null draws"),
    ("Q_null_sd", pa.float64(), "sd of the Q null draws"),
    ("D_null_mean", pa.float64(), "mean of the D null draws"),
    ("D_null_sd", pa.float64(), "sd of the D null draws"),
    ("psi", pa.float64(), "S_hat * Q_hat * D_hat (the available components)"),
    ("log_psi", pa.float64(), "log of psi (sum of log-sigmoids); chance level ln(0.5^3) = -2.08"),
    ("k_hat", pa.int32(), "cluster count of the best partition"),
    ("silhouettes", _F32_VEC, "observed silhouette for each K' in psi.k_range"),
    ("partition", _I32_VEC, "cluster of each site under the best partition (order of site_image_ids)"),
    ("site_image_ids", pa.list_(pa.int64()), "source image of each site, in reference-rank order"),
    ("status", pa.string(), "'ok', 'no_labels' (Q absent, psi from S and D), 'dead', 'too_few_sites', "
                            "'no_patches' or 'error: ...'"),
    ("flags", pa.string(), "comma-separated notes, e.g. 'zero_spread:Q' (a null with no spread: z set to 0)"),
]

PSI = _spec("psi", "psi", ("layer", "channel"), "Per neuron: PSI's raw components, their null calibration, "
            "PSI and log PSI, the best partition.", _PSI_COLUMNS)

PSI_NULLS = _spec("psi_nulls", "psi", ("layer", "channel"), "Null neurons (random probe sites), scored exactly "
                  "like real neurons; the reference of psi_layers.", _PSI_COLUMNS)

PSI_LAYERS = _spec("psi_layers", "psi", ("layer",), "Per layer: how well PSI and each calibrated component "
                   "separate real neurons from null neurons, and the null's log-PSI centre.", [
    ("layer", pa.string(), "module path"),
    ("n_neurons", pa.int32(), "neurons scored (status ok or no_labels)"),
    ("n_dead", pa.int32(), "dead neurons (not scored)"),
    ("n_failed", pa.int32(), "neurons with another non-ok status"),
    ("n_null", pa.int32(), "null neurons scored"),
    ("auroc_psi", pa.float64(), "AUROC of psi, real vs null neurons (null when either group is empty)"),
    ("auroc_S", pa.float64(), "AUROC of S_hat"),
    ("auroc_Q", pa.float64(), "AUROC of Q_hat (null without labels)"),
    ("auroc_D", pa.float64(), "AUROC of D_hat"),
    ("log_psi_median", pa.float64(), "median log PSI of the real neurons"),
    ("null_log_psi_median", pa.float64(), "median log PSI of the null neurons (chance: -2.08)"),
    ("null_log_psi_mean", pa.float64(), "mean log PSI of the null neurons"),
    ("stride", pa.int32(), "receptive-field stride in model-input pixels"),
    ("receptive_field", pa.int32(), "receptive-field size in model-input pixels"),
    ("crop_size", pa.int32(), "patch side used, in model-input pixels"),
])

PSI_DEPTH = _spec("psi_depth", "psi", ("layer_a", "layer_b"), "Depth comparison: two-sample Kolmogorov-Smirnov "
                  "test of log PSI between each pair of layers (layer_a earlier).", [
    ("layer_a", pa.string(), "earlier layer"),
    ("layer_b", pa.string(), "later layer"),
    ("n_a", pa.int32(), "neurons of layer_a"),
    ("n_b", pa.int32(), "neurons of layer_b"),
    ("median_log_psi_a", pa.float64(), "median log PSI of layer_a"),
    ("median_log_psi_b", pa.float64(), "median log PSI of layer_b"),
    ("ks_statistic", pa.float64(), "KS statistic"),
    ("ks_pvalue", pa.float64(), "two-sided p value"),
])

TABLES.update({t.name: t for t in (IMAGE_EMBEDDINGS, EMBED_CALIBRATION, CONCEPT_EMBEDDINGS, PROMPT_EMBEDDINGS,
                                   CROP_EMBEDDINGS, PSI, PSI_NULLS, PSI_LAYERS, PSI_DEPTH)})
# ---- end Embedding + PSI ----------------------------------------------------------------------------


# ---- Linear Explanations: manifest namespaces "explain", "explain-ablation", "explain-ti" ----
LE_SPLIT = _spec("split", "explain", ("image_id",), "The probe set's seeded train / val / test split (explain.split, "
                 "explain.split_seed), stored once and used by every Linear Explanations step.", [
    ("image_id", pa.int64(), "image id (see images)"),
    ("split", pa.string(), "'train', 'val' or 'test'"),
])

LE_CONCEPTS = _spec("le_concepts", "explain", ("explainer", "concept"),
                    "Each explainer's concept set and the filter: an embedder's concept is kept when the mean of its "
                    "top-5 probabilities over the probe set is >= explain.min_top5 and its std >= explain.min_std.", [
    ("explainer", pa.string(), "'label' or the embedder name"),
    ("concept", pa.string(), "the concept"),
    ("top5_mean", pa.float64(), "mean of the five largest P(concept | image) over the probe set"),
    ("std", pa.float64(), "standard deviation of P(concept | image) over the probe set"),
    ("kept", pa.bool_(), "used in the explanations"),
])

EXPLANATIONS = _spec("explanations", "explain", ("layer", "channel", "explainer"),
                     "Per neuron and explainer: the linear explanation (greedy search over the elastic net's ranking) "
                     "and its simulation scores.", [
    ("layer", pa.string(), "module path"),
    ("channel", pa.int32(), "channel index"),
    ("explainer", pa.string(), "'label' or the embedder name"),
    ("concepts", pa.list_(pa.string()), "selected concepts, in selection order"),
    ("weights", pa.list_(pa.float64()), "least-squares weight of each concept (activation per unit of P)"),
    ("intercept", pa.float64(), "least-squares intercept"),
    ("length", pa.int32(), "number of concepts (0 = no concept beat the tolerance)"),
    ("val_corr", pa.float64(), "Pearson correlation of the explainer's simulation with the neuron on the val split"),
    ("test_corr", pa.float64(), "correlation score: the simulator's simulation vs the neuron on the test split"),
    ("simulator", pa.string(), "the simulator embedder (the explainer itself when explain.simulator is unset)"),
    ("explainer_test_corr", pa.float64(), "the explainer's own simulation vs the neuron on the test split"),
    ("n_concepts", pa.int32(), "concepts available after the filter"),
    ("status", pa.string(), "'ok', 'empty' (nothing correlates by explain.tolerance), 'dead', 'constant' (no variance "
                            "on train or val), 'non_finite', 'no_concepts' or 'error: ...'"),
])

ABLATION_SCORES = _spec("ablation_scores", "explain-ablation", ("layer", "channel", "explainer", "method"),
                        "Per neuron, explainer and scaling method: the neuron replaced by c * s(x) + d; (c, d) fitted "
                        "on val, the ablation score alpha on test (temperature-scaled cross-entropy).", [
    ("layer", pa.string(), "module path"),
    ("channel", pa.int32(), "channel index"),
    ("explainer", pa.string(), "explainer of the simulated explanation"),
    ("method", pa.string(), "'optim' (Adam on sum_val |L_sim - L|) or 'norm' (closed form)"),
    ("simulator", pa.string(), "embedder that simulated s(x)"),
    ("c", pa.float64(), "scale"),
    ("d", pa.float64(), "offset"),
    ("alpha", pa.float64(), "1 - sum_test |L_sim - L| / sum_test |L_mean - L| (1 = perfect, 0 = as bad as the mean)"),
    ("val_objective", pa.float64(), "sum_val |L_sim - L| at (c, d)"),
    ("temperature", pa.float64(), "softmax temperature of the losses"),
    ("path", pa.string(), "'fast' (rank-1 logit updates through pooling + linear head) or 'model' (forward passes)"),
    ("status", pa.string(), "'ok', 'no_explanation', 'dead', 'no_labels' or 'error: ...'"),
])

TOP_IMPACT = _spec("top_impact", "explain-ti", ("layer", "channel", "beta"),
                   "Top Impact TI(beta) of each neuron from its zero-ablation: the share of its total |impact| "
                   "carried by the top beta fraction of probe images by mean activation.", [
    ("layer", pa.string(), "module path"),
    ("channel", pa.int32(), "channel index"),
    ("beta", pa.float64(), "fraction of images (top ceil(beta * n) by activation, ties to the smaller image id)"),
    ("ti", pa.float64(), "sum of |I| over those images / sum over all (null when the total is 0)"),
    ("total_impact", pa.float64(), "sum over all labelled images of |I| = |dAcc - dL| / 2"),
    ("path", pa.string(), "'fast' or 'model'"),
])

TABLES.update({t.name: t for t in (LE_SPLIT, LE_CONCEPTS, EXPLANATIONS, ABLATION_SCORES, TOP_IMPACT)})
# ---- end Linear Explanations -----------------------------------------------------------------------


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
