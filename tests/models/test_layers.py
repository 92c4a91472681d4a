"""Layer discovery on real torchvision architectures (random weights) and tiny models."""

from __future__ import annotations

import pytest
import torch
import torchvision

from neurodis.models.layers import discover_layers, hooked, resolve_layers
from neurodis.models.tiny import tiny_cnn
from neurodis.types import SpecError


def test_resnet18_layers_and_all():
    infos = discover_layers(torchvision.models.resnet18(weights=None).eval(), 224)
    by = {i.path: i for i in infos}
    assert by["layer3"].channels == 256 and by["layer3"].shape == (256, 14, 14)
    assert by["layer4"].channels == 512 and by["layer4"].shape == (512, 7, 7)
    assert by["fc"].shape == (1000,)
    assert [i.path for i in resolve_layers(infos, "all")] == [
        f"layer{a}.{b}" for a in (1, 2, 3, 4) for b in (0, 1)
    ]


def test_vgg_all_is_the_activations_and_vit_has_mlp_neurons():
    vgg = discover_layers(torchvision.models.vgg11(weights=None).eval(), 224)
    chosen = resolve_layers(vgg, "all")
    assert all(i.module_type == "ReLU" for i in chosen) and chosen[0].path == "features.1"
    vit = discover_layers(torchvision.models.vit_b_16(weights=None).eval(), 224)
    by = {i.path: i for i in vit}
    mlp = by["encoder.layers.encoder_layer_11.mlp.1"]
    assert mlp.channels == 3072 and mlp.shape == (197, 3072) and mlp.spatial == (14, 14)
    assert mlp in resolve_layers(vit, "all")


def test_unknown_layer_error_names_closest():
    infos = discover_layers(tiny_cnn(), 32)
    with pytest.raises(SpecError, match=r"'layer3' \(close matches: 'layer2'"):
        resolve_layers(infos, ["layer3"])
    with pytest.raises(SpecError) as err:  # every unknown path is its own problem
        resolve_layers(infos, ["layer3", "layer1", "stemm"], key="explain.layers")
    assert [p.split(" (")[0] for p in err.value.problems] == [
        "explain.layers: unknown module path 'layer3'",
        "explain.layers: unknown module path 'stemm'",
    ]


def test_hooks_removed_even_on_error():
    model = tiny_cnn()
    x = torch.randn(1, 3, 32, 32)
    before = model(x)

    def boom(path, out):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"), hooked(model, ["layer1"], boom):
        model(x)
    assert all(not m._forward_hooks for m in model.modules())
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)


def test_vit_forward_stage_token_reduce(tmp_path):
    from neurodis.config import spec_from_dict
    from neurodis.io.layout import RunLayout
    from neurodis.methods.forward.shards import plan_forward
    from tests.conftest import write_images

    write_images(tmp_path / "p", per_class=1)
    spec = spec_from_dict(
        {
            "model": {"arch": "vit_b_16"},
            "data": {"kind": "imagefolder", "root": str(tmp_path / "p")},
            "layers": ["encoder.layers.encoder_layer_0.mlp.1", "encoder.layers.encoder_layer_11.mlp.1"],
        }
    )
    plan, _ = plan_forward(spec, RunLayout(tmp_path / "r"))
    assert [lp.token_reduce for lp in plan.layers] == ["mean", "cls"]


def test_random_weight_architectures_are_identical_in_driver_and_workers():
    from neurodis.config import ModelConfig
    from neurodis.methods.forward.shards import weights_hash
    from neurodis.models.loading import load_model

    assert weights_hash(load_model(ModelConfig("resnet18"))) == weights_hash(
        load_model(ModelConfig("resnet18"))
    )
