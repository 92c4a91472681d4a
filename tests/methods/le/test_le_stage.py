"""The explain stage end to end on the tiny CNN: explanations against sklearn + the literal Algorithm 1 on
the stored split and activations, ablation scores against patching the activation inside the model (fast
and model paths), Top Impact against explicit per-neuron ablation, embedder explainers with a simulator,
statuses, errors, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest
import torch
from sklearn.linear_model import ElasticNet
from torchvision.transforms import v2

from neurodis.cli import main
from neurodis.config import spec_from_dict
from neurodis.data.concepts import load_concept_set
from neurodis.io.layout import RunLayout
from neurodis.io.tables import read_table
from neurodis.methods.le import ablation, explanations
from neurodis.methods.le.plan import plan_explain
from neurodis.models.tiny import tiny_cnn, tiny_vit
from neurodis.orchestration.audit import run_audit, stage_status
from neurodis.orchestration.runners import LocalRunner
from neurodis.types import SpecError
from tests.conftest import write_images
from tests.reference import le_reference as ref

CLASSES = ("cat", "dog", "emu", "fox", "gnu")
TOY, TOY2 = "toy", "neurodis.models.tiny:ToyEmbedder"


def make_spec(root: Path, out: str = "run", **explain_cfg):
    e = {
        "classes": str(root / "classes.txt"),
        "neurons_per_unit": 8,
        "optim_steps": 10,
        "batch_size": 64,
        **explain_cfg,
    }
    return spec_from_dict(
        {
            "model": {"arch": "neurodis.models.tiny:tiny_cnn"},
            "data": {"kind": "imagefolder", "root": str(root / "probe")},
            "layers": ["layer1", "layer2"],
            "stages": ["forward", "explain"],
            "forward": {"top_k": 5, "shard_size": 64},
            "embed": {"templates": ["{}"]},
            "explain": e,
            "output": str(root / out),
        }
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("le")
    write_images(root / "probe", per_class=16, classes=CLASSES, size=(32, 32))
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    spec = make_spec(
        root,
        explainers=["label", TOY],
        simulator=TOY2,
        calibrations={TOY: {"a": 10.0, "b": 0.0}, TOY2: {"a": 10.0, "b": 0.0}},
    )
    summary = run_audit(spec, runner=LocalRunner())
    return root, root / "run", summary, spec


def model_inputs(run_dir: Path):
    images = read_table(run_dir, "images")
    model = tiny_cnn().eval()
    pre = model.preprocess_config
    t = v2.Compose(
        [
            v2.Resize(pre["resize"], antialias=True),
            v2.CenterCrop(pre["crop"]),
            v2.Normalize(pre["mean"], pre["std"]),
        ]
    )
    from PIL import Image

    x = torch.stack(
        [
            t(torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1).float() / 255)
            for p in images["path"].to_pylist()
        ]
    )
    y = torch.tensor([CLASSES.index(lab) for lab in images["label"].to_pylist()])
    return model, x, y, np.array(images["image_id"].to_pylist())


def toy_probabilities(run_dir: Path, concepts) -> np.ndarray:
    from PIL import Image

    from neurodis.models.tiny import ToyEmbedder

    toy = ToyEmbedder()
    img = toy.embed_images(
        [np.array(Image.open(p).convert("RGB")) for p in read_table(run_dir, "images")["path"].to_pylist()]
    )
    return 1 / (1 + np.exp(-10.0 * (img @ toy.embed_texts(list(concepts)).T)))


def stored(run_dir: Path, layer: str):
    t = read_table(run_dir, "activations").filter(ds.field("layer") == layer).sort_by("image_id")
    q = np.array(t["mean"].to_pylist(), np.float64)
    split = {r["image_id"]: r["split"] for r in read_table(run_dir, "split").to_pylist()}
    codes = np.array([("train", "val", "test").index(split[i]) for i in t["image_id"].to_pylist()])
    labels = read_table(run_dir, "images")["label"].to_pylist()
    p = np.array([[float(lab == c) for c in CLASSES] for lab in labels])
    return q, codes, p


def test_split_is_seeded_stored_and_70_10_20(run):
    _, out, summary, spec = run
    split = read_table(out, "split")
    assert split.num_rows == 80 and summary["stages"]["explain"]["split"] == {
        "train": 56,
        "val": 8,
        "test": 16,
    }
    codes = explanations.split_of(split["image_id"].to_pylist(), (0.7, 0.1, 0.2), 0)
    assert [("train", "val", "test")[c] for c in codes] == split["split"].to_pylist()
    assert not np.array_equal(codes, explanations.split_of(range(80), (0.7, 0.1, 0.2), 1))


@pytest.mark.parametrize("layer", ["layer1", "layer2"])
def test_label_explanations_equal_sklearn_plus_literal_algorithm1(run, layer):
    _, out, _, _ = run
    q, codes, p = stored(out, layer)
    tr, va = codes == 0, codes == 1
    xs = (p[tr] - p[tr].mean(0)) / p[tr].std(0)
    table = read_table(out, "explanations").filter(
        (ds.field("layer") == layer) & (ds.field("explainer") == "label")
    )
    for row in table.to_pylist():
        k = row["channel"]
        ys = (q[tr, k] - q[tr, k].mean()) / q[tr, k].std()
        w = ElasticNet(alpha=0.0505, l1_ratio=0.99, tol=1e-12, max_iter=100_000).fit(xs, ys).coef_
        sc, wk, b, rho = ref.algorithm1(p[tr], q[tr, k], p[va], q[va, k], w)
        assert row["concepts"] == [CLASSES[i] for i in sc], (layer, k)
        assert row["status"] == ("ok" if sc else "empty")
        if sc:
            np.testing.assert_allclose(row["weights"], wk, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(row["intercept"], b, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(row["val_corr"], rho, atol=1e-5)
            te = codes == 2
            want = ref.get_correlation(p[te][:, sc] @ wk + b, q[te, k])
            np.testing.assert_allclose(row["explainer_test_corr"], want, atol=1e-5)


def test_fast_ablation_equals_patching_the_model(run):
    """alpha recomputed with (c, d) from the table by replacing the channel inside the real model."""
    _, out, _, _ = run
    model, x, y, _ = model_inputs(out)
    q, codes, p = stored(out, "layer2")
    abl = read_table(out, "ablation_scores").filter(
        (ds.field("layer") == "layer2") & (ds.field("explainer") == "label")
    )
    ex = {
        r["channel"]: r
        for r in read_table(out, "explanations")
        .filter((ds.field("layer") == "layer2") & (ds.field("explainer") == "label"))
        .to_pylist()
    }
    te = np.flatnonzero(codes == 2)
    sim_p = toy_probabilities(out, CLASSES)  # the simulator's P(class name | image), computed directly
    checked = 0
    for r in abl.to_pylist():
        assert r["path"] == "fast"
        if r["status"] != "ok":
            assert r["alpha"] is None and ex[r["channel"]]["status"] != "ok"
            continue
        e = ex[r["channel"]]
        assert r["simulator"] == TOY2
        s = sim_p[te][:, [CLASSES.index(c) for c in e["concepts"]]] @ np.array(e["weights"]) + e["intercept"]
        mu = q[codes == 0, r["channel"]].mean()
        want = ref.alpha(
            model, x[te], y[te], "layer2", r["channel"], torch.tensor(r["c"] * s + r["d"]), mu, 1.1
        )
        np.testing.assert_allclose(r["alpha"], want, rtol=1e-4, atol=1e-5)
        checked += 1
        if checked == 6:
            break
    assert checked >= 2


def test_model_path_equals_fast_path(run):
    root, out, _, spec = run
    plan, _ = plan_explain(spec, RunLayout(out))
    assert plan.layer("layer2").head == "fc" and plan.layer("layer1").head is None
    worker = ablation.AblationWorker(plan)
    fast = ablation.ablation_block(
        plan, "label", "layer2", 0, 6, ablation._fast_factory(plan, "layer2"), "fast"
    )
    slow = ablation.ablation_block(plan, "label", "layer2", 0, 6, worker.factory("layer2"), "model")
    for col in ("c", "d", "alpha", "val_objective"):
        a = np.array([np.nan if v is None else v for v in fast[col].to_pylist()])
        b = np.array([np.nan if v is None else v for v in slow[col].to_pylist()])
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-4, err_msg=col)
    t_fast = ablation.ti_block(plan, "layer2", 0, 6, ablation._fast_factory(plan, "layer2"), "fast")
    t_slow = ablation.ti_block(plan, "layer2", 0, 6, worker.factory("layer2"), "model")
    np.testing.assert_allclose(
        t_fast["ti"].to_numpy(zero_copy_only=False),
        t_slow["ti"].to_numpy(zero_copy_only=False),
        rtol=1e-4,
        atol=1e-6,
    )


@pytest.mark.parametrize("layer", ["layer2", "layer1"])
def test_top_impact_equals_explicit_per_neuron_ablation(run, layer):
    _, out, _, spec = run
    model, x, y, _ = model_inputs(out)
    q, _, _ = stored(out, layer)
    ti = (
        read_table(out, "top_impact")
        .filter(ds.field("layer") == layer)
        .sort_by([("channel", "ascending"), ("beta", "ascending")])
    )
    betas = sorted(spec.explain.betas)
    for ch in (0, 3, 7):
        got = ti.filter(ds.field("channel") == ch)["ti"].to_pylist()
        want = ref.top_impact(model, x, y, layer, ch, q[:, ch], betas, 1.1)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6, err_msg=f"{layer}/{ch}")


def test_embedder_explainer_with_a_different_simulator(run):
    _, out, _, _ = run
    concepts = read_table(out, "le_concepts").filter(ds.field("explainer") == TOY)
    assert concepts["concept"].to_pylist() == sorted(load_concept_set("testbed")[1]) and any(
        concepts["kept"].to_pylist()
    )
    t = read_table(out, "explanations").filter(ds.field("explainer") == TOY)
    assert set(t["simulator"].to_pylist()) == {TOY2}
    ok = [r for r in t.to_pylist() if r["status"] == "ok"]
    assert ok and all(r["test_corr"] is not None for r in ok)
    # the toy simulator embeds like the toy explainer: the simulation equals the explainer's own
    np.testing.assert_allclose(
        [r["test_corr"] for r in ok], [r["explainer_test_corr"] for r in ok], atol=1e-5
    )
    assert (out / "_le_embed").is_dir()
    abl = read_table(out, "ablation_scores").filter(ds.field("explainer") == TOY)
    assert set(abl["simulator"].to_pylist()) == {TOY2}


def test_status_cli_and_report(run, capsys):
    root, out, _, _ = run
    assert stage_status(out)["explain"]["pending"] == 0
    assert main(["explain", str(out), "layer2/3"]) == 0
    text = capsys.readouterr().out
    assert "layer2/3" in text and "LE(label)" in text and "top impact" in text and "top images" in text
    assert main(["explain", str(out), "layer2/999"]) == 2  # bad input: one line naming the valid channels
    assert "layer 'layer2' has channels 0..15" in capsys.readouterr().err


def test_resume_changes_nothing(run):
    root, out, _, spec = run
    before = {t: read_table(out, t) for t in ("explanations", "ablation_scores", "top_impact")}
    summary = run_audit(spec, runner=LocalRunner())
    assert summary["stages"]["explain"]["units_run"] == 0
    for t, table in before.items():
        assert read_table(out, t).equals(table)


def test_dead_neurons_get_a_status(tmp_path):
    write_images(tmp_path / "probe", per_class=8, classes=CLASSES, size=(32, 32))
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    spec = make_spec(tmp_path, ablation_methods=["norm"])
    spec = spec_from_dict({**spec.to_dict(), "forward": {"top_k": 5, "dead_threshold": 1e9}})
    run_audit(spec, runner=LocalRunner())
    t = read_table(tmp_path / "run", "explanations")
    assert set(t["status"].to_pylist()) == {"dead"} and set(t["length"].to_pylist()) == {0}
    assert set(read_table(tmp_path / "run", "ablation_scores")["status"].to_pylist()) == {"dead"}


def test_spec_errors(tmp_path):
    base = {
        "model": {"arch": "neurodis.models.tiny:tiny_cnn"},
        "data": {"kind": "imagefolder", "root": str(tmp_path)},
        "stages": ["forward", "explain"],
    }
    with pytest.raises(SpecError, match="different from every explainer"):
        spec_from_dict({**base, "explain": {"explainers": ["label", TOY], "simulator": TOY}})
    with pytest.raises(SpecError, match="sum"):
        spec_from_dict({**base, "explain": {"split": [0.5, 0.1, 0.1]}})
    with pytest.raises(SpecError, match="rank_by"):
        spec_from_dict({**base, "explain": {"rank_by": "size"}})
    write_images(tmp_path / "probe", per_class=3, classes=("cat", "dog"), size=(32, 32))
    spec = spec_from_dict(
        {
            **base,
            "data": {"kind": "imagefolder", "root": str(tmp_path / "probe")},
            "layers": ["layer2"],
            "stages": ["explain"],
        }
    )
    with pytest.raises(SpecError, match="5 outputs but 2 class names"):
        plan_explain(spec, RunLayout(tmp_path / "run"))
    spec = spec_from_dict({**spec.to_dict(), "explain": {"ablation": False, "top_impact": False}})
    with pytest.raises(SpecError, match="run the forward stage first"):
        plan_explain(spec, RunLayout(tmp_path / "run"))


@pytest.mark.ray
def test_ray_runner_gives_identical_tables(run, ray_session):
    """Local and Ray runs of one spec (fast and model ablation paths: CPU tasks and actors) agree exactly."""
    from neurodis.orchestration.runners import RayRunner

    root = run[0]
    spec = make_spec(root, ablation_methods=["norm"])
    run_audit(spec, out=root / "local", runner=LocalRunner())
    run_audit(spec, out=root / "ray", runner=RayRunner())
    for t in ("split", "le_concepts", "explanations", "ablation_scores", "top_impact"):
        a, b = read_table(root / "local", t), read_table(root / "ray", t)
        assert a.num_rows and a.equals(b), t
    assert json.loads((root / "ray" / "summary.json").read_text())["status"] == "complete"


def test_a_failing_neuron_records_its_error_and_the_rest_go_on(run, monkeypatch):
    root, out, _, spec = run
    plan, _ = plan_explain(spec, RunLayout(out))
    real = explanations.solve

    def flaky(train, val, alive, plan, device):
        if len(alive) > 1 or int(alive[0]) == 3:
            raise FloatingPointError("planted failure")
        return real(train, val, alive, plan, device)

    monkeypatch.setattr(explanations, "solve", flaky)
    table = explanations.explain_layer(plan, "label", "layer2").to_pylist()
    assert table[3]["status"] == "error: FloatingPointError: planted failure" and table[3]["concepts"] == []
    want = {
        r["channel"]: r
        for r in read_table(out, "explanations")
        .filter((ds.field("layer") == "layer2") & (ds.field("explainer") == "label"))
        .to_pylist()
    }
    for r in table:
        if r["channel"] != 3:
            assert (r["status"], r["concepts"]) == (
                want[r["channel"]]["status"],
                want[r["channel"]]["concepts"],
            )


@pytest.mark.parametrize("shape", [(4, 6, 3, 3), (4, 5, 6), (4, 6)])
def test_channel_patch_replaces_one_channel_per_row(shape):
    """Conv maps, token layers [N, T, C] and vectors: row r gets channel channels[r] replaced by its value
    everywhere (none where the channel is negative); the rest is untouched; the hook is removed."""
    module = torch.nn.Identity()
    x = torch.randn(*shape)
    channels = torch.tensor([1, 4, -1, 1])
    values = torch.tensor([10.0, 20.0, 30.0, 40.0])
    with ablation.channel_patch(module, channels, values):
        y = module(x)
    cdim = 2 if x.dim() == 3 else 1
    for r, ch in enumerate(channels.tolist()):
        got, orig = y[r].movedim(cdim - 1, 0), x[r].movedim(cdim - 1, 0)
        if ch >= 0:
            assert torch.all(got[ch] == values[r])
        keep = [c for c in range(x.shape[cdim]) if c != ch]
        assert torch.equal(got[keep], orig[keep])
    assert torch.equal(module(x), x)


class _SkipAround(torch.nn.Module):
    """``logits = fc(pool(inner(h) + h))``: the part above ``inner`` reads ``h`` from below it."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.stem = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.inner = torch.nn.Conv2d(4, 4, 1)
        self.fc = torch.nn.Linear(4, 5)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))

    def forward(self, x):
        h = torch.relu(self.stem(x))
        return self.fc((self.inner(h) + h).mean((2, 3)))


