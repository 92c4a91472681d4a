"""Tables of the patch-swap method (namespace ``patch_swap``)."""

from __future__ import annotations

import pyarrow as pa

from neurodis.tablespec import I32_VEC, table_spec

PATCH_SWAPS = table_spec(
    "patch_swaps",
    "patch_swap",
    ("layer", "channel", "rank", "condition"),
    "One row per intervention: a neuron's top site (its reference rank), a condition, the donor patch "
    "and where it was pasted, and the neuron's activation at the site before and after.",
    [
        ("layer", pa.string(), "module path"),
        ("channel", pa.int32(), "channel index"),
        ("rank", pa.int32(), "reference rank of the target site"),
        ("image_id", pa.int64(), "image of the target site"),
        ("site_h", pa.int32(), "row of the site in the layer's activation map"),
        ("site_w", pa.int32(), "column of the site"),
        ("cluster", pa.int32(), "the target site's cluster (PSI prototype or PURE virtual neuron)"),
        (
            "condition",
            pa.string(),
            "'aligned', 'non_aligned', 'random', 'shuffled_position' or 'ablate_elsewhere'",
        ),
        (
            "status",
            pa.string(),
            "'ok'; 'no_aligned_donor' (the site's cluster has no other site), 'no_other_cluster' (one "
            "cluster), 'no_room' (no same-size box elsewhere in the image), 'no_pool'; or 'error: ...'",
        ),
        ("target_box", I32_VEC, "x0, y0, x1, y1 (exclusive ends) of the site's patch, original-image pixels"),
        ("donor_image_id", pa.int64(), "image the pasted patch comes from (null for ablate_elsewhere)"),
        ("donor_box", I32_VEC, "the donor patch's box in its own image (null for ablate_elsewhere)"),
        ("paste_box", I32_VEC, "where the patch or fill went: the target box, or a box elsewhere"),
        ("before", pa.float64(), "the neuron's activation at the site on the unmodified image"),
        ("after", pa.float64(), "the activation at the site on the modified image (null unless ok)"),
        ("delta", pa.float64(), "after - before"),
        (
            "delta_norm",
            pa.float64(),
            "delta / (the neuron's max - its mean over the probe set): the change on the neuron's range",
        ),
    ],
)

_TESTS = [
    ("diff", pa.float64(), "mean of aligned minus this condition over the pairs (null for aligned)"),
    ("diff_ci_low", pa.float64(), "2.5 % bootstrap percentile of diff"),
    ("diff_ci_high", pa.float64(), "97.5 % bootstrap percentile of diff"),
    ("t_p", pa.float64(), "paired t-test p value of aligned vs this condition, two-sided"),
    ("wilcoxon_p", pa.float64(), "Wilcoxon signed-rank p value, two-sided (zero differences dropped)"),
    ("p_holm", pa.float64(), "t_p after Holm's correction over the four controls of this neuron or layer"),
]

PATCH_SWAP_SUMMARY = table_spec(
    "patch_swap_summary",
    "patch_swap",
    ("scope", "layer", "channel", "condition"),
    "Per neuron (scope 'neuron': pairs are the neuron's target sites) and per layer (scope 'layer', "
    "channel -1: pairs are neurons, each the mean over its targets): mean normalised change per condition "
    "with a bootstrap interval, and aligned against each control.",
    [
        ("scope", pa.string(), "'neuron' or 'layer'"),
        ("layer", pa.string(), "module path"),
        ("channel", pa.int32(), "channel index; -1 on layer rows"),
        ("condition", pa.string(), "the condition"),
        (
            "status",
            pa.string(),
            "neuron rows: the neuron's status ('ok', 'one_cluster', 'dead', 'not_scored', "
            "'too_few_sites', 'not_selected' or 'error: ...'); layer rows: 'ok' or 'no_pairs'",
        ),
        ("n", pa.int32(), "values behind mean_delta_norm (targets on neuron rows, neurons on layer rows)"),
        ("n_missing", pa.int32(), "targets (neurons) where this condition could not be made"),
        ("n_pairs", pa.int32(), "pairs behind the comparison with aligned"),
        ("mean_delta", pa.float64(), "mean activation change"),
        ("mean_delta_norm", pa.float64(), "mean normalised change"),
        ("ci_low", pa.float64(), "2.5 % bootstrap percentile of mean_delta_norm"),
        ("ci_high", pa.float64(), "97.5 % bootstrap percentile of mean_delta_norm"),
        *_TESTS,
    ],
)

TABLES = (PATCH_SWAPS, PATCH_SWAP_SUMMARY)
