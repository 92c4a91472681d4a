"""Patch-swap kernels against hand-built arrays, hand-derived p-values and a handmade neuron."""

from __future__ import annotations

import math

import numpy as np
import pytest

from neurodis.kernels.patch_swap import (
    CONDITIONS,
    clip_box,
    elsewhere_box,
    fill,
    holm,
    normalised_delta,
    paired_summary,
    paste,
    paste_aligned,
    plan_interventions,
)


def _image(h: int = 8, w: int = 10) -> np.ndarray:
    return (np.arange(h * w * 3, dtype=np.int64).reshape(h, w, 3) % 251).astype(np.uint8)


def _overlaps(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


# ---- boxes, paste, fill ------------------------------------------------------------------------------


def test_clip_box_clamps_and_rejects_boxes_outside():
    assert clip_box((-3, 2, 5, 20), 10, 8) == (0, 2, 5, 8)
    assert clip_box((1, 1, 3, 3), 10, 8) == (1, 1, 3, 3)
    with pytest.raises(ValueError, match="outside"):
        clip_box((10, 0, 12, 4), 10, 8)
    with pytest.raises(ValueError, match="empty"):
        clip_box((3, 3, 3, 5), 10, 8)


def test_paste_same_size_patch_is_an_exact_copy_and_leaves_input_untouched():
    img = _image()
    before = img.copy()
    patch = np.full((3, 4, 3), 7, np.uint8)
    patch[0, 0] = (1, 2, 3)
    patch[2, 3] = (200, 100, 50)
    out = paste(img, (2, 1, 6, 4), patch)  # 4 wide, 3 tall
    expected = before.copy()
    expected[1:4, 2:6] = patch
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(img, before)


def test_paste_constant_patch_resized_fills_box_exactly():
    img = _image()
    out = paste(img, (1, 2, 7, 6), np.full((2, 3, 3), (9, 99, 199), np.uint8))  # upscaled to 6x4
    expected = img.copy()
    expected[2:6, 1:7] = (9, 99, 199)
    np.testing.assert_array_equal(out, expected)


def test_paste_resize_keeps_orientation_and_corners():
    # left column red, right column blue; upscaled 2x2 -> 4 tall x 6 wide: edge columns keep their colour,
    # the inside lies between them (a transposed or flipped resize would fail)
    patch = np.zeros((2, 2, 3), np.uint8)
    patch[:, 0] = (240, 0, 0)
    patch[:, 1] = (0, 0, 240)
    out = paste(np.zeros((6, 8, 3), np.uint8), (1, 1, 7, 5), patch)
    box = out[1:5, 1:7].astype(int)
    assert (box[:, 0] == (240, 0, 0)).all() and (box[:, -1] == (0, 0, 240)).all()
    assert (np.diff(box[..., 0], axis=1) <= 0).all() and (np.diff(box[..., 2], axis=1) >= 0).all()
    assert (box[..., 1] == 0).all() and (box == box[:1]).all()  # every row identical
    outside = out.copy()
    outside[1:5, 1:7] = 0
    assert not outside.any()


def test_paste_box_past_the_border_writes_only_the_inside_part():
    img = np.zeros((4, 4, 3), np.uint8)
    patch = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    out = paste(img, (-2, -1, 2, 3), patch)  # same size as the patch: no resize
    expected = np.zeros_like(img)
    expected[0:3, 0:2] = patch[1:4, 2:4]
    np.testing.assert_array_equal(out, expected)


def test_paste_rejects_non_uint8():
    with pytest.raises(ValueError, match="uint8"):
        paste(np.zeros((4, 4, 3), np.float32), (0, 0, 2, 2), np.zeros((2, 2, 3), np.uint8))


def test_fill_sets_the_box_rounds_and_clips():
    img = _image()
    out = fill(img, (8, 6, 12, 12), (127.6, 0, 255))
    expected = img.copy()
    expected[6:8, 8:10] = (128, 0, 255)
    np.testing.assert_array_equal(out, expected)
    with pytest.raises(ValueError, match="RGB triple"):
        fill(img, (0, 0, 2, 2), (300, 0, 0))
    with pytest.raises(ValueError, match="RGB triple"):
        fill(img, (0, 0, 2, 2), (1, 2))


# ---- elsewhere box -------------------------------------------------------------------------------------


def test_elsewhere_box_same_size_inside_and_never_overlapping():
    box = (3, 2, 7, 5)
    seen = set()
    for s in range(200):
        e = elsewhere_box(box, 12, 9, np.random.default_rng(s))
        assert e is not None
        assert (e[2] - e[0], e[3] - e[1]) == (4, 3)
        assert 0 <= e[0] and 0 <= e[1] and e[2] <= 12 and e[3] <= 9
        assert not _overlaps(e, box)
        seen.add(e)
    assert len(seen) > 10


def test_elsewhere_box_none_when_impossible_and_forced_when_unique():
    rng = np.random.default_rng(0)
    assert elsewhere_box((0, 0, 10, 8), 10, 8, rng) is None  # the whole image
    assert elsewhere_box((3, 3, 8, 8), 10, 10, rng) is None  # > half of both sides, central
    assert elsewhere_box((0, 0, 5, 10), 10, 10, rng) == (5, 0, 10, 10)  # exactly one place
    with pytest.raises(ValueError, match="clip_box"):
        elsewhere_box((-1, 0, 3, 3), 10, 10, rng)


# ---- planning ------------------------------------------------------------------------------------------

W = H = 16
SITES = [
    ("a", (0, 0, 4, 4)),  # 0: cluster 0
    ("b", (0, 0, 4, 4)),  # 1: cluster 0
    ("a", (8, 8, 12, 12)),  # 2: cluster 0, same image as site 0
    ("c", (2, 2, 6, 6)),  # 3: cluster 1, singleton
    ("d", (0, 0, 16, 16)),  # 4: cluster 2, singleton, whole-image box
]
PARTITION = [0, 0, 0, 1, 2]
POOL = [("p", (0, 0, 4, 4)), ("q", (1, 1, 5, 5)), ("a", (4, 0, 8, 4))]


def _by(plan, target_index):
    rows = plan[5 * target_index : 5 * target_index + 5]
    assert [r.condition for r in rows] == list(CONDITIONS)
    assert all(
        r.target_image == SITES[target_index][0] and r.target_box == SITES[target_index][1] for r in rows
    )
    return {r.condition: r for r in rows}


def test_plan_statuses_and_donor_clusters_on_a_handmade_neuron():
    for seed in range(10):
        plan = plan_interventions(SITES, PARTITION, POOL, (W, H), seed)
        assert len(plan) == 5 * len(SITES)
        t0 = _by(plan, 0)
        # the only aligned donor not on image "a" is site 1
        assert (t0["aligned"].donor_image, t0["aligned"].donor_box) == SITES[1]
        assert t0["aligned"].paste_box == SITES[0][1] and t0["aligned"].status == "ok"
        assert (t0["non_aligned"].donor_image, t0["non_aligned"].donor_box) in (SITES[3], SITES[4])
        assert (t0["random"].donor_image, t0["random"].donor_box) in POOL[:2]  # never image "a"
        sh, ab = t0["shuffled_position"], t0["ablate_elsewhere"]
        assert sh.status == ab.status == "ok"
        assert (sh.donor_image, sh.donor_box) == SITES[1]
        assert sh.paste_box == ab.paste_box and not _overlaps(sh.paste_box, SITES[0][1])
        assert ab.donor_image is None and ab.donor_box is None

        t1 = _by(plan, 1)
        assert (t1["aligned"].donor_image, t1["aligned"].donor_box) in (SITES[0], SITES[2])
        assert (t1["non_aligned"].donor_image, t1["non_aligned"].donor_box) in (SITES[3], SITES[4])

        t3 = _by(plan, 3)  # singleton cluster
        assert t3["aligned"].status == t3["shuffled_position"].status == "no_aligned_donor"
        assert t3["aligned"].donor_image is None and t3["shuffled_position"].paste_box is None
        assert (t3["non_aligned"].donor_image, t3["non_aligned"].donor_box) in SITES[:3] + [SITES[4]]
        assert t3["ablate_elsewhere"].status == "ok"

        t4 = _by(plan, 4)  # singleton, whole-image box
        assert t4["aligned"].status == t4["shuffled_position"].status == "no_aligned_donor"
        assert t4["ablate_elsewhere"].status == "no_room" and t4["ablate_elsewhere"].paste_box is None
        assert (t4["non_aligned"].donor_image, t4["non_aligned"].donor_box) in SITES[:4]


def test_plan_one_cluster_same_image_and_empty_pool():
    sites = [("a", (0, 0, 4, 4)), ("a", (8, 8, 12, 12))]
    plan = plan_interventions(sites, [5, 5], [], (W, H), seed=1)
    rows = {r.condition: r for r in plan[:5]}
    # the only aligned donor is on the target's own image: it is used rather than dropped
    assert (rows["aligned"].donor_image, rows["aligned"].donor_box) == sites[1]
    assert rows["non_aligned"].status == "no_other_cluster" and rows["non_aligned"].donor_box is None
    assert rows["random"].status == "no_pool" and rows["random"].paste_box is None
    # whole-image boxes: no room for the elsewhere conditions
    whole = [("a", (0, 0, W, H)), ("b", (0, 0, W, H))]
    rows = {r.condition: r for r in plan_interventions(whole, [0, 0], POOL, (W, H), seed=0)[:5]}
    assert rows["aligned"].status == "ok"
    assert rows["shuffled_position"].status == rows["ablate_elsewhere"].status == "no_room"


def test_plan_is_deterministic_and_the_seed_matters():
    many = [(f"img{i}", (0, 0, 4, 4)) for i in range(12)]
    part = [i % 2 for i in range(12)]
    pool = [(f"pool{i}", (0, 0, 4, 4)) for i in range(12)]
    first = plan_interventions(many, part, pool, (W, H), seed=3)
    assert first == plan_interventions(many, part, pool, (W, H), seed=3)
    for other_seed in (4, 5):
        other = plan_interventions(many, part, pool, (W, H), seed=other_seed)
        assert [(r.donor_image, r.paste_box) for r in other] != [(r.donor_image, r.paste_box) for r in first]
    assert len(plan_interventions(many, part, pool, (W, H), seed=3, max_targets=2)) == 10
    assert plan_interventions(many, part, pool, (W, H), seed=3, max_targets=2) == first[:10]


def test_plan_rejects_bad_input():
    with pytest.raises(ValueError, match="one cluster label per site"):
        plan_interventions(SITES, [0, 1], POOL, (W, H), 0)
    with pytest.raises(ValueError, match="remove it from the pool"):
        plan_interventions(SITES, PARTITION, [SITES[2]], (W, H), 0)
    with pytest.raises(ValueError, match="clip_box"):
        plan_interventions([("a", (10, 10, 20, 20))], [0], POOL, (W, H), 0)
    with pytest.raises(ValueError, match="max_targets"):
        plan_interventions(SITES, PARTITION, POOL, (W, H), 0, max_targets=0)


# ---- statistics ----------------------------------------------------------------------------------------


def test_paired_t_p_matches_closed_form_t_distribution():
    # d = [1, 2, 3]: mean 2, sd 1, t = 2 sqrt(3), df 2; for df 2 the two-sided p is 1 - t / sqrt(2 + t^2)
    r = paired_summary([2.0, 4.0, 6.0], [1.0, 2.0, 3.0])
    t = 2 * math.sqrt(3)
    assert r["n"] == 3 and r["mean_diff"] == pytest.approx(2.0)
    assert r["t"] == pytest.approx(t)
    assert r["t_p"] == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-10)
    # d = [1, 3]: t = 2, df 1 (Cauchy): p = 1 - (2 / pi) atan(2)
    r = paired_summary([1.0, 3.0], [0.0, 0.0])
    assert r["t_p"] == pytest.approx(1 - 2 / math.pi * math.atan(2.0), rel=1e-10)