class _FunctionalResNet(torch.nn.Module):
    """A small ResNet written with functional ops: a skip connection around ``block.conv2`` and around
    ``block``, pooling and flattening by functions (the "from the layer on" hook replay is wrong here)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(4)
        self.stem = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.block = torch.nn.Module()
        self.block.conv1 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.block.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.down = torch.nn.Conv2d(8, 6, 1, stride=2)
        self.fc = torch.nn.Linear(6, 5)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(0.5 * torch.randn(p.shape, generator=g))

    def forward(self, x):
        h = torch.nn.functional.relu(self.stem(x))
        y = torch.nn.functional.relu(self.block.conv1(h))
        y = torch.nn.functional.relu(self.block.conv2(y) + h)
        z = torch.nn.functional.relu(self.down(y))
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(z, 1), 1))


class _Untraceable(_SkipAround):
    """Data-dependent control flow: ``torch.fx`` cannot trace it."""

    def forward(self, x):
        h = torch.relu(self.stem(x))
        if float(h.sum()) > -1e30:
            h = h + 0.0
        return self.fc((self.inner(h) + h).mean((2, 3)))


def _resnet18():
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=7)


@pytest.mark.parametrize(
    "model,layer,mode",
    [
        (tiny_cnn, "layer1", "graph"),
        (_SkipAround, "inner", "graph"),
        (_FunctionalResNet, "block.conv2", "graph"),
        (_FunctionalResNet, "block.conv1", "graph"),
        (_resnet18, "layer2.0.conv1", "graph"),  # the downsample branch reads below the layer
        (_resnet18, "layer3.1", "graph"),
        (tiny_vit, "encoder.layers.encoder_layer_1.mlp.1", "graph"),  # tokens; the residual reads below
        (_Untraceable, "inner", "full"),
        (_Untraceable, "stem", "hooked"),
    ],
)
@pytest.mark.parametrize("batch_size", [64, 7])
def test_model_patcher_equals_patching_one_neuron_at_a_time(model, layer, mode, batch_size):
    """The graph split, the hook replay and plain forward passes (whichever the check picks), in batches
    of neurons (several passes when the batch is small), equal the reference hook patching, neuron by
    neuron, in a plain forward pass of the whole model."""
    net = model().eval()
    for p in net.parameters():
        p.requires_grad_(False)
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    patcher = ablation.ModelPatcher(
        net, layer, lambda rows: x[torch.as_tensor(rows)], "cpu", batch_size, 3, n_rows=6
    )
    channels = np.array([0, 2, 3])
    values = torch.randn(6, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    got = torch.cat([patcher.logits(np.arange(a, a + 2), channels, values[a : a + 2]) for a in (0, 2, 4)])
    assert patcher.mode == mode
    for j, ch in enumerate(channels.tolist()):
        want = ref.patched_logits(net, x, layer, ch, values[:, j])
        np.testing.assert_allclose(got[:, j].numpy(), want.double().numpy(), rtol=1e-4, atol=1e-5)


class _ZeroMaps(torch.nn.Module):
    """A ReLU layer ``act`` with a skip connection around it (functional ops): channel 0 is zero on every
    image, channel 1 on the images whose first input channel is negative."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(6)
        self.stem = torch.nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.conv = torch.nn.Conv2d(6, 6, 3, padding=1)
        self.act = torch.nn.ReLU()
        self.down = torch.nn.Conv2d(6, 6, 3, stride=2, padding=1)
        self.fc = torch.nn.Linear(6, 5)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            self.conv.weight[0], self.conv.bias[0] = 0.0, -1.0
            self.stem.weight[1], self.stem.bias[1] = 0.0, 0.0
            self.stem.weight[1, 0] = 1.0
            self.conv.weight[1], self.conv.bias[1] = 0.0, 0.0
            self.conv.weight[1, 1] = 1.0

    def forward(self, x):
        h = torch.nn.functional.relu(self.stem(x))
        y = self.act(self.conv(h)) + h
        z = torch.nn.functional.relu(self.down(y))
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(z, 1), 1))


