"""Receptive fields from the gradient probe against hand-derived values, and site -> patch boxes."""

from __future__ import annotations

import pytest
import torch
import torchvision

from neurodis.config import PreprocessConfig
from neurodis.methods.embed.patches import LayerGeometry, null_sites, site_box
from neurodis.models.receptive_field import receptive_field, receptive_fields
from neurodis.models.tiny import tiny_cnn


def test_tiny_cnn_fields_match_hand_derivation():
    # stem 3x3 (3); layer1 = 2 blocks x two 3x3 convs (+2 each: 11); layer2.0.conv1 3x3 stride 2 (13, stride
    # 2);
    # layer2.0.conv2 3x3 at stride 2 (+4: 17). Every conv is padded by 1, so site 0 is centred on pixel 0.
    model = tiny_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    got = receptive_fields(model, ["stem", "layer1.0", "layer1", "layer2.0.conv1", "layer2"], 32)
    assert {k: (v.stride[0], v.size[0]) for k, v in got.items()} == {
        "stem": (1, 3),
        "layer1.0": (1, 7),
        "layer1": (1, 11),
        "layer2.0.conv1": (2, 13),
        "layer2": (2, 17),
    }
    assert all(v.origin == (0.5, 0.5) and not v.whole_image for v in got.values())
    assert receptive_field(model, "fc", 32).whole_image
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is not modified


def test_resnet18_fields_including_one_larger_than_the_input():
    # conv1 7/2 -> 7; maxpool 3/2 -> 11 (stride 4); each 3x3 conv adds 2 * stride: layer1 +4*8 = 43;
    # layer2 +8 +3*16 = 99 (stride 8); layer3 +16 +3*32 = 211 (16); layer4 +32 +3*64 = 435 (32) > 224 px
    got = receptive_fields(
        torchvision.models.resnet18(weights=None).eval(),
        ["layer1", "layer2", "layer3", "layer4"],
        224,
        probes=1,
    )
    assert {k: (v.stride[0], v.size[0]) for k, v in got.items()} == {
        "layer1": (4, 43),
        "layer2": (8, 99),
        "layer3": (16, 211),
        "layer4": (32, 435),
    }


@pytest.mark.slow
def test_resnet50_fields_match_the_known_figures():
    got = receptive_fields(
        torchvision.models.resnet50(weights=None).eval(),
        ["layer1", "layer2", "layer3", "layer4"],
        224,
        probes=1,
    )
    assert {k: (v.stride[0], v.size[0]) for k, v in got.items()} == {
        "layer1": (4, 35),
        "layer2": (8, 91),
        "layer3": (16, 267),
        "layer4": (32, 427),
    }


def _geometry(crop: int, stride: int = 8, origin: float = 3.5, whole: bool = False) -> LayerGeometry:
    return LayerGeometry("l", 4, (28, 28), (stride, stride), (crop, crop), (origin, origin), crop, whole)


def test_site_box_maps_through_resize_and_centre_crop():
    pre = PreprocessConfig(resize=256, crop=224)
    # a 512 x 768 image: shorter side 512 -> 256 (scale 0.5), 384 wide; centre crop offsets top 16, left 80
    g = _geometry(32)
    x0, y0, x1, y1 = site_box(g, 10, 5, (512, 768), pre)
    cy, cx = 3.5 + 8 * 10, 3.5 + 8 * 5  # model-input centre of the site
    assert (y0, y1) == (round((cy - 16 + 16) / 0.5), round((cy - 16 + 16) / 0.5) + 64)
    assert (x0, x1) == (round((cx - 16 + 80) / 0.5), round((cx - 16 + 80) / 0.5) + 64)


def test_site_box_is_shifted_inside_and_clipped_when_larger():
    pre = PreprocessConfig(resize=64, crop=64)
    assert site_box(_geometry(20, origin=0.5), 0, 0, (64, 64), pre) == (
        0,
        0,
        20,
        20,
    )  # shifted, keeps its size
    assert site_box(_geometry(20, origin=0.5), 7, 7, (64, 64), pre) == (44, 44, 64, 64)
    assert site_box(_geometry(200), 3, 3, (64, 64), pre) == (0, 0, 64, 64)  # larger than the image
    assert site_box(_geometry(20, whole=True), 3, 3, (64, 64), pre) == (0, 0, 64, 64)


def test_null_sites_are_per_neuron_deterministic_and_without_repeats():
    a = null_sites(torch.arange(30).numpy(), (4, 5), 3, 10, 0, "layer3")
    b = null_sites(torch.arange(30).numpy(), (4, 5), 5, 10, 0, "layer3")
    for (ia, ha, wa), (ib, _, _) in zip(a, b[:3]):
        assert list(ia) == list(ib) and len(set(ia.tolist())) == 10
        assert ha.max() < 4 and wa.max() < 5
    assert list(a[0][0]) != list(null_sites(torch.arange(30).numpy(), (4, 5), 1, 10, 0, "layer2")[0][0])
