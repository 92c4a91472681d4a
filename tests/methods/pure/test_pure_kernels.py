"""PURE kernels against independent oracles: full-model autograd, zennit on truncated models,
relevance conservation, hand-derived crop boxes, brute-force distances."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from zennit.layer import Sum

from neurodis.kernels.attribution import input_relevance, l1_normalise, partial_attribution
from neurodis.kernels.clustering import (
    evaluate_neuron,
    intra_inter,
    kmeans,
    mean_and_se,
    overall_distance,
    pairwise_distances,
)
from neurodis.kernels.crops import Box, crop_boxes, mask_outside, normalise, smooth, square_box
from neurodis.models.layers import discover_layers
from neurodis.models.lrp import lrp
from neurodis.models.subnet import SubNetwork, capture, default_lower_layer, module_chain, run_until
from neurodis.models.tiny import TinyCNN
from tests.reference import pure_oracle


class SumBlock(nn.Module):
    """Residual block with the sum as a zennit ``Sum`` module (visible to LRP), optionally bias-free."""

    def __init__(self, cin: int, cout: int, stride: int, bias: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=bias)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=bias)
        self.shortcut = (
            nn.Identity() if (stride == 1 and cin == cout) else nn.Conv2d(cin, cout, 1, stride, bias=bias)
        )
        self.add = Sum(dim=-1)
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu2(
            self.add(torch.stack([self.conv2(self.relu1(self.conv1(x))), self.shortcut(x)], dim=-1))
        )


class SumNet(nn.Module):
    def __init__(self, bias: bool = False, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, 1, 1, bias=bias), nn.ReLU())
        self.layer1 = nn.Sequential(SumBlock(6, 6, 1, bias), SumBlock(6, 6, 1, bias))
        self.layer2 = nn.Sequential(SumBlock(6, 8, 2, bias))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3, bias=bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer2(self.layer1(self.stem(x))))


def _tiny() -> TinyCNN:
    return TinyCNN().double().eval()


def _x(n: int, size: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _attr(model, lower, layer, x, img, ch, start="all", force_hooked=False):
    sub = SubNetwork(model, lower, layer, x[:2])
    if force_hooked:
        sub.chain = None
    a = capture(model, x, lower)
    idx = torch.as_tensor(img)
    xr = x[idx] if sub.mode == "hooked" else None
    raw = partial_attribution(lambda t: sub(t, xr), a[idx], torch.as_tensor(ch), start)
    return l1_normalise(raw)[0].numpy(), sub


@pytest.mark.parametrize("start", ["all", "argmax"])
@pytest.mark.parametrize("force_hooked", [False, True])
def test_default_attribution_equals_full_model_autograd(start, force_hooked):
    model, x = _tiny(), _x(3)
    img, ch = [0, 1, 2, 0, 2], [1, 5, 1, 15, 0]
    got, sub = _attr(model, "layer1", "layer2", x, img, ch, start, force_hooked)
    assert sub.mode == ("hooked" if force_hooked else "chain")
    for r, (i, c) in enumerate(zip(img, ch)):
        want = pure_oracle.attribution(model, x[i], "layer1", "layer2", c, start)
        np.testing.assert_allclose(got[r], want, rtol=1e-9, atol=1e-12)
    assert np.allclose(np.abs(got).sum(1), 1.0)


def test_non_chain_sub_network_falls_back_to_hooks_and_stays_exact():
    model, x = _tiny(), _x(2)
    # TinyCNN.forward flattens between pool and fc: the chain [fc] fails verification
    assert module_chain(model, "pool", "fc") is not None
    got, sub = _attr(model, "pool", "fc", x, [0, 1], [2, 4])
    assert sub.mode == "hooked"
    for r, (i, c) in enumerate([(0, 2), (1, 4)]):
        np.testing.assert_allclose(
            got[r], pure_oracle.attribution(model, x[i], "pool", "fc", c), rtol=1e-9, atol=1e-12
        )


def test_batched_many_neurons_equal_one_at_a_time():
    model, x = _tiny(), _x(4)
    rng = np.random.default_rng(0)
    img, ch = rng.integers(0, 4, 24).tolist(), rng.integers(0, 16, 24).tolist()
    batched, _ = _attr(model, "layer1", "layer2", x, img, ch)
    for r in range(len(img)):
        single, _ = _attr(model, "layer1", "layer2", x, [img[r]], [ch[r]])
        np.testing.assert_allclose(batched[r], single[0], rtol=0, atol=1e-12)


def test_zero_attribution_rows_stay_zero():
    vec, l1 = l1_normalise(torch.tensor([[0.0, 0.0], [1.0, -3.0]]))
    assert vec[0].tolist() == [0.0, 0.0] and l1[0] == 0
    np.testing.assert_allclose(vec[1].numpy(), [0.25, -0.75])


def test_relevance_is_conserved_on_a_bias_free_residual_net():
    model = SumNet(bias=False).double().eval()
    x = _x(3, 12).abs()
    sub = SubNetwork(model, "layer1", "layer2", x[:2])
    a = capture(model, x, "layer1")
    out = capture(model, x, "layer2")
    idx = torch.tensor([0, 1, 2, 1])
    ch = out[idx].flatten(2).amax(dim=2).argsort(dim=1, descending=True)[:, 0]  # channels that fire
    with lrp(sub.module(), "epsilon_plus"):
        raw = partial_attribution(lambda t: sub(t), a[idx], ch, "all", multiply_by_input=False)
    seeded = out[idx, ch].clamp(min=0)
    assert (seeded.sum(dim=(1, 2)) > 0).all()
    np.testing.assert_allclose(raw.sum(dim=1).numpy(), seeded.sum(dim=(1, 2)).numpy(), rtol=1e-4)
    # the default rule (gradient x activation) on a bias-free ReLU net is LRP-0 from A_c**2: it conserves sum
    # A_c**2
    raw0 = partial_attribution(lambda t: sub(t), a[idx], ch, "all")
    np.testing.assert_allclose(raw0.sum(dim=1).numpy(), (seeded**2).sum(dim=(1, 2)).numpy(), rtol=1e-9)


def _snapshot(model: nn.Module):
    return (
        {k: v.detach().clone() for k, v in model.state_dict().items()},
        [p.requires_grad for p in model.parameters()],
        {id(m): type(m).forward for m in model.modules()},
    )


def _assert_restored(model: nn.Module, snap, x: torch.Tensor, before: torch.Tensor):
    state, flags, _ = snap
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert [p.requires_grad for p in model.parameters()] == flags
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks, type(m).__name__
        assert "forward" not in vars(m), f"{type(m).__name__}.forward still overloaded"
    with torch.no_grad():
        assert torch.equal(model(x), before)


def test_model_restored_after_every_hook_and_composite():
    import torchvision

    model = torchvision.models.resnet18(weights=None).double().eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, so a missed un-merge would show
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    x = _x(2, 64)
    with torch.no_grad():
        before = model(x)
    snap = _snapshot(model)
    sub = SubNetwork(model, "layer3", "layer4", x)
    a = capture(model, x, "layer3")
    ch = torch.tensor([3, 100])
    partial_attribution(lambda t: sub(t), a, ch)
    with lrp(sub.module(), "epsilon_plus"):
        partial_attribution(lambda t: sub(t), a, ch, multiply_by_input=False)
    with lrp(model, "epsilon_plus_flat"):
        input_relevance(lambda t: run_until(model, t, "layer2"), x, ch % 128, torch.tensor([0, 5]))
    with pytest.raises(RuntimeError):
        with lrp(model, "epsilon_plus"):
            raise RuntimeError("boom")
    _assert_restored(model, snap, x, before)


@pytest.mark.parametrize("kind", ["sumnet", "resnet18"])
def test_partial_backward_to_input_equals_lrp_on_truncated_model(kind):
    import torchvision
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonPlusFlat
    from zennit.torchvision import ResNetCanonizer

    if kind == "sumnet":
        model, layer, size, canon = SumNet(bias=True).double().eval(), "layer2", 12, []
        truncated = nn.Sequential(model.stem, model.layer1, model.layer2)
    else:
        model, layer, size, canon = (
            torchvision.models.resnet18(weights=None).double().eval(),
            "layer2",
            48,
            None,
        )
        truncated = nn.Sequential(
            model.conv1, model.bn1, model.relu, model.maxpool, model.layer1, model.layer2
        )
    x = _x(2, size)
    out = capture(model, x, layer)
    c = out.flatten(2).amax(dim=2).argmax(dim=1).tolist()  # the most active channel of each image
    flat = out[[0, 1], c].flatten(1).argmax(dim=1)
    with lrp(model, "epsilon_plus_flat", canonizers=canon):
        ours = input_relevance(lambda t: run_until(model, t, layer), x, torch.tensor(c), flat)
    for r in range(2):

        def seed(y: torch.Tensor, r: int = r) -> torch.Tensor:  # from the output under the composite, as ours
            s = torch.zeros_like(y)
            s.view(1, y.shape[1], -1)[0, c[r], flat[r]] = y[0, c[r]].flatten()[flat[r]].clamp(min=0)
            return s

        comp = EpsilonPlusFlat(canonizers=[ResNetCanonizer()] if kind == "resnet18" else [])
        with Gradient(model=truncated, composite=comp) as attributor:
            _, rel = attributor(x[r : r + 1], seed)
        np.testing.assert_allclose(ours[r].numpy(), rel[0].sum(0).numpy(), rtol=1e-7, atol=1e-10)
        assert float(rel.abs().sum()) > 0


def test_module_chains_and_default_lower_layers_of_resnet18():
    import torchvision

    model = torchvision.models.resnet18(weights=None).eval()
    assert module_chain(model, "layer3", "layer4") == [model.layer4]
    assert module_chain(model, "layer4.0", "layer4.1") == [model.layer4[1]]
    assert module_chain(model, "layer3.1", "layer4.0") == [model.layer4[0]]
    assert module_chain(model, "layer4", "layer3") is None
    infos = discover_layers(model, 64)
    assert default_lower_layer(infos, "layer4") == "layer3"
    assert default_lower_layer(infos, "layer4.1") == "layer4.0"
    assert default_lower_layer(infos, "layer4.0") == "layer3"
    assert default_lower_layer(infos, "conv1") is None
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert SubNetwork(model, "layer3", "layer4", x).mode == "chain"
    assert SubNetwork(model, "avgpool", "fc", x).mode == "hooked"  # ResNet.forward flattens in between


def test_default_lower_layers_of_vit_mlp_neurons_are_the_previous_blocks_mlp():
    from neurodis.models.tiny import tiny_vit

    model = tiny_vit().eval()
    infos = discover_layers(model, 32)
    mlp = "encoder.layers.encoder_layer_{}.mlp.1"
    assert default_lower_layer(infos, mlp.format(2)) == mlp.format(1)
    assert default_lower_layer(infos, mlp.format(1)) == mlp.format(0)
    assert default_lower_layer(infos, mlp.format(0)) == "encoder.dropout"  # the embedded tokens
    assert default_lower_layer(infos, "encoder.layers.encoder_layer_2") == "encoder.layers.encoder_layer_1"
    # a module that `layers: all` does not pick keeps the previous-sibling rule
    assert (
        default_lower_layer(infos, "encoder.layers.encoder_layer_2.mlp.3")
        == "encoder.layers.encoder_layer_2.mlp.2"
    )
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert SubNetwork(model, mlp.format(1), mlp.format(2), x).mode == "hooked"  # residual sums in forward


def test_token_seeds_skip_the_class_token():
    from neurodis.kernels.attribution import seeds

    out = torch.rand(2, 5, 3)  # [R, T = 1 + 2 x 2 patch tokens, C]
    out[:, 0] = 10.0  # the class token holds the largest values
    out[1, 3, 2] = 5.0
    g = seeds(out, torch.tensor([0, 2]), "all")
    assert torch.equal(g[0, :, 0], torch.cat([torch.zeros(1), out[0, 1:, 0]]))
    assert torch.equal(g[1, :, 2], torch.cat([torch.zeros(1), out[1, 1:, 2]]))
    assert not g[0, :, 1:].any() and not g[1, :, :2].any()
    g = seeds(out, torch.tensor([0, 2]), "argmax")
    assert g[1].nonzero().tolist() == [[3, 2]] and g[1, 3, 2] == 5.0
    assert g[0].nonzero().tolist() == [[1 + int(out[0, 1:, 0].argmax()), 0]]


# ----------------------------------------------------------------------------------------------
# Crops


def test_smoothing_matches_torchvision_gaussian_blur():
    from torchvision.transforms.functional import gaussian_blur

    heat = torch.rand(2, 40, 36, generator=torch.Generator().manual_seed(0))
    for k in (5, 11):
        want = gaussian_blur(heat[:, None], [k, k])[:, 0]
        torch.testing.assert_close(smooth(heat, k), want, rtol=1e-5, atol=1e-6)


def test_all_zero_heatmap_gives_whole_image_and_no_nan():
    heat = torch.zeros(2, 20, 24)
    assert not torch.isnan(normalise(smooth(heat, 5))).any()
    boxes, empty, mask = crop_boxes(heat, 51, 0.01)
    assert boxes == [Box(0, 0, 24, 20)] * 2 and empty.tolist() == [True, True] and not mask.any()


def test_crop_at_an_edge_site_is_square_and_inside_the_image():
    heat = torch.zeros(1, 32, 32)
    heat[0, 0, 0] = 5.0  # top-left corner: K=5 (sigma 1.1) keeps a 3x3 corner above 1 % of the max
    boxes, empty, _ = crop_boxes(heat, 5, 0.01)
    assert boxes == [Box(0, 0, 3, 3)] and not empty[0]
    heat = torch.zeros(1, 32, 32)
    heat[0, 31, 20:28] = -1.0  # a strip on the bottom edge (sign does not matter)
    (b,), _, _ = crop_boxes(heat, 1, 0.5)
    assert b == Box(20, 24, 28, 32)  # 8 wide, grown to 8 high, shifted up inside the image


def test_square_box_by_hand():
    assert square_box(Box(28, 30, 32, 32), 32, 32) == Box(28, 28, 32, 32)
    assert square_box(Box(10, 10, 12, 20), 32, 32) == Box(6, 10, 16, 20)  # centred on x = 11
    assert square_box(Box(0, 0, 40, 10), 20, 40) == Box(0, 0, 40, 20)  # larger than the image: clamped


def test_mask_outside_darkens_by_the_opacity():
    img = np.full((2, 2, 3), 200, np.uint8)
    mask = np.array([[True, False], [False, True]])
    out = mask_outside(img, mask, 0.4)
    assert out[0, 0].tolist() == [200] * 3 and out[0, 1].tolist() == [120] * 3


# ----------------------------------------------------------------------------------------------
# Clustering and evaluation


def test_intra_inter_match_brute_force():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(9, 4))
    labels = np.array([0, 1, 0, 2, 1, 0, 2, 2, 1])
    d = pairwise_distances(x)
    intra, inter, n_in, n_out = 0.0, 0.0, 0, 0
    for i in range(9):
        for j in range(9):
            dij = math.dist(x[i], x[j])
            if i != j and labels[i] == labels[j]:
                intra, n_in = intra + dij, n_in + 1
            elif labels[i] != labels[j]:
                inter, n_out = inter + dij, n_out + 1
    got = intra_inter(d, labels)
    assert got == pytest.approx((intra / n_in, inter / n_out), rel=1e-12)
    assert overall_distance(d) == pytest.approx((intra + inter) / (81 - 9), rel=1e-12)
    assert math.isnan(intra_inter(d[:2, :2], np.array([0, 1]))[0])  # singletons: no intra pairs


def test_kmeans_statuses_and_planted_blobs():
    assert kmeans(np.ones((5, 3)), 2).status == "degenerate"
    assert kmeans(np.zeros((5, 3)), 2).status == "zero_attribution"
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(0, 0.1, (20, 5)), rng.normal(3, 0.1, (15, 5))])
    res = kmeans(x, 2, seed=0)
    assert res.status == "ok"
    assert (
        len(set(res.labels[:20])) == 1 and len(set(res.labels[20:])) == 1 and res.labels[0] != res.labels[-1]
    )
    assert sorted(np.bincount(res.labels)) == [15, 20]


def test_standard_error_is_std_over_sqrt_n():
    mean, se, n = mean_and_se(np.array([1.0, 2.0, 3.0, 4.0, np.nan]))
    assert (mean, n) == (2.5, 4)
    assert se == pytest.approx(np.std([1, 2, 3, 4], ddof=1) / 2.0)


def test_evaluate_neuron_prefers_features_that_follow_the_embeddings():
    rng = np.random.default_rng(2)
    groups = np.repeat([0, 1], 10)
    emb = np.eye(2)[groups] + rng.normal(0, 0.05, (20, 2))
    good = np.eye(3)[groups] + rng.normal(0, 0.05, (20, 3))
    bad = rng.normal(size=(20, 3))
    res = {(r.method, r.k): r for r in evaluate_neuron({"pure": good, "activation": bad}, emb, (2,))}
    assert res[("pure", 2)].intra < res[("activation", 2)].intra
    assert res[("pure", 2)].inter > res[("pure", 2)].intra
    assert res[("pure", 2)].corr_embedding > 0.9 > res[("activation", 2)].corr_embedding
    assert res[("none", 1)].intra == pytest.approx(res[("none", 1)].overall)
    assert res[("embedding", 2)].status == "ok"
