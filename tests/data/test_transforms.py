"""The eval transform against torchvision's own: the built-in one equals the standard PIL pipeline on real
JPEGs; a spec-named transform (``model.transform``) is applied verbatim, described by numbers that
reproduce it, and every bad one is an error naming ``model.transform``."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest
import torch
from PIL import Image
from torchvision import models, transforms

from neurodis.config import spec_from_dict
from neurodis.data.probe import decode
from neurodis.data.transforms import describe_transform, load_transform, preprocess
from neurodis.io.tables import read_table
from neurodis.models.loading import resolve_preprocess
from neurodis.models.tiny import TinyCNN
from neurodis.orchestration.audit import run_audit
from neurodis.orchestration.runners import LocalRunner
from neurodis.sections import ModelConfig, PreprocessConfig, TransformPreprocess
from neurodis.types import SpecError
from tests.reference import brute


def write_jpegs(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """Photo-like RGB JPEGs of random non-square sizes between 300 and 500 pixels (smooth colour fields
    with grain, saved at quality 90)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        h, w = rng.integers(300, 501, 2)
        while h == w:
            h, w = rng.integers(300, 501, 2)
        coarse = Image.fromarray(rng.integers(0, 256, (h // 16 + 2, w // 16 + 2, 3), dtype=np.uint8))
        field = np.asarray(coarse.resize((int(w), int(h)), Image.Resampling.BICUBIC), np.int16)
        grain = rng.integers(-12, 13, field.shape)
        p = folder / f"photo{i:02d}.jpg"
        Image.fromarray(np.clip(field + grain, 0, 255).astype(np.uint8)).save(p, quality=90)
        paths.append(p)
    return paths


def standard(pre: PreprocessConfig) -> transforms.Compose:
    return transforms.Compose(
        [
            transforms.Resize(pre.resize),
            transforms.CenterCrop(pre.crop),
            transforms.ToTensor(),
            transforms.Normalize(pre.mean, pre.std),
        ]
    )


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    return write_jpegs(tmp_path_factory.mktemp("photos") / "probe" / "photo", 6)


@pytest.mark.parametrize(
    "pre",
    [
        PreprocessConfig(resize=32, crop=32),
        PreprocessConfig(resize=36, crop=32, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.25)),
        PreprocessConfig(resize=256, crop=224),
    ],
    ids=["32", "36-32", "256-224"],
)
def test_builtin_preprocess_equals_torchvision_eval_transform_on_pil_images(photos, pre):
    t = standard(pre)
    for p in photos:
        with Image.open(p) as im:
            want = t(im.convert("RGB"))
        got = preprocess(decode(str(p)), pre)
        assert got.dtype == torch.float32 and got.shape == want.shape == (3, pre.crop, pre.crop)
        assert (got - want).abs().max().item() <= 1e-5 * want.abs().max().item()


def test_images_of_the_input_size_are_not_resampled():
    """The testbed's case: 64-pixel images for a 64-pixel input are only normalised."""
    pixels = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    pre = PreprocessConfig(resize=64, crop=64, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    want = (torch.from_numpy(pixels).permute(2, 0, 1).float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(preprocess(pixels, pre), want, rtol=0, atol=1e-6)


def _pil(p: Path) -> Image.Image:
    with Image.open(p) as im:
        return im.convert("RGB")


def test_a_named_transform_is_used_verbatim(photos, user_module: str, caplog):
    ref = f"{user_module}:transform"
    desc = resolve_preprocess(ModelConfig(arch=f"{user_module}:build", transform=ref), TinyCNN())
    assert isinstance(desc, TransformPreprocess) and desc.transform == ref
    # the numbers read off the Compose; mean and std measured from its outputs
    assert (desc.resize, desc.crop) == (40, 32)
    np.testing.assert_allclose(desc.mean, (0.4, 0.5, 0.6), atol=1e-6)
    np.testing.assert_allclose(desc.std, (0.2, 0.25, 0.3), atol=1e-6)
    t = transforms.Compose(
        [
            transforms.Resize(40),
            transforms.CenterCrop(32),
            transforms.ToTensor(),
            transforms.Normalize([0.4, 0.5, 0.6], [0.2, 0.25, 0.3]),
        ]
    )
    for p in photos:
        assert torch.equal(preprocess(decode(str(p)), desc), t(_pil(p)))
    # a transform without readable geometry: used as is, the centred square assumed for mapping back
    with caplog.at_level(logging.WARNING):
        squash = describe_transform(f"{user_module}:squash")
    assert (squash.resize, squash.crop) == (32, 32) and "its resize is not readable" in caplog.text
    for p in photos[:2]:
        want = transforms.ToTensor()(_pil(p).resize((32, 32)))
        assert torch.equal(preprocess(decode(str(p)), squash), want)


def test_a_torchvision_preset_is_described_by_numbers_that_reproduce_it(photos, user_module: str):
    """``weights.transforms()`` is used verbatim; its numbers, through the built-in transform, give the same
    input: so patches mapped back to image pixels with them are where the model looked."""
    desc = describe_transform(f"{user_module}:preset")
    t = models.ResNet50_Weights.DEFAULT.transforms()
    assert (desc.resize, desc.crop) == (232, 224)
    np.testing.assert_allclose(desc.mean, t.mean, atol=1e-6)
    np.testing.assert_allclose(desc.std, t.std, atol=1e-6)
    builtin = PreprocessConfig(resize=desc.resize, crop=desc.crop, mean=desc.mean, std=desc.std)
    for p in photos[:3]:
        want = t(_pil(p))
        assert torch.equal(preprocess(decode(str(p)), desc), want)
        torch.testing.assert_close(preprocess(decode(str(p)), builtin), want, rtol=0, atol=1e-5)


def test_an_edited_transform_changes_the_description(user_module: str):
    """The description enters every stage's config hash: a transform with the same numbers but other
    outputs (another resampling filter) differs in its fingerprint, so its outputs are never reused."""
    a, b = (
        describe_transform(f"{user_module}:transform"),
        describe_transform(f"{user_module}:transform_bicubic"),
    )
    assert (a.resize, a.crop, a.mean, a.std) == (b.resize, b.crop, b.mean, b.std)
    assert a.fingerprint != b.fingerprint and a != b
    load_transform.cache_clear()  # built again: the same description
    assert describe_transform(f"{user_module}:transform") == a


def test_the_forward_stage_runs_the_named_transform(photos, user_module: str, tmp_path: Path):
    """Activations of the audit equal the model's on the transform's outputs (hooks, no neurodis code);
    a corrupt file is still only a reject."""
    probe = photos[0].parents[1]
    (probe / "photo" / "zz_broken.jpg").write_bytes(photos[0].read_bytes()[:300])
    run = tmp_path / "run"
    spec = spec_from_dict(
        {
            "model": {"arch": f"{user_module}:build", "transform": f"{user_module}:transform"},
            "data": {"kind": "imagefolder", "root": str(probe)},
            "layers": ["layer1"],
            "forward": {"top_k": 2, "batch_size": 4},
            "output": str(run),
        }
    )
    try:
        summary = run_audit(spec, runner=LocalRunner())
    finally:
        (probe / "photo" / "zz_broken.jpg").unlink()
    assert summary["stages"]["forward"]["images"] == len(photos)
    assert summary["stages"]["forward"]["rejected"] == 1
    assert [Path(p).name for p in read_table(run, "rejects")["path"].to_pylist()] == ["zz_broken.jpg"]
    t = transforms.Compose(
        [
            transforms.Resize(40),
            transforms.CenterCrop(32),
            transforms.ToTensor(),
            transforms.Normalize([0.4, 0.5, 0.6], [0.2, 0.25, 0.3]),
        ]
    )
    x = torch.stack([t(_pil(p)) for p in photos])
    out = brute.full_outputs(TinyCNN(seed=3).eval(), x, ["layer1"])["layer1"]
    mean, mx, _, _ = brute.summaries(out)
    acts = read_table(run, "activations").filter(ds.field("layer") == "layer1").sort_by("image_id")
    assert acts["image_id"].to_pylist() == list(range(len(photos)))
    np.testing.assert_allclose(np.array(acts["mean"].to_pylist()), mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.array(acts["max"].to_pylist()), mx, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "name, match",
    [
        ("nothing_here", r"model.transform '{m}:nothing_here': module '{m}' \(.*\) has no attribute"),
        ("not_a_transform", r"model.transform '{m}:not_a_transform' returned a int, not a transform"),
        ("wrong_shape", r"model.transform '{m}:wrong_shape' returned shape \[3, \d+, 40\]; .*CenterCrop"),
        ("uint8", r"model.transform '{m}:uint8' returned a torch.uint8 tensor; .*ToTensor"),
        ("broken", r"model.transform '{m}:broken': calling it raised RuntimeError: no weights here"),
    ],
)
def test_a_bad_transform_is_an_error_naming_model_transform(name, match, user_module, probe_dir, tmp_path):
    spec = spec_from_dict(
        {
            "model": {"arch": "neurodis.models.tiny:tiny_cnn", "transform": f"{user_module}:{name}"},
            "data": {"kind": "imagefolder", "root": str(probe_dir)},
            "layers": ["layer1"],
            "output": str(tmp_path / "run"),
        }
    )
    with pytest.raises(SpecError, match=match.format(m=user_module)) as err:
        run_audit(spec, runner=LocalRunner())
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run" / "activations").exists()


@pytest.mark.parametrize(
    "model, match",
    [
        (
            {"transform": "torchvision.transforms"},
            r"model.transform 'torchvision.transforms': name a zero-arg",
        ),
        (
            {"transform": "no_such_tf_mod:make"},
            r"model.transform 'no_such_tf_mod:make': cannot import module",
        ),
        (
            {"transform": "torchvision.models:ResNet50_Weights", "preprocess": {"resize": 32, "crop": 32}},
            r"model.transform replaces model.preprocess: give one of them",
        ),
    ],
)
def test_bad_transform_specs(model, match, probe_dir, tmp_path):
    raw = {
        "model": {"arch": "neurodis.models.tiny:tiny_cnn", **model},
        "data": {"kind": "imagefolder", "root": str(probe_dir)},
        "layers": ["layer1"],
        "output": str(tmp_path / "run"),
    }
    with pytest.raises(SpecError, match=match):
        run_audit(spec_from_dict(raw), runner=LocalRunner())
