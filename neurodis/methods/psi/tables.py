"""Tables of PSI (namespace ``psi``)."""

from __future__ import annotations

import pyarrow as pa

from neurodis.tablespec import F32_VEC, I32_VEC, table_spec

_PSI_COLUMNS: list[tuple[str, pa.DataType, str]] = [
    ("layer", pa.string(), "module path"),
    ("channel", pa.int32(), "channel index (null-neuron index in psi_nulls)"),
    ("embedder", pa.string(), "embedder of the patches and concepts"),
    ("n_sites", pa.int32(), "patches used (psi.top_k unless the probe set is smaller)"),
    ("S", pa.float64(), "max(0, best mean cosine silhouette of k-means over psi.k_range)"),
    (
        "Q",
        pa.float64(),
        "NMI of the best partition with the source images' class labels; null without labels",
    ),
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
    (
        "log_psi_ci_low",
        pa.float64(),
        "2.5 % percentile of log PSI over psi.n_boot resamples of the sites, each calibrated against the "
        "neuron's null above; null when psi.n_boot is 0, for unscored and for null neurons",
    ),
    ("log_psi_ci_high", pa.float64(), "97.5 % percentile of the resampled log PSI"),
    ("psi_ci_low", pa.float64(), "exp(log_psi_ci_low)"),
    ("psi_ci_high", pa.float64(), "exp(log_psi_ci_high)"),
    ("n_boot", pa.int32(), "bootstrap resamples behind the interval (null without one)"),
    ("k_hat", pa.int32(), "cluster count of the best partition"),
    ("silhouettes", F32_VEC, "observed silhouette for each K' in psi.k_range"),
    ("partition", I32_VEC, "cluster of each site under the best partition (order of site_image_ids)"),
    ("site_image_ids", pa.list_(pa.int64()), "source image of each site, in reference-rank order"),
    (
        "status",
        pa.string(),
        "'ok', 'no_labels' (Q absent, psi from S and D), 'dead', 'too_few_sites', "
        "'no_patches' or 'error: ...'",
    ),
    ("flags", pa.string(), "comma-separated notes, e.g. 'zero_spread:Q' (a null with no spread: z set to 0)"),
]

PSI = table_spec(
    "psi",
    "psi",
    ("layer", "channel"),
    "Per neuron: PSI's raw components, their null calibration, PSI and log PSI, the best partition.",
    _PSI_COLUMNS,
)

PSI_NULLS = table_spec(
    "psi_nulls",
    "psi",
    ("layer", "channel"),
    "Null neurons (random probe sites), scored exactly like real neurons; the reference of psi_layers.",
    _PSI_COLUMNS,
)

PSI_LAYERS = table_spec(
    "psi_layers",
    "psi",
    ("layer",),
    "Per layer: how well PSI and each calibrated component "
    "separate real neurons from null neurons, and the null's log-PSI centre.",
    [
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
    ],
)

PSI_DEPTH = table_spec(
    "psi_depth",
    "psi",
    ("layer_a", "layer_b"),
    "Depth comparison: two-sample Kolmogorov-Smirnov "
    "test of log PSI between each pair of layers (layer_a earlier).",
    [
        ("layer_a", pa.string(), "earlier layer"),
        ("layer_b", pa.string(), "later layer"),
        ("n_a", pa.int32(), "neurons of layer_a"),
        ("n_b", pa.int32(), "neurons of layer_b"),
        ("median_log_psi_a", pa.float64(), "median log PSI of layer_a"),
        ("median_log_psi_b", pa.float64(), "median log PSI of layer_b"),
        ("ks_statistic", pa.float64(), "KS statistic"),
        ("ks_pvalue", pa.float64(), "two-sided p value"),
    ],
)

TABLES = (PSI, PSI_NULLS, PSI_LAYERS, PSI_DEPTH)