@pytest.mark.parametrize("batch_size", [64, 5])
def test_zero_ablating_all_zero_maps_runs_only_the_pairs_that_change(batch_size):
    """Zero-ablation where a channel's map is already all zero on an image: the logits (and Top Impact)
    equal patching one neuron at a time in plain forward passes, and the tail runs once per pair that
    changes plus once per image with a pair that does not."""
    net = _ZeroMaps().eval()
    for p in net.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(8, 3, 16, 16, generator=g)
    x[:, 0] = x[:, 0].abs() * torch.tensor([1.0, -1.0] * 4)[:, None, None]
    channels = np.array([0, 1, 2, 4])
    maps = {}
    handle = net.act.register_forward_hook(lambda _m, _i, o: maps.setdefault("a", o.clone()))
    with torch.no_grad():
        net(x)
    handle.remove()
    zero = (maps["a"].flatten(2).amax(-1) == 0)[:, channels]
    assert zero[:, 0].all() and 0 < int(zero[:, 1].sum()) < 8
    patcher = ablation.ModelPatcher(net, "act", lambda r: x[torch.as_tensor(r)], "cpu", batch_size, 4, 8)
    rows = np.arange(8)
    zeros = torch.zeros(8, 4, dtype=torch.float64)
    patcher.logits(rows[:2], channels[:2], zeros[:2, :2])  # the check
    assert patcher.mode == "graph"
    seen = []
    handle = net.down.register_forward_hook(lambda _m, i, _o: seen.append(len(i[0])))
    got = patcher.logits(rows, channels, zeros)
    handle.remove()
    assert sum(seen) == int((~zero).sum()) + int(zero.any(1).sum())
    for j, ch in enumerate(channels.tolist()):
        want = ref.patched_logits(net, x, "act", ch, zeros[:, j])
        np.testing.assert_allclose(got[:, j].numpy(), want.double().numpy(), rtol=1e-5, atol=1e-6)
    labels = torch.randint(0, 5, (8,), generator=g)
    acts = torch.rand(8, 4, generator=g, dtype=torch.float64)
    ti, _ = ablation.top_impact_of(patcher, rows, channels, labels, acts, (0.25, 0.5), 1.1)
    for j in (1, 2, 3):
        want = ref.top_impact(net, x, labels, "act", int(channels[j]), acts[:, j].numpy(), (0.25, 0.5), 1.1)
        np.testing.assert_allclose(ti[j].numpy(), want, rtol=1e-4, atol=1e-6)  # ref: float32 losses


