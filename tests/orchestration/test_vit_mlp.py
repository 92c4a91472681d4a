"""Every stage on ViT MLP neurons, end to end on a tiny torchvision VisionTransformer (32-px inputs, 8-px
patches: a 4 x 4 token grid plus the class token; three blocks with 32 MLP neurons each): forward
summaries against hooks on the model, PURE attributions against full-model autograd through the
transformer blocks, PSI patches against the token's own pixels, Top Impact against explicit ablation of
every token; and the shipped ViT-B/16 job spec, which must load and plan on the real architecture."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest
import torch
from PIL import Image

from neurodis.config import ModelConfig, load_spec, spec_from_dict
from neurodis.data.transforms import preprocess
from neurodis.io.layout import RunLayout
from neurodis.io.tables import read_table
from neurodis.methods.pure import query
from neurodis.models.loading import resolve_preprocess
from neurodis.models.tiny import ToyEmbedder, tiny_vit
from neurodis.orchestration.audit import run_audit
from neurodis.orchestration.runners import LocalRunner
from neurodis.types import SpecError
from tests.conftest import write_images
from tests.reference import le_reference, pure_oracle

ROOT = Path(__file__).resolve().parents[2]
CLASSES = ("cat", "dog", "emu", "fox", "gnu")
ARCH = "neurodis.models.tiny:tiny_vit"
MLP = [f"encoder.layers.encoder_layer_{i}.mlp.1" for i in range(3)]
LOWER = {MLP[0]: "encoder.dropout", MLP[1]: MLP[0], MLP[2]: MLP[1]}  # PURE's default lower layers


def make_spec(root: Path, **pure):
    return spec_from_dict(
        {
            "model": {"arch": ARCH},
            "data": {"kind": "imagefolder", "root": str(root / "probe")},
            "layers": MLP,
            "stages": ["forward", "pure", "embed", "psi", "explain"],
            "forward": {"top_k": 8, "shard_size": 16},
            "pure": {"n_ref": 6, "k": [2], "eval_embedder": "toy", "images_per_unit": 12, **pure},
            "embed": {"embedder": "toy", "templates": ["{}"]},
            "psi": {"top_k": 8, "k_range": [2, 3], "n_null": 4, "null_neurons": 4},
            "explain": {
                "classes": str(root / "classes.txt"),
                "neurons_per_unit": 16,
                "optim_steps": 5,
                "betas": [0.1, 0.5],
            },
            "output": str(root / "run"),
        }
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("vit")
    write_images(root / "probe", per_class=5, classes=CLASSES, size=(40, 40))
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    summary = run_audit(make_spec(root), runner=LocalRunner())
    return root, root / "run", summary


def inputs(run_dir: Path) -> tuple[torch.nn.Module, torch.Tensor, np.ndarray, list[str]]:
    """The model, every probe image preprocessed (in image id order), the ids and the labels."""
    images = read_table(run_dir, "images")
    model = tiny_vit().eval()
    pre = resolve_preprocess(ModelConfig(ARCH), model)
    x = torch.stack(
        [preprocess(np.asarray(Image.open(p).convert("RGB")), pre) for p in images["path"].to_pylist()]
    )
    return model, x, np.array(images["image_id"].to_pylist()), images["label"].to_pylist()


def test_every_stage_scores_every_mlp_neuron(run):
    _, out, summary = run
    stages = summary["stages"]
    assert stages["pure"]["status"] == {"ok": 96}
    assert set(stages["psi"]["neurons"]) == {"ok"} and sum(stages["psi"]["neurons"].values()) == 96
    assert sum(stages["explain"]["status"].values()) == 96
    for table in ("pure_attributions", "pure_centroids", "crop_embeddings", "psi", "explanations"):
        assert set(read_table(out, table)["layer"].to_pylist()) == set(MLP), table
    for table in ("ablation_scores", "top_impact"):
        assert set(read_table(out, table)["layer"].to_pylist()) == set(MLP), table


def test_forward_summaries_are_token_means_cls_and_patch_maxima(run):
    _, out, _ = run
    model, x, ids, _ = inputs(out)
    store = {}
    hooks = [
        dict(model.named_modules())[p].register_forward_hook(lambda m, i, o, p=p: store.__setitem__(p, o))
        for p in MLP
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    acts = read_table(out, "activations")
    for i, path in enumerate(MLP):
        t = acts.filter(ds.field("layer") == path).sort_by("image_id")
        assert t["image_id"].to_pylist() == ids.tolist()
        a = store[path].numpy()  # [N, 17, 32]
        want_mean = a[:, 0] if i == 2 else a.mean(axis=1)  # the last block's neurons: the CLS token
        np.testing.assert_allclose(np.asarray(t["mean"].to_pylist()), want_mean, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(
            np.asarray(t["max"].to_pylist()), a[:, 1:].max(axis=1), rtol=1e-4, atol=1e-5
        )
        flat = a[:, 1:].argmax(axis=1)
        np.testing.assert_array_equal(np.asarray(t["argmax_h"].to_pylist()), flat // 4)
        np.testing.assert_array_equal(np.asarray(t["argmax_w"].to_pylist()), flat % 4)


def test_pure_attributions_equal_autograd_through_the_transformer_blocks(run):
    _, out, _ = run
    model, x, ids, _ = inputs(out)
    attr = read_table(out, "pure_attributions")
    for layer, lower in LOWER.items():
        rows = attr.filter(ds.field("layer") == layer).to_pylist()
        assert rows and {r["lower_layer"] for r in rows} == {lower}
        assert {len(r["attribution"]) for r in rows} == {16 if lower == "encoder.dropout" else 32}
        for r in rows[::23]:
            want = pure_oracle.token_attribution(
                model, x[int(np.searchsorted(ids, r["image_id"]))], lower, layer, r["channel"]
            )
            np.testing.assert_allclose(r["attribution"], want, rtol=1e-3, atol=1e-6)


def test_assign_puts_a_new_image_on_the_nearest_virtual_neuron(run):
    _, out, _ = run
    model, x, ids, _ = inputs(out)
    layer, channel = MLP[2], 5
    cents = (
        read_table(out, "pure_centroids")
        .filter((ds.field("layer") == layer) & (ds.field("channel") == channel))
        .sort_by("cluster")
    )
    centroids = np.asarray(cents["centroid"].to_pylist(), np.float64)
    paths = read_table(out, "images")["path"].to_pylist()
    rows = query.assign(out, paths[:3], f"{layer}/{channel}")
    for j, r in enumerate(rows):
        vec = pure_oracle.token_attribution(model, x[j], LOWER[layer], layer, channel)
        best, dist = pure_oracle.nearest(vec, centroids)
        assert (r["cluster"], r["status"]) == (best, "ok")
        assert r["distance"] == pytest.approx(dist, rel=1e-3, abs=1e-5)


def test_psi_patches_are_the_tokens_own_pixels(run):
    _, out, _ = run
    crops = read_table(out, "crop_embeddings").filter(ds.field("crop") == "psi")
    refs = read_table(out, "references")
    assert crops.num_rows == 3 * 32 * 8
    site = {(r["layer"], r["channel"], r["image_id"]): (r["h"], r["w"]) for r in refs.to_pylist()}
    paths = dict(zip(*(read_table(out, "images")[c].to_pylist() for c in ("image_id", "path"))))
    toy = ToyEmbedder()
    # 40-px images are resized to the 32-px input: a token's 8-px patch is 10 original pixels wide
    for r in crops.to_pylist()[::37]:
        h, w = site[(r["layer"], r["channel"], r["image_id"])]
        assert (r["h"], r["w"]) == (h, w)
        assert r["box"] == [10 * w, 10 * h, 10 * w + 10, 10 * h + 10]
        pixels = np.asarray(Image.open(paths[r["image_id"]]).convert("RGB"))[
            10 * h : 10 * h + 10, 10 * w : 10 * w + 10
        ]
        np.testing.assert_allclose(r["vector"], toy.embed_images([pixels])[0], atol=1e-6)


@pytest.mark.parametrize("layer", [MLP[0], MLP[2]])
def test_top_impact_equals_ablating_the_neuron_on_every_token(run, layer):
    _, out, _ = run
    model, x, _, labels = inputs(out)
    y = torch.tensor([CLASSES.index(lab) for lab in labels])
    q = np.asarray(read_table(out, "activations").filter(ds.field("layer") == layer)["mean"].to_pylist())
    ti = read_table(out, "top_impact").filter(ds.field("layer") == layer)
    for ch in (0, 17):
        got = ti.filter(ds.field("channel") == ch).sort_by("beta")["ti"].to_pylist()
        want = le_reference.top_impact(model, x, y, layer, ch, q[:, ch], [0.1, 0.5], 1.1)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6, err_msg=f"{layer}/{ch}")


def test_lrp_on_attention_is_refused_naming_the_key(run, tmp_path):
    from neurodis.methods.pure.plan import plan_pure

    root, _, _ = run
    spec = make_spec(root, rule="lrp_epsilon_plus")
    with pytest.raises(SpecError, match=r"pure.rule: lrp_epsilon_plus.*use rule: grad_x_act"):
        plan_pure(spec, RunLayout(tmp_path))
    spec = make_spec(root, heatmap_composite="epsilon_plus_flat")
    with pytest.raises(SpecError, match=r"pure.heatmap_composite: .*use grad_x_input or auto"):
        plan_pure(spec, RunLayout(tmp_path))


def test_vit_b16_job_spec_loads_and_plans_every_stage_on_the_real_architecture():
    from neurodis.methods.embed.plan import plan_geometry
    from neurodis.methods.forward.shards import _token_reduce
    from neurodis.methods.pure.plan import plan_layers
    from neurodis.models.layers import discover_layers, resolve_layers
    from neurodis.models.loading import load_model

    spec = load_spec(ROOT / "jobs" / "vit-b16-mlp.yaml")
    assert spec.stages == ("forward", "pure", "embed", "psi", "explain")
    spec = spec.replace(model=dataclasses.replace(spec.model, checkpoint=None))  # random weights here
    model = load_model(spec.model)
    infos = discover_layers(model, 224)
    chosen = resolve_layers(infos, spec.layers)
    assert [i.shape for i in chosen] == [(197, 3072)] * 3
    assert list(_token_reduce(chosen, infos, "auto").values()) == ["mean", "mean", "cls"]
    _, layers, heatmap = plan_layers(spec)
    assert [(lp.path, lp.lower, lp.lower_channels) for lp in layers] == [
        (f"encoder.layers.encoder_layer_{i}.mlp.1", f"encoder.layers.encoder_layer_{i - 1}.mlp.1", 3072)
        for i in (9, 10, 11)
    ]
    assert heatmap == "grad_x_input"
    _, geometry = plan_geometry(spec)
    assert {(g.grid, g.stride, g.crop, g.whole_image) for g in geometry} == {((14, 14), (16, 16), 16, False)}
