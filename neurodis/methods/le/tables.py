"""Tables of Linear Explanations (namespaces ``le``, ``le-ablation``, ``le-ti``)."""

from __future__ import annotations

import pyarrow as pa

from neurodis.tablespec import table_spec

LE_SPLIT = table_spec(
    "split",
    "le",
    ("image_id",),
    "The probe set's seeded train / val / test split (explain.split, "
    "explain.split_seed), stored once and used by every Linear Explanations step.",
    [
        ("image_id", pa.int64(), "image id (see images)"),
        ("split", pa.string(), "'train', 'val' or 'test'"),
    ],
)

LE_CONCEPTS = table_spec(
    "le_concepts",
    "le",
    ("explainer", "concept"),
    "Each explainer's concept set and the filter: an embedder's concept is kept when the mean of its "
    "top-5 probabilities over the probe set is >= explain.min_top5 and its std >= explain.min_std.",
    [
        ("explainer", pa.string(), "'label', 'annotations' or the embedder name"),
        ("concept", pa.string(), "the concept"),
        ("top5_mean", pa.float64(), "mean of the five largest P(concept | image) over the probe set"),
        ("std", pa.float64(), "standard deviation of P(concept | image) over the probe set"),
        ("kept", pa.bool_(), "used in the explanations"),
    ],
)

EXPLANATIONS = table_spec(
    "explanations",
    "le",
    ("layer", "channel", "explainer"),
    "Per neuron and explainer: the linear explanation (greedy search over the elastic net's ranking) "
    "and its simulation scores.",
    [
        ("layer", pa.string(), "module path"),
        ("channel", pa.int32(), "channel index"),
        ("explainer", pa.string(), "'label', 'annotations' or the embedder name"),
        ("concepts", pa.list_(pa.string()), "selected concepts, in selection order"),
        (
            "weights",
            pa.list_(pa.float64()),
            "least-squares weight of each concept (activation per unit of P)",
        ),
        ("intercept", pa.float64(), "least-squares intercept"),
        ("length", pa.int32(), "number of concepts (0 = no concept beat the tolerance)"),
        (
            "val_corr",
            pa.float64(),
            "Pearson correlation of the explainer's simulation with the neuron on the val split",
        ),
        (
            "test_corr",
            pa.float64(),
            "correlation score: the simulator's simulation vs the neuron on the test split",
        ),
        (
            "simulator",
            pa.string(),
            "the simulator embedder (the explainer itself when explain.simulator is unset)",
        ),
        (
            "explainer_test_corr",
            pa.float64(),
            "the explainer's own simulation vs the neuron on the test split",
        ),
        ("n_concepts", pa.int32(), "concepts available after the filter"),
        (
            "status",
            pa.string(),
            "'ok', 'empty' (nothing correlates by explain.tolerance), 'dead', 'constant' (no variance "
            "on train or val), 'non_finite', 'no_concepts' or 'error: ...'",
        ),
    ],
)

ABLATION_SCORES = table_spec(
    "ablation_scores",
    "le-ablation",
    ("layer", "channel", "explainer", "method"),
    "Per neuron, explainer and scaling method: the neuron replaced by c * s(x) + d; (c, d) fitted "
    "on val, the ablation score alpha on test (temperature-scaled cross-entropy).",
    [
        ("layer", pa.string(), "module path"),
        ("channel", pa.int32(), "channel index"),
        ("explainer", pa.string(), "explainer of the simulated explanation"),
        ("method", pa.string(), "'optim' (Adam on sum_val |L_sim - L|) or 'norm' (closed form)"),
        ("simulator", pa.string(), "embedder that simulated s(x)"),
        ("c", pa.float64(), "scale"),
        ("d", pa.float64(), "offset"),
        (
            "alpha",
            pa.float64(),
            "1 - sum_test |L_sim - L| / sum_test |L_mean - L| (1 = perfect, 0 = as bad as the mean)",
        ),
        ("val_objective", pa.float64(), "sum_val |L_sim - L| at (c, d)"),
        ("temperature", pa.float64(), "softmax temperature of the losses"),
        (
            "path",
            pa.string(),
            "'fast' (rank-1 logit updates through pooling + linear head) or 'model' (forward passes)",
        ),
        ("status", pa.string(), "'ok', 'no_explanation', 'dead', 'no_labels' or 'error: ...'"),
        (
            "sample_interval",
            pa.int32(),
            "every how many channels of the layer one is scored (channels 0, i, 2i, ...; "
            "explain.ablation_neurons); 1 = every neuron",
        ),
        (
            "alpha_low",
            pa.float64(),
            "95 % percentile-bootstrap interval of alpha over the test images (200 resamples, c and d fixed)",
        ),
        ("alpha_high", pa.float64(), "upper end of that interval"),
        ("val_images", pa.int32(), "val images c and d were fitted on (explain.ablation_images caps it)"),
        ("test_images", pa.int32(), "test images alpha was computed on (explain.ablation_images caps it)"),
    ],
)

TOP_IMPACT = table_spec(
    "top_impact",
    "le-ti",
    ("layer", "channel", "beta"),
    "Top Impact TI(beta) of each neuron from its zero-ablation: the share of its total |impact| "
    "carried by the top beta fraction of probe images by mean activation.",
    [
        ("layer", pa.string(), "module path"),
        ("channel", pa.int32(), "channel index"),
        (
            "beta",
            pa.float64(),
            "fraction of images (top ceil(beta * n) by activation, ties to the smaller image id)",
        ),
        ("ti", pa.float64(), "sum of |I| over those images / sum over all (null when the total is 0)"),
        ("total_impact", pa.float64(), "sum over the labelled images of |I| = |dAcc - dL| / 2"),
        ("path", pa.string(), "'fast' or 'model'"),
        ("sample_interval", pa.int32(), "as in ablation_scores: 1 = every neuron of the layer"),
        ("images", pa.int32(), "labelled images the impacts are over (explain.ablation_images caps it)"),
    ],
)

TABLES = (LE_SPLIT, LE_CONCEPTS, EXPLANATIONS, ABLATION_SCORES, TOP_IMPACT)
