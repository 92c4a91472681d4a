"""Checkpoints as people save them: wrappers, DataParallel / torch.compile prefixes, missing BatchNorm
counters. The oracle is PyTorch's own ``load_state_dict(strict=True)`` and the saved model's weights."""

from __future__ import annotations

import pickle
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn

from neurodis.models.checkpoint import load_checkpoint, unpickler_reason
from neurodis.models.loading import load_model
from neurodis.sections import ModelConfig
from neurodis.types import SpecError


def _net(seed: int) -> nn.Module:
    """A small conv net with BatchNorm (running stats and num_batches_tracked buffers)."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)
    )
    with torch.no_grad():  # non-default buffers, so a load that skips them is seen
        net[1].running_mean.normal_()
        net[1].running_var.uniform_(0.5, 2.0)
        net[1].num_batches_tracked.fill_(7)
    return net


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture()
def trained() -> nn.Module:
    return _net(seed=1)


def _load(tmp_path: Path, obj, **save) -> nn.Module:
    path = tmp_path / "w.pt"
    torch.save(obj, path, **save)
    model = _net(seed=2)
    load_checkpoint(model, path, "test:net")
    return model


def test_data_parallel_checkpoint_inside_a_training_dict(trained: nn.Module, tmp_path: Path):
    wrapped = nn.DataParallel(trained)  # works on CPU; its keys start with 'module.'
    opt = torch.optim.SGD(trained.parameters(), lr=0.1, momentum=0.9)
    ckpt = {"state_dict": wrapped.state_dict(), "epoch": 3, "optimizer": opt.state_dict()}
    assert all(k.startswith("module.") for k in ckpt["state_dict"])
    assert _same(_load(tmp_path, ckpt), trained)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda m: torch.compile(m),  # '_orig_mod.'
        lambda m: torch.compile(nn.DataParallel(m)),  # '_orig_mod.module.'
        lambda m: nn.DataParallel(torch.compile(m)),  # 'module._orig_mod.'
    ],
    ids=["compiled", "compiled-data-parallel", "data-parallel-compiled"],
)
def test_wrapper_prefixes_in_any_combination(wrap, trained: nn.Module, tmp_path: Path):
    state = wrap(trained).state_dict()
    assert not any(k in trained.state_dict() for k in state)
    assert _same(_load(tmp_path, {"model": state}), trained)


def test_model_side_prefix(trained: nn.Module, tmp_path: Path):
    """A builder that returns a compiled model loads a plain state dict."""
    path = tmp_path / "w.pt"
    torch.save(trained.state_dict(), path)
    compiled = torch.compile(_net(seed=2))
    load_checkpoint(compiled, path, "test:net")
    assert _same(compiled._orig_mod, trained)


@pytest.mark.parametrize(
    "key", ["state_dict", "model_state_dict", "model", "state_dict_ema", "model_ema", "ema"]
)
def test_wrapper_keys(key: str, trained: nn.Module, tmp_path: Path):
    assert _same(_load(tmp_path, {key: trained.state_dict(), "epoch": 1}), trained)


def test_plain_weights_are_preferred_over_ema(trained: nn.Module, tmp_path: Path):
    ema = _net(seed=3)
    for ckpt in (
        {"state_dict_ema": ema.state_dict(), "state_dict": trained.state_dict()},
        {"model_ema": ema.state_dict(), "model": trained.state_dict()},
        {"ema": ema.state_dict(), "model_state_dict": trained.state_dict()},
    ):
        assert _same(_load(tmp_path, ckpt), trained)


def test_missing_num_batches_tracked_is_what_strict_pytorch_accepts(trained: nn.Module, tmp_path: Path):
    # a plain dict (no version metadata, as written by a dict comprehension or a converter)
    plain = {k: v for k, v in trained.state_dict().items() if not k.endswith("num_batches_tracked")}
    oracle = _net(seed=2)
    oracle.load_state_dict(dict(plain), strict=True)  # PyTorch accepts it
    got = _load(tmp_path, plain)
    assert _same(got, oracle)
    assert torch.equal(got[1].running_mean, trained[1].running_mean)
    # with the state dict's own version metadata, PyTorch's strict load refuses it, and so do we
    versioned = trained.state_dict()
    del versioned["1.num_batches_tracked"]
    with pytest.raises(RuntimeError, match="num_batches_tracked"):
        _net(seed=2).load_state_dict(versioned, strict=True)
    with pytest.raises(SpecError, match=r"1 missing keys \(e.g. '1.num_batches_tracked'\)"):
        _load(tmp_path, versioned)


def test_prefixed_without_metadata_keeps_strict_semantics(trained: nn.Module, tmp_path: Path):
    """DataParallel keys in a plain dict: renamed, then exactly what strict load accepts on the renamed
    dict (here: the missing counter is filled in, as PyTorch does for unversioned dicts)."""
    dp = {k: v for k, v in nn.DataParallel(trained).state_dict().items() if "num_batches" not in k}
    oracle = _net(seed=2)
    oracle.load_state_dict({k.removeprefix("module."): v for k, v in dp.items()}, strict=True)
    assert _same(_load(tmp_path, dp), oracle)


def test_a_wrong_checkpoint_is_refused_with_counts_and_examples(tmp_path: Path):
    other = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    oracle = _net(seed=2).load_state_dict(other.state_dict(), strict=False)  # PyTorch's own key check
    assert oracle.missing_keys and oracle.unexpected_keys
    with pytest.raises(SpecError) as err:
        _load(tmp_path, other.state_dict())
    text = str(err.value)
    assert "does not fit model.arch 'test:net'" in text
    assert f"{len(oracle.missing_keys)} missing keys (e.g. {oracle.missing_keys[0]!r}, " in text
    assert f"{len(oracle.unexpected_keys)} unexpected keys (e.g. '3.weight', '3.bias')" in text
    assert "use the checkpoint saved from this architecture" in text and "\n" not in text


def test_shape_mismatch_is_named(trained: nn.Module, tmp_path: Path):
    state = trained.state_dict()
    state["4.weight"] = torch.zeros(5, 4 * 6 * 6)
    state["4.bias"] = torch.zeros(5)
    with pytest.raises(
        SpecError, match=r"2 shape mismatches \(e.g. '4.weight': checkpoint \(5, 144\) vs model \(2, 144\)\)"
    ):
        _load(tmp_path, {"state_dict": state})


def test_a_backbone_prefix_names_the_fix(trained: nn.Module, tmp_path: Path):
    state = {f"backbone.{k}": v for k, v in trained.state_dict().items()}
    state["head.weight"] = torch.zeros(3, 2)
    with pytest.raises(SpecError) as err:
        _load(tmp_path, {"state_dict": state})
    text = str(err.value)
    assert "['state_dict'] does not fit" in text
    n = len(_net(seed=2).load_state_dict(state, strict=False).missing_keys)
    assert f"keys starting with 'backbone.' hold {n} of the {n} missing keys" in text
    assert "wrapper.backbone.state_dict()" in text


def test_a_pickled_whole_model_is_refused_with_the_whole_reason(trained: nn.Module, tmp_path: Path):
    path = tmp_path / "whole.pt"
    torch.save(trained, path)  # the whole model, pickled
    with pytest.raises(pickle.UnpicklingError) as raw:
        torch.load(path, weights_only=True)
    reason = unpickler_reason(str(raw.value))
    assert reason == (
        "Unsupported global: GLOBAL torch.nn.modules.container.Sequential was not an allowed global by "
        "default."
    )
    with pytest.raises(SpecError) as err:
        load_checkpoint(_net(seed=2), path, "test:net")
    text = str(err.value)
    assert reason in text  # whole, not cut
    assert "save model.state_dict()" in text
    assert "safe_globals" not in text and "allowlist" not in text and "weights_only=False" not in text
    assert "\n" not in text


def test_a_pickled_object_is_never_run(tmp_path: Path):
    ran = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (ran,))

    path = tmp_path / "evil.pt"
    torch.save(OrderedDict(weight=torch.zeros(1), evil=Evil()), path)
    with pytest.raises(
        SpecError, match=r"Unsupported global: GLOBAL \S+ was not an allowed global by default\. "
    ):
        load_checkpoint(_net(seed=2), path, "test:net")
    assert not ran.exists()


def test_dicts_without_weights(trained: nn.Module, tmp_path: Path):
    with pytest.raises(
        SpecError, match=r"keys 'epoch', 'optimizer' and no state dict \(looked under state_dict, "
    ):
        _load(tmp_path, {"epoch": 3, "optimizer": {"lr": 0.1}})
    with pytest.raises(SpecError, match=r"holds 2 state dicts \('a', 'b'\); save the one to audit alone"):
        _load(tmp_path, {"a": trained.state_dict(), "b": trained.state_dict()})
    # one state dict under an unusual key is found
    assert _same(_load(tmp_path, {"weights": trained.state_dict(), "step": 10}), trained)


def test_load_model_with_a_data_parallel_torchvision_checkpoint(tmp_path: Path):
    """End to end through the spec's model section: a torchvision name and a DataParallel checkpoint."""
    import torchvision

    torch.manual_seed(5)
    src = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pt"
    torch.save({"state_dict": nn.DataParallel(src).state_dict(), "epoch": 9}, path)
    model = load_model(ModelConfig("resnet18", checkpoint=str(path)))
    assert _same(model, src)
    assert not _same(load_model(ModelConfig("resnet18")), src)
