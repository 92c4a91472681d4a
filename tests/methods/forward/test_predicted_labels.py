"""``data.labels: predicted``: the forward stage stores each probe image's top class (the argmax of the
model's logits, computed here independently), and the label-aligned scores use it instead of the folder
names, which are not the model's classes: LE's label explainer (class + superclass concepts), ablation
and Top Impact, PSI's Q. Specs without the option write no predictions and keep their tables; local ==
Ray."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest
import torch
from PIL import Image
from sklearn.metrics import normalized_mutual_info_score

from neurodis.config import ModelConfig, spec_from_dict
from neurodis.data.transforms import preprocess
from neurodis.io.layout import RunLayout
from neurodis.io.tables import read_table
from neurodis.methods.le import explanations
from neurodis.methods.le.plan import plan_explain
from neurodis.models.loading import resolve_preprocess
from neurodis.models.tiny import tiny_cnn
from neurodis.orchestration.audit import run_audit
from neurodis.orchestration.runners import LocalRunner
from neurodis.types import SpecError
from tests.reference import le_reference

CLASSES = ("cat", "dog", "emu", "fox", "gnu")  # the model's outputs; the probe folders are a, b, c
SUPER = {"cat": "mammal", "dog": "mammal", "fox": "mammal", "emu": "bird", "gnu": "mammal"}
ARCH = "neurodis.models.tiny:tiny_cnn"


def make_spec(root: Path, out: str = "run", labels: str = "predicted", stages=None):
    return spec_from_dict(
        {
            "model": {"arch": ARCH},
            "data": {"kind": "imagefolder", "root": str(root / "probe"), "labels": labels},
            "layers": ["layer1", "layer2"],
            "stages": stages or ["forward", "embed", "psi", "explain"],
            "forward": {"top_k": 8, "shard_size": 10},
            "embed": {
                "embedder": "toy",
                "templates": ["{}"],
                "superclasses": str(root / "super.txt"),
            },
            "psi": {"top_k": 8, "k_range": [2, 3], "n_null": 4, "null_neurons": 4},
            "explain": {"classes": str(root / "classes.txt"), "optim_steps": 5, "betas": [0.1, 0.5]},
            "output": str(root / out),
        }
    )


def write_coloured_images(root: Path, per_class: int, classes: tuple[str, ...], seed: int = 0) -> None:
    """32-px images of one random colour each plus noise (the tiny CNN tells colours apart, not noise)."""
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, 3) + rng.normal(0, 20, (32, 32, 3))
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(root / c / f"img{i:03d}.png")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("predicted")
    write_coloured_images(root / "probe", 9, ("a", "b", "c"))
    (root / "probe" / "c" / "broken.png").write_bytes(b"not an image")
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    (root / "super.txt").write_text("".join(f"{c}\t{s}\n" for c, s in SUPER.items()))
    run_audit(make_spec(root), runner=LocalRunner())
    return root


def argmax_classes(run: Path) -> dict[int, int]:
    """image id -> argmax of the model's logits, for every readable probe image."""
    model = tiny_cnn().eval()
    pre = resolve_preprocess(ModelConfig(ARCH), model)
    out = {}
    for r in read_table(run, "images").to_pylist():
        if r["path"].endswith("broken.png"):
            continue
        x = preprocess(np.asarray(Image.open(r["path"]).convert("RGB")), pre)
        with torch.no_grad():
            out[r["image_id"]] = int(model(x[None])[0].argmax())
    return out


def test_predictions_are_the_argmax_of_the_logits(world):
    run = world / "run"
    got = read_table(run, "predictions")
    want = argmax_classes(run)
    assert dict(zip(got["image_id"].to_pylist(), got["predicted"].to_pylist())) == want
    assert len(set(want.values())) >= 2  # the folders say a, b, c; the model says several of its classes
    assert read_table(run, "rejects").num_rows == 1  # the broken file has no prediction


def test_given_labels_write_no_predictions_and_the_same_tables(world):
    spec = make_spec(world, out="given", labels="given", stages=["forward"])
    run_audit(spec, runner=LocalRunner())
    given, predicted = world / "given", world / "run"
    assert read_table(given, "predictions").num_rows == 0 and not (given / "predictions").exists()
    for table in ("images", "activations", "references", "neurons", "rejects"):
        assert read_table(given, table).equals(read_table(predicted, table)), table


def test_label_explainer_concepts_are_the_predicted_class_and_its_superclass(world):
    run = world / "run"
    plan, _ = plan_explain(make_spec(world), RunLayout(run))
    source = explanations.load_source(plan, "label")
    pred = argmax_classes(run)
    ids = np.array(sorted(pred), np.int64)
    p = source.matrix(ids).numpy()
    for row, i in zip(p, ids):
        name = CLASSES[pred[int(i)]]
        assert {source.concepts[j] for j in np.nonzero(row)[0]} == {name, SUPER[name]}
    assert not {"a", "b", "c"} & set(source.concepts)


def test_top_impact_scores_against_the_predicted_classes(world):
    run = world / "run"
    pred = argmax_classes(run)
    model = tiny_cnn().eval()
    pre = resolve_preprocess(ModelConfig(ARCH), model)
    paths = dict(zip(*(read_table(run, "images")[c].to_pylist() for c in ("image_id", "path"))))
    ids = sorted(pred)
    x = torch.stack([preprocess(np.asarray(Image.open(paths[i]).convert("RGB")), pre) for i in ids])
    y = torch.tensor([pred[i] for i in ids])
    acts = read_table(run, "activations").filter(ds.field("layer") == "layer2")
    q = dict(zip(acts["image_id"].to_pylist(), acts["mean"].to_pylist()))
    ti = read_table(run, "top_impact").filter(ds.field("layer") == "layer2")
    for ch in (0, 9):
        got = ti.filter(ds.field("channel") == ch).sort_by("beta")["ti"].to_pylist()
        qc = np.array([q[i][ch] for i in ids])
        want = le_reference.top_impact(model, x, y, "layer2", ch, qc, [0.1, 0.5], 1.1)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    statuses = set(read_table(run, "ablation_scores")["status"].to_pylist())
    assert "ok" in statuses and "no_labels" not in statuses  # the folder names are no class


def test_psi_q_is_the_nmi_with_the_predicted_classes(world):
    run = world / "run"
    pred = argmax_classes(run)
    rows = [r for r in read_table(run, "psi").to_pylist() if r["status"] == "ok"]
    assert rows
    for r in rows:
        y = [pred[i] for i in r["site_image_ids"]]
        assert r["Q"] == pytest.approx(normalized_mutual_info_score(y, r["partition"]), abs=1e-9)


def test_predicted_labels_without_class_names_are_a_spec_error(world, tmp_path):
    spec = make_spec(world, out=str(tmp_path / "r"))
    spec = spec.replace(explain=dataclasses.replace(spec.explain, classes=None))
    with pytest.raises(SpecError, match=r"data.labels: predicted .* give explain.classes"):
        plan_explain(spec, RunLayout(world / "run"))


@pytest.mark.ray
def test_ray_runner_stores_the_same_predictions(world, tmp_path, ray_session):
    from neurodis.orchestration.runners import RayRunner

    spec = make_spec(world, out=str(tmp_path / "ray"), stages=["forward"])
    run_audit(spec, runner=RayRunner())
    assert read_table(tmp_path / "ray", "predictions").equals(read_table(world / "run", "predictions"))