def test_scores_through_the_graph_split_equal_plain_forward_passes():
    """``score`` and Top Impact (optim with gradients through the tail, norm) are the same whether the
    patcher runs the graph after the layer or plain forward passes of the whole model."""
    net = _FunctionalResNet().eval()
    for p in net.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(12, 3, 32, 32, generator=g)
    images = lambda rows: x[torch.as_tensor(rows)]  # noqa: E731
    channels = np.array([1, 4, 6])
    labels = torch.randint(0, 5, (12,), generator=g)
    s = torch.randn(12, 3, generator=g, dtype=torch.float64)
    q = torch.randn(12, 3, generator=g, dtype=torch.float64)
    mu = q.mean(0)
    out = {}
    for mode in ("graph", "full"):
        p = ablation.ModelPatcher(net, "block.conv2", images, "cpu", 8, 3, n_rows=12)
        if mode == "full":
            p.mode = "full"
        v, t = np.arange(6), np.arange(6, 12)
        out[mode] = [
            ablation.score(p, channels, (v, labels[v], s[v], q[v]), (t, labels[t], s[t]), mu, m, 1.1, 3, 0.05)
            for m in ("optim", "norm")
        ] + [ablation.top_impact_of(p, np.arange(12), channels, labels, q, (0.1, 0.5), 1.1)]
        assert p.mode == mode
    for a, b in zip(out["graph"][:2], out["full"][:2]):
        for f in ("c", "d", "alpha", "val_objective"):
            torch.testing.assert_close(getattr(a, f), getattr(b, f), rtol=1e-5, atol=1e-7)
    for a, b in zip(out["graph"][2], out["full"][2]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, equal_nan=True)