def test_paired_clear_shift_and_no_shift():
    rng = np.random.default_rng(0)
    control = rng.normal(size=40)
    shifted = paired_summary(control + 1.0 + 0.3 * rng.normal(size=40), control)
    assert shifted["t_p"] < 0.01 and shifted["wilcoxon_p"] < 0.01
    d = np.array([-3.0, -2.0, -1.0, 1.0, 2.0, 3.0])  # symmetric around zero
    null = paired_summary(d, np.zeros(6))
    assert null["mean_diff"] == pytest.approx(0.0) and null["t_p"] > 0.2 and null["wilcoxon_p"] > 0.2


def test_paired_wilcoxon_exact_small_cases():
    # n = 5, all positive: only 1 of the 32 sign patterns is as extreme on each side -> p = 2/32
    r = paired_summary([1.0, 2.0, 3.0, 4.0, 5.0], np.zeros(5))
    assert r["wilcoxon_p"] == pytest.approx(2 / 32)
    # smallest difference negative: W- = 1; sign patterns with W- <= 1 are {} and {1} -> p = 2 * 2/32
    r = paired_summary([-1.0, 2.0, 3.0, 4.0, 5.0], np.zeros(5))
    assert r["wilcoxon_p"] == pytest.approx(4 / 32)


def test_paired_interval_contains_mean_and_edge_cases():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0.5, 1, 30), rng.normal(0, 1, 30)
    r = paired_summary(a, b, n_boot=500, seed=2)
    assert r["ci_low"] < r["mean_diff"] < r["ci_high"]
    assert r["mean_diff"] == pytest.approx(float(np.mean(a - b)))
    # NaN pairs are dropped
    r = paired_summary([1.0, np.nan, 3.0, 5.0], [0.0, 0.0, np.nan, 1.0])
    assert r["n"] == 2 and r["mean_diff"] == pytest.approx(2.5)
    # one pair: no test
    r = paired_summary([2.0], [1.0])
    assert r["n"] == 1 and math.isnan(r["t_p"]) and math.isnan(r["wilcoxon_p"])
    # zero variance of the differences: t undefined
    r = paired_summary([2.0, 3.0, 4.0], [1.0, 2.0, 3.0])
    assert math.isnan(r["t_p"]) and r["mean_diff"] == pytest.approx(1.0)
    # all differences zero: nothing to rank either
    r = paired_summary([1.0, 2.0], [1.0, 2.0])
    assert math.isnan(r["t_p"]) and math.isnan(r["wilcoxon_p"])
    r = paired_summary([], [])
    assert r["n"] == 0 and math.isnan(r["mean_diff"]) and math.isnan(r["ci_low"])
    with pytest.raises(ValueError, match="equal length"):
        paired_summary([1.0, 2.0], [1.0])


