"""Bad input gets one clear line naming the thing and the fix, before any compute."""

from __future__ import annotations

import os
import pickle
import textwrap
from pathlib import Path

import pytest
import torch

from neurodis.config import load_spec, spec_from_dict
from neurodis.orchestration.audit import run_audit
from neurodis.orchestration.runners import LocalRunner
from neurodis.types import SpecError

# the README's example spec
EXAMPLE = textwrap.dedent("""
    model:
      arch: resnet18                 # a torchvision model name, or "package.module:callable"
      checkpoint: weights/resnet18.pt  # optional state_dict, loaded with torch.load(weights_only=True)
      input_size: 224
      preprocess: {resize: 224, crop: 224, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}
    data:
      kind: imagefolder              # imagefolder | manifest (CSV/Parquet of path,label) | synthetic
      root: data/probe
    layers: [layer3, layer4]         # module paths, or "all"
    stages: [forward]
    forward:
      top_k: 100
      batch_size: 64
    output: runs/probe-audit
""")


def _tiny(probe: Path, **model) -> dict:
    return {
        "model": {"arch": "neurodis.models.tiny:tiny_cnn", **model},
        "data": {"kind": "imagefolder", "root": str(probe)},
        "layers": ["layer1"],
    }


def test_example_spec_works_as_written(tmp_path: Path, monkeypatch):
    import torchvision

    from neurodis.io.tables import read_table
    from tests.conftest import write_images

    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights").mkdir()
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "weights" / "resnet18.pt")
    write_images(tmp_path / "data" / "probe", per_class=3, size=(240, 260))
    (tmp_path / "spec.yaml").write_text(EXAMPLE)
    spec = load_spec(tmp_path / "spec.yaml")
    assert spec.model.preprocess is not None and spec.model.preprocess.crop == 224
    assert spec.layers == ("layer3", "layer4") and spec.forward.top_k == 100
    summary = run_audit(spec, runner=LocalRunner())
    assert summary["stages"]["forward"]["images"] == 6
    refs = read_table(tmp_path / "runs" / "probe-audit", "references")
    assert set(refs["layer"].to_pylist()) == {"layer3", "layer4"}
    assert refs.num_rows == (256 + 512) * 6  # top_k (100) > 6 images: 6 ranks per neuron


@pytest.mark.parametrize(
    "raw, match",
    [
        ({"model": {"arch": "resnet18"}}, r"data: required key is missing"),
        ({"model": {"arch": "resnet18"}, "data": {"kind": "imagefolder"}}, r"data.root"),
        (
            {"model": {"arch": "resnet18"}, "data": {"kind": "imgfolder", "root": "x"}},
            r"did you mean 'imagefolder'",
        ),
        (
            {"model": {"arch": "resnet18"}, "data": {"kind": "imagefolder", "root": "x"}, "forwrd": {}},
            r"forwrd: unknown key \(did you mean 'forward'\?\)",
        ),
        (
            {
                "model": {"arch": "resnet18"},
                "data": {"kind": "imagefolder", "root": "x"},
                "forward": {"top_k": 0},
            },
            r"forward.top_k",
        ),
        (
            {
                "model": {"arch": "resnet18"},
                "data": {"kind": "imagefolder", "root": "x"},
                "forward": {"top_k": "many"},
            },
            r"forward.top_k: expected an integer",
        ),
        (
            {
                "model": {"arch": "resnet18"},
                "data": {"kind": "imagefolder", "root": "x"},
                "stages": ["forwad"],
            },
            r"did you mean 'forward'",
        ),
        ({"model": {"arch": "os.system('x')"}, "data": {"kind": "imagefolder", "root": "x"}}, r"model.arch"),
        (
            {
                "model": {"arch": "resnet18", "preprocess": {"resize": 10, "crop": 20}},
                "data": {"kind": "imagefolder", "root": "x"},
            },
            r"crop 20 is larger",
        ),
    ],
)
def test_bad_spec_values(raw, match):
    with pytest.raises(SpecError, match=match):
        spec_from_dict(raw)


def test_bad_yaml_and_missing_file(tmp_path: Path):
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("model: [unclosed")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(tmp_path / "bad.yaml")


def test_unknown_layer_lists_close_matches(probe_dir: Path, tmp_path: Path):
    raw = _tiny(probe_dir)
    raw["layers"] = ["layer2.O"]
    with pytest.raises(SpecError, match=r"unknown module path 'layer2.O' \(close matches: 'layer2.0'") as err:
        run_audit(spec_from_dict(raw), out=tmp_path / "r", runner=LocalRunner())
    assert "stem.0" not in str(err.value)  # a few close matches, not every path of the model
    assert not (tmp_path / "r").exists()