def test_a_neuron_sample_scores_every_ith_channel_as_the_full_run_does(run):
    """``explain.ablation_neurons: 3`` scores channels 0, 3, 6 of the 8-channel layer1 (model path) and 0,
    6, 12 of the 16-channel layer2 (fast path), the interval recorded in both tables, with the same scores
    and Top Impact as the run that scores every neuron."""
    root, out, _, _ = run
    spec = make_spec(
        root,
        out="sampled",
        ablation_neurons=3,
        explainers=["label", TOY],
        simulator=TOY2,
        calibrations={TOY: {"a": 10.0, "b": 0.0}, TOY2: {"a": 10.0, "b": 0.0}},
    )
    run_audit(spec, runner=LocalRunner())
    keys = ["layer", "channel", "explainer", "method"]
    for table, key, cols in (
        ("ablation_scores", keys, ["c", "d", "alpha", "val_objective", "status", "path"]),
        ("top_impact", ["layer", "channel", "beta"], ["ti", "total_impact", "path"]),
    ):
        got = read_table(root / "sampled", table).sort_by([(k, "ascending") for k in key]).to_pylist()
        full = {tuple(r[k] for k in key): r for r in read_table(out, table).to_pylist()}
        expected = {"layer1": ({0, 3, 6}, 3), "layer2": ({0, 6, 12}, 6)}
        for layer, (channels, _) in expected.items():
            assert {r["channel"] for r in got if r["layer"] == layer} == channels
        for r in got:
            want = full[tuple(r[k] for k in key)]
            assert r["sample_interval"] == expected[r["layer"]][1] and want["sample_interval"] == 1
            for c in cols:
                if isinstance(want[c], float):
                    np.testing.assert_allclose(r[c], want[c], rtol=1e-4, atol=1e-6, err_msg=c)
                else:
                    assert r[c] == want[c], c