def test_normalised_delta():
    assert float(normalised_delta(1.0, 4.0, 0.0, 6.0)) == pytest.approx(0.5)
    assert float(normalised_delta(4.0, 1.0, -2.0, 4.0)) == pytest.approx(-0.5)
    out = normalised_delta(
        np.array([0.0, 1.0]), np.array([1.0, 1.0]), np.array([0.0, 2.0]), np.array([2.0, 2.0])
    )
    assert out[0] == pytest.approx(0.5) and np.isnan(out[1])  # zero range -> NaN
    assert np.isnan(normalised_delta(1.0, 1.0, 3.0, 3.0))
    with pytest.raises(ValueError, match="low <= high"):
        normalised_delta(0.0, 1.0, 2.0, 1.0)


def test_plan_with_images_of_different_sizes():
    # target "big" is 40x30; its site box sits in the left half, so the elsewhere box must be drawn in
    # the big image (a 10x10 image has no room for it) and donors keep their own images' boxes
    sites = [("big", (0, 0, 12, 12)), ("small", (0, 0, 10, 10))]
    sizes = {"big": (40, 30), "small": (10, 10)}
    for seed in range(5):
        rows = {r.condition: r for r in plan_interventions(sites, [0, 0], [], sizes, seed)[:5]}
        assert rows["aligned"].donor_box == (0, 0, 10, 10)
        x0, y0, x1, y1 = rows["ablate_elsewhere"].paste_box
        assert (x1 - x0, y1 - y0) == (12, 12) and x1 <= 40 and y1 <= 30 and (x0 >= 12 or y0 >= 12)
        # the small target's box is its whole image: nowhere else to paste
        small = {r.condition: r for r in plan_interventions(sites, [0, 0], [], sizes, seed)[5:]}
        assert small["shuffled_position"].status == "no_room"
    with pytest.raises(ValueError, match="no size for image"):
        plan_interventions(sites, [0, 0], [], {"big": (40, 30)}, 0)
    with pytest.raises(ValueError, match="clip_box"):
        plan_interventions([("small", (0, 0, 12, 12))], [0], [], sizes, 0)


