"""Tables of the embedding stage (namespaces ``embed-images`` and ``embed``)."""

from __future__ import annotations

import pyarrow as pa

from neurodis.tablespec import F32_VEC, I32_VEC, table_spec

IMAGE_EMBEDDINGS = table_spec(
    "image_embeddings",
    "embed-images",
    ("embedder", "image_id"),
    "Whole probe images embedded once per probe set and embedder (their config hash covers "
    "only the embedder and the probe set's fingerprint: cache_dir shares them across audits).",
    [
        ("embedder", pa.string(), "embedder name (embed.embedder)"),
        ("image_id", pa.int64(), "image id (see images)"),
        ("vector", F32_VEC, "unit-norm image embedding"),
    ],
)

EMBED_CALIBRATION = table_spec(
    "embed_calibration",
    "embed",
    ("embedder",),
    "Sigmoid calibration of concept probabilities P = sigmoid(a*cos + a*b) for an embedder "
    "on a probe set: fitted by binary cross-entropy against the labels, or fixed in the spec.",
    [
        ("embedder", pa.string(), "embedder name"),
        ("a", pa.float64(), "slope"),
        ("b", pa.float64(), "offset (in cosine units)"),
        ("source", pa.string(), "'fitted' or 'fixed'"),
        ("n_images", pa.int64(), "images used in the fit (0 when fixed)"),
        ("n_concepts", pa.int64(), "label concepts (classes + superclasses) used in the fit"),
        ("bce", pa.float64(), "mean binary cross-entropy at (a, b) on the fitting pairs (null when fixed)"),
    ],
)

CONCEPT_EMBEDDINGS = table_spec(
    "concept_embeddings",
    "embed",
    ("embedder", "concept_set", "concept"),
    "One vector per concept: the renormalised mean of its template prompts' embeddings. "
    "concept_set 'labels' holds the probe set's class and superclass names.",
    [
        ("embedder", pa.string(), "embedder name"),
        ("concept_set", pa.string(), "concept set name (embed.concepts file stem, or 'labels')"),
        ("concept", pa.string(), "the concept as written in the set"),
        ("n_templates", pa.int32(), "templates averaged"),
        ("vector", F32_VEC, "unit-norm concept embedding"),
    ],
)

PROMPT_EMBEDDINGS = table_spec(
    "prompt_embeddings",
    "embed",
    ("embedder", "concept_set", "concept", "template"),
    "Every prompt (concept x template) embedded on its own.",
    [
        ("embedder", pa.string(), "embedder name"),
        ("concept_set", pa.string(), "concept set name"),
        ("concept", pa.string(), "concept"),
        ("template", pa.int32(), "template index in embed.templates (or the embedder's defaults)"),
        ("prompt", pa.string(), "the text embedded"),
        ("vector", F32_VEC, "unit-norm text embedding"),
    ],
)

CROP_EMBEDDINGS = table_spec(
    "crop_embeddings",
    "embed",
    ("embedder", "layer", "channel", "crop", "image_id"),
    "Embedded image crops per neuron: 'psi' = receptive-field patches around each of the "
    "neuron's top psi.top_k sites; 'psi_null' = random probe sites of the layer's null "
    "neurons (channel = null-neuron index).",
    [
        ("embedder", pa.string(), "embedder name"),
        ("layer", pa.string(), "module path"),
        ("channel", pa.int32(), "channel index (null-neuron index for 'psi_null')"),
        ("crop", pa.string(), "'psi' or 'psi_null'"),
        ("image_id", pa.int64(), "source image id"),
        ("rank", pa.int32(), "reference rank of the site (draw order for null neurons)"),
        ("h", pa.int32(), "row of the site in the layer's activation map"),
        ("w", pa.int32(), "column of the site"),
        ("box", I32_VEC, "x0, y0, x1, y1 with exclusive ends, in pixels of the original (decoded) image"),
        ("vector", F32_VEC, "unit-norm crop embedding"),
    ],
)

TABLES = (IMAGE_EMBEDDINGS, EMBED_CALIBRATION, CONCEPT_EMBEDDINGS, PROMPT_EMBEDDINGS, CROP_EMBEDDINGS)