def test_scored_channels():
    assert ablation.scored_channels(8, None)[1] == 1
    assert ablation.scored_channels(8, 8)[0].tolist() == list(range(8))
    ch, interval = ablation.scored_channels(2048, 100)
    assert interval == 21 and ch.tolist() == list(range(0, 2048, 21)) and len(ch) <= 100


def _bootstrap_alpha(
    sim: np.ndarray, mean: np.ndarray, seed: int, resamples: int = 200
) -> tuple[float, float]:
    """The 95 % percentile-bootstrap interval of 1 - sum(sim) / sum(mean) over images, by resampling image
    indices explicitly (one neuron; the draws of numpy's multinomial as documented)."""
    n = len(sim)
    counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=resamples)
    boot = []
    for c in counts:
        idx = np.repeat(np.arange(n), c)
        m = mean[idx].sum()
        boot.append(1.0 - sim[idx].sum() / m if m > 1e-12 else np.nan)
    lo, hi = np.nanpercentile(np.array(boot), [2.5, 97.5])
    return float(lo), float(hi)


def test_alpha_interval_is_the_bootstrap_over_test_images_and_covers():
    g = np.random.default_rng(3)
    sim, mean = g.gamma(1.0, 1.0, (40, 3)), g.gamma(2.0, 1.0, (40, 3))
    mean[:, 2] = 0.0  # the mean-ablation changes nothing: no alpha, no interval
    lo, hi = ablation.alpha_interval(torch.from_numpy(sim), torch.from_numpy(mean), seed=7)
    for k in range(2):
        np.testing.assert_allclose((lo[k].item(), hi[k].item()), _bootstrap_alpha(sim[:, k], mean[:, k], 7))
        # a deliberately wrong answer (another neuron's changes) is not this neuron's interval
        assert not np.allclose((lo[k].item(), hi[k].item()), _bootstrap_alpha(sim[:, 1 - k], mean[:, k], 7))
    assert np.isnan(lo[2].item()) and np.isnan(hi[2].item())
    # coverage: over many samples of 60 images from a population of 20,000, the interval holds the
    # population's alpha about 95 % of the time
    pop_s, pop_m = g.gamma(1.0, 1.0, 20_000), g.gamma(2.0, 1.0, 20_000)
    truth = 1.0 - pop_s.sum() / pop_m.sum()
    hits = 0
    for trial in range(200):
        i = g.choice(20_000, 60, replace=False)
        lo, hi = ablation.alpha_interval(
            torch.from_numpy(pop_s[i, None]), torch.from_numpy(pop_m[i, None]), trial
        )
        hits += bool(lo.item() <= truth <= hi.item())
    assert 0.85 <= hits / 200 <= 0.995, hits