def test_paste_aligned_puts_centre_on_centre():
    donor = np.zeros((10, 10, 3), np.uint8)
    donor[4:6, 4:6] = 255  # a bright 2x2 object at the centre of the donor square (0..10)
    target = np.full((12, 12, 3), 7, np.uint8)
    # the target square reaches past the top-left border: only its inside part is written, and the
    # object lands at the square's centre (target pixels 1..3), not at the clipped box's centre
    out = paste_aligned(target, (-4, -4, 6, 6), donor, (0, 0, 10, 10))
    assert (out[0:2, 0:2] == 255).all() and out[2:6, 2:6].max() == 0 and (out[6:, :] == 7).all()
    # a donor square past the donor's border: the target keeps its own pixels where the donor has none
    out = paste_aligned(target, (2, 2, 12, 12), donor, (-5, 0, 5, 10))
    # (donor columns 0..5 land on target columns 7..12; its object's columns 4, 5 on 11 and the border)
    assert (out[2:12, 2:7] == 7).all() and out[2:12, 7:11].max() == 0 and (out[6:8, 11] == 255).all()
    # a square twice the donor's size: resized
    out = paste_aligned(np.zeros((20, 20, 3), np.uint8), (0, 0, 20, 20), donor, (0, 0, 10, 10))
    assert out[9:11, 9:11].min() > 150 and out[:6].max() == 0 and out[:, :6].max() == 0  # bilinear edges