def test_unknown_arch(probe_dir: Path, tmp_path: Path):
    raw = _tiny(probe_dir)
    raw["model"] = {"arch": "resnet81"}
    with pytest.raises(SpecError, match=r"unknown architecture 'resnet81' \(did you mean 'resnet18'\?\)"):
        run_audit(spec_from_dict(raw), out=tmp_path / "r", runner=LocalRunner())
    raw["model"] = {"arch": "neurodis.models.tiny:nothing_here"}
    with pytest.raises(SpecError, match="has no attribute 'nothing_here'"):
        run_audit(spec_from_dict(raw), out=tmp_path / "r", runner=LocalRunner())
    raw["model"] = {"arch": "no_such_pkg.mod:build"}
    with pytest.raises(SpecError, match="cannot import module 'no_such_pkg.mod'"):
        run_audit(spec_from_dict(raw), out=tmp_path / "r", runner=LocalRunner())


class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())  # not `print`: a Ray session replaces the builtin with its own


@pytest.mark.parametrize(
    "kind, match",
    [
        ("missing", r"does not exist"),
        ("other_arch", r"does not fit model.arch .*missing keys"),
        ("shapes", r"shape mismatches \(e.g. 'fc.weight': checkpoint \(3, 16\) vs model \(5, 16\)\)"),
        (
            "pickle",
            r"holds pickled Python objects, which torch.load\(weights_only=True\) refuses: .*"
            r"GLOBAL \w+\.getcwd\b.*save model.state_dict\(\)",
        ),
        ("garbage", r"not a readable torch checkpoint"),
        ("not_dict", r"holds a list, not a state dict; save model.state_dict\(\)"),
    ],
)
def test_bad_checkpoints(kind, match, probe_dir: Path, tmp_path: Path):
    import torchvision

    from neurodis.models.tiny import TinyCNN

    ckpt = tmp_path / "w.pt"
    if kind == "other_arch":
        torch.save(torchvision.models.resnet18(weights=None).state_dict(), ckpt)
    elif kind == "shapes":
        torch.save(TinyCNN(num_classes=3).state_dict(), ckpt)
    elif kind == "pickle":
        torch.save({"fc.weight": torch.zeros(1), "evil": _Evil()}, ckpt, pickle_module=pickle)
    elif kind == "garbage":
        ckpt.write_bytes(b"\x00not a checkpoint")
    elif kind == "not_dict":
        torch.save([torch.zeros(2)], ckpt)
    with pytest.raises(SpecError, match=match) as err:
        run_audit(
            spec_from_dict(_tiny(probe_dir, checkpoint=str(ckpt))), out=tmp_path / "r", runner=LocalRunner()
        )
    assert "\n" not in str(err.value)


def test_empty_dataset_is_a_clear_error(tmp_path: Path):
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    (tmp_path / "empty" / "cls" / "notes.txt").write_text("no images here")
    with pytest.raises(SpecError, match="lists no images"):
        run_audit(spec_from_dict(_tiny(tmp_path / "empty")), out=tmp_path / "r", runner=LocalRunner())
    with pytest.raises(SpecError, match="is not a folder"):
        run_audit(spec_from_dict(_tiny(tmp_path / "missing")), out=tmp_path / "r", runner=LocalRunner())


def test_all_images_rejected_fails_with_pointer_to_rejects(tmp_path: Path):
    from neurodis.orchestration.audit import StageFailed
    from tests.conftest import write_images

    # truncated PNGs: their headers open (the preflight samples headers), their pixels do not decode
    for p in write_images(tmp_path / "p", per_class=3, classes=("c",)):
        p.write_bytes(p.read_bytes()[:80])
    with pytest.raises(StageFailed, match="all 3 probe images were rejected"):
        run_audit(spec_from_dict(_tiny(tmp_path / "p")), out=tmp_path / "r", runner=LocalRunner())


def test_manifest_probe_set(tmp_path: Path):
    from neurodis.io.tables import read_table
    from tests.conftest import write_images

    paths = write_images(tmp_path / "imgs", per_class=2)
    (tmp_path / "m.csv").write_text(
        "path,label\n" + "".join(f"{p.relative_to(tmp_path)},L{i % 2}\n" for i, p in enumerate(paths))
    )
    raw = _tiny(tmp_path)
    raw["data"] = {"kind": "manifest", "manifest": str(tmp_path / "m.csv")}
    run_audit(spec_from_dict(raw), out=tmp_path / "r", runner=LocalRunner())
    images = read_table(tmp_path / "r", "images")
    assert images["label"].to_pylist() == ["L0", "L1", "L0", "L1"]
    assert images["path"].to_pylist() == [str(p) for p in paths]