def test_sampled_rows():
    rows = np.arange(10, 60, 2)
    assert (
        ablation.sampled_rows(rows, None, (0, 1)) is rows and ablation.sampled_rows(rows, 25, (0, 1)) is rows
    )
    a = ablation.sampled_rows(rows, 7, (0, 1))
    assert len(a) == 7 and set(a) <= set(rows) and np.all(np.diff(a) > 0)
    assert np.array_equal(a, ablation.sampled_rows(rows, 7, (0, 1)))
    assert not np.array_equal(a, ablation.sampled_rows(rows, 7, (0, 2)))
    # uniform: over seeds every row is drawn about 7 / 25 of the time
    freq = np.zeros(len(rows))
    for seed in range(2000):
        freq += np.isin(rows, ablation.sampled_rows(rows, 7, (seed, 1)))
    np.testing.assert_allclose(freq / 2000, 7 / 25, atol=0.05)


def _simulated(p: np.ndarray, e: dict) -> np.ndarray:
    """An explanation's simulated activation from concept probabilities ``p`` [images, classes]."""
    return p[:, [CLASSES.index(c) for c in e["concepts"]]] @ np.array(e["weights"]) + e["intercept"]


def _per_image_changes(model, x, y, layer, channel, sim_value, mean_value, t):
    base = ref.ce(ref.patched_logits(model, x, layer, channel, None), y, t)
    sim = ref.ce(ref.patched_logits(model, x, layer, channel, sim_value), y, t)
    mean = ref.ce(
        ref.patched_logits(model, x, layer, channel, torch.full((len(x),), float(mean_value))), y, t
    )
    return np.abs(sim - base), np.abs(mean - base)