def test_holm_by_hand():
    got = holm([0.01, 0.04, np.nan, 0.03])
    # ascending 0.01, 0.03, 0.04 with m = 3: 0.03, 0.06, max(0.06, 0.04) = 0.06
    np.testing.assert_allclose(got, [0.03, 0.06, np.nan, 0.06])
    assert np.isnan(holm([np.nan])).all() and list(holm([0.9, 0.8])) == [1.0, 1.0]


def test_site_values_reads_each_rows_channel_and_site():
    import torch

    from neurodis.kernels.summaries import site_values

    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    got = site_values(x, torch.tensor([2, 0]), torch.tensor([1, 3]), torch.tensor([4, 0]))
    assert got.tolist() == [x[0, 2, 1, 4].item(), x[1, 0, 3, 0].item()]
    tokens = torch.randn(2, 1 + 9, 6)  # a class token, then a 3x3 grid
    got = site_values(tokens, torch.tensor([5, 1]), torch.tensor([2, 0]), torch.tensor([1, 2]))
    assert got.tolist() == [tokens[0, 1 + 7, 5].item(), tokens[1, 1 + 2, 1].item()]
    vec = torch.randn(2, 4)
    assert site_values(vec, torch.tensor([3, 1]), torch.zeros(2), torch.zeros(2)).tolist() == [
        vec[0, 3].item(),
        vec[1, 1].item(),
    ]