def test_scores_record_their_images_and_alphas_interval(run):
    """Every row records the images it was scored on; alpha's interval equals a bootstrap of the per-image
    loss changes recomputed by patching the real model (fast path layer2, model path layer1)."""
    _, out, _, spec = run
    abl = read_table(out, "ablation_scores").to_pylist()
    ok = [r for r in abl if r["status"] == "ok"]
    assert ok and all(r["val_images"] == 8 and r["test_images"] == 16 for r in ok)
    assert all(r["alpha_low"] is None and r["alpha_high"] is None for r in abl if r["status"] != "ok")
    assert set(read_table(out, "top_impact")["images"].to_pylist()) == {80}
    model, x, y, _ = model_inputs(out)
    sim_p = toy_probabilities(out, CLASSES)
    for layer in ("layer2", "layer1"):
        q, codes, _ = stored(out, layer)
        te = np.flatnonzero(codes == 2)
        ex = {
            r["channel"]: r
            for r in read_table(out, "explanations")
            .filter((ds.field("layer") == layer) & (ds.field("explainer") == "label"))
            .to_pylist()
        }
        rows = [r for r in ok if r["layer"] == layer and r["explainer"] == "label" and r["method"] == "norm"]
        assert rows, layer
        for r in rows[:3]:
            e = ex[r["channel"]]
            s = _simulated(sim_p[te], e)
            mu = q[codes == 0, r["channel"]].mean()
            sim, mean = _per_image_changes(
                model, x[te], y[te], layer, r["channel"], torch.tensor(r["c"] * s + r["d"]), mu, 1.1
            )
            want = _bootstrap_alpha(sim, mean, spec.explain.split_seed)
            np.testing.assert_allclose((r["alpha_low"], r["alpha_high"]), want, rtol=1e-3, atol=1e-4)
            assert r["alpha_low"] <= r["alpha_high"]


def test_an_image_sample_scores_on_those_images(run):
    """``explain.ablation_images: 5`` fits and scores ablation on 5 val and 5 test images and Top Impact on
    5 labelled images, the sample the split's seed draws; alpha and TI equal the real model patched on
    exactly those images (model path layer1, fast path layer2)."""
    root, _, _, _ = run
    spec = make_spec(root, out="images", ablation_images=5, ablation_methods=["norm"])
    run_audit(spec, runner=LocalRunner())
    out = root / "images"
    model, x, y, _ = model_inputs(out)
    abl = [r for r in read_table(out, "ablation_scores").to_pylist() if r["status"] == "ok"]
    assert abl and all(r["val_images"] == 5 and r["test_images"] == 5 for r in abl)
    ti = read_table(out, "top_impact")
    assert set(ti["images"].to_pylist()) == {5}
    sim_p = stored(out, "layer1")[2]  # the label explainer's simulator: the class indicators
    keep = ablation.sampled_rows(np.arange(80), 5, (0, 3))
    for layer in ("layer1", "layer2"):
        q, codes, _ = stored(out, layer)
        te = ablation.sampled_rows(np.flatnonzero(codes == 2), 5, (0, 2))
        ex = {
            r["channel"]: r
            for r in read_table(out, "explanations").filter(ds.field("layer") == layer).to_pylist()
        }
        mine = [r for r in abl if r["layer"] == layer]
        assert mine, layer
        for r in mine[:3]:
            e = ex[r["channel"]]
            s = _simulated(sim_p[te], e)
            mu = q[codes == 0, r["channel"]].mean()
            want = ref.alpha(
                model, x[te], y[te], layer, r["channel"], torch.tensor(r["c"] * s + r["d"]), mu, 1.1
            )
            np.testing.assert_allclose(
                r["alpha"], want, rtol=1e-4, atol=1e-5, err_msg=f"{layer}/{r['channel']}"
            )
        rows = ti.filter(ds.field("layer") == layer).sort_by(
            [("channel", "ascending"), ("beta", "ascending")]
        )
        for ch in (0, 5):
            got = rows.filter(ds.field("channel") == ch)["ti"].to_pylist()
            want = ref.top_impact(
                model, x[keep], y[keep], layer, ch, q[keep, ch], sorted(spec.explain.betas), 1.1
            )
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6, err_msg=f"{layer}/{ch}")
