"""The preflight: every problem a spec implies, found on the driver before Ray starts and before any
compute, reported together, one line each naming the key and the fix. And `neurodis status`, which reads
files only: no model, no torch, no Ray."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from neurodis.config import spec_from_dict
from neurodis.models.tiny import TinyCNN
from neurodis.orchestration.audit import run_audit, stage_status
from neurodis.orchestration.runners import LocalRunner
from neurodis.preflight import run_preflight
from neurodis.types import SpecError
from tests.conftest import write_images

ROOT = Path(__file__).resolve().parents[1]
TINY = "neurodis.models.tiny:tiny_cnn"  # 5 outputs; layers stem, layer1, layer1.0, ..., layer2, fc


def _raw(probe: Path, **extra) -> dict:
    return {
        "model": {"arch": TINY},
        "data": {"kind": "imagefolder", "root": str(probe)},
        "layers": ["layer1"],
        "forward": {"top_k": 4},
        **extra,
    }


def _problems(raw: dict) -> tuple[str, ...]:
    with pytest.raises(SpecError) as err:
        run_preflight(spec_from_dict(raw))
    return err.value.problems


def _explain(probe: Path, **explain) -> dict:
    return _raw(probe, stages=["forward", "explain"], explain=explain)


@pytest.fixture()
def classes_file(tmp_path: Path) -> Path:
    p = tmp_path / "classes.txt"
    p.write_text("ant\nbee\ncow\ndoe\nelk\n")  # the 5 outputs of the tiny CNN
    return p


def test_a_good_spec_passes_and_hands_back_what_it_loaded(probe_dir: Path, classes_file: Path):
    raw = _explain(probe_dir, classes=str(classes_file))
    write_images(probe_dir, per_class=2, classes=("ant",))  # a class of the model among the probe labels
    inputs = run_preflight(spec_from_dict(raw))
    assert len(inputs.records or []) == 14 and isinstance(inputs.model, TinyCNN)
    assert "layer1" in [i.path for i in inputs.layers or []]


@pytest.mark.parametrize(
    "change, key, fix",
    [
        ({"layers": ["layr1"]}, "layers: unknown module path 'layr1'", "neurodis layers"),
        (
            {"model": {"arch": TINY, "checkpoint": "nope.pt"}},
            "model.checkpoint 'nope.pt' does not exist",
            "fix",
        ),
        ({"data": {"kind": "imagefolder", "root": "no/such/folder"}}, "data.root 'no/such/folder'", "point"),
        (
            {"data": {"kind": "manifest", "manifest": "no.csv"}},
            "data.manifest 'no.csv' does not exist",
            "give",
        ),
        (
            {"stages": ["forward", "embed"], "embed": {"embedder": "toy", "concepts": "no_such.txt"}},
            "embed.concepts 'no_such.txt'",
            "point",
        ),
        ({"stages": ["forward", "embed"], "embed": {"embedder": "orcale-a"}}, "embed.embedder", "oracle-a"),
        (
            {"stages": ["forward", "pure"], "pure": {"n_ref": 4, "eval_embedder": "no_pkg.mod:Emb"}},
            "pure.eval_embedder: embedder 'no_pkg.mod:Emb'",
            "install",
        ),
        (
            {"stages": ["forward", "pure"], "pure": {"n_ref": 4, "lower_layers": {"layer1": "stm"}}},
            "pure.lower_layers: unknown module path 'stm'",
            "neurodis layers",
        ),
        (
            {
                "stages": ["forward", "explain"],
                "explain": {"layers": ["layer9"], "ablation": False, "top_impact": False},
                "layers": "all",
            },
            "explain.layers: unknown module path 'layer9'",
            "neurodis layers",
        ),
    ],
)
def test_each_bad_input_is_one_line_naming_the_key(change, key, fix, probe_dir: Path):
    problems = _problems({**_raw(probe_dir), **change})
    assert len(problems) == 1 and "\n" not in problems[0], problems
    assert problems[0].startswith(key) and fix in problems[0], problems[0]


def test_a_bad_checkpoint_file(probe_dir: Path, tmp_path: Path):
    (tmp_path / "w.pt").write_bytes(b"\x00not a checkpoint")
    torch.save(TinyCNN(num_classes=3).state_dict(), tmp_path / "other.pt")
    (msg,) = _problems(_raw(probe_dir, model={"arch": TINY, "checkpoint": str(tmp_path / "w.pt")}))
    assert msg.startswith("model.checkpoint") and "not a readable torch checkpoint" in msg
    (msg,) = _problems(_raw(probe_dir, model={"arch": TINY, "checkpoint": str(tmp_path / "other.pt")}))
    assert "does not fit model.arch" in msg and "'fc.weight': checkpoint (3, 16) vs model (5, 16)" in msg


def test_a_builder_that_raises(probe_dir: Path, tmp_path: Path, monkeypatch):
    (tmp_path / "broken_builder.py").write_text("def build():\n    raise TypeError('width must be even')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    (msg,) = _problems(_raw(probe_dir, model={"arch": "broken_builder:build"}))
    assert msg.startswith("model.arch 'broken_builder:build': building the model failed (TypeError: width")


def test_a_folder_of_files_that_are_not_images(tmp_path: Path):
    (tmp_path / "p" / "c").mkdir(parents=True)
    for i in range(3):
        (tmp_path / "p" / "c" / f"{i}.png").write_bytes(b"not a png")
    (msg,) = _problems(_raw(tmp_path / "p"))
    assert msg.startswith("data.root: none of the 3 sampled probe images opens as an image")
    write_images(tmp_path / "p", per_class=1, classes=("c",))  # one real image among them: no problem
    run_preflight(spec_from_dict(_raw(tmp_path / "p")))


def test_missing_embedder_checkpoint(probe_dir: Path):
    (msg,) = _problems(
        _raw(
            probe_dir,
            stages=["forward", "embed"],
            embed={"embedder": "open_clip:ViT-B-32", "concepts": "testbed"},
        )
    )
    assert msg.startswith("embed.checkpoint is missing: open_clip model 'ViT-B-32' needs weights")
    (msg,) = _problems(
        {
            **_explain(probe_dir, explainers=["open_clip:ViT-B-32"], ablation=False, top_impact=False),
            "embed": {"embedder": "toy"},  # so the explainer's weights cannot come from embed.checkpoint
        }
    )
    assert msg.startswith("explain.checkpoints[open_clip:ViT-B-32] is missing") and "'random'" in msg


def test_unmet_explainer_requirements(tmp_path: Path):
    paths = write_images(tmp_path / "imgs", per_class=2)
    (tmp_path / "m.csv").write_text("path\n" + "".join(f"{p}\n" for p in paths))  # no labels
    raw = _explain(tmp_path, explainers=["label"], ablation=False, top_impact=False)
    raw["data"] = {"kind": "manifest", "manifest": str(tmp_path / "m.csv")}
    (msg,) = _problems(raw)
    assert msg.startswith("explain.explainers: 'label' needs class labels, and this probe set has none")
    assert "'annotations'" in msg and "\n" not in msg
    # the annotations explainer needs annotations: none here (no file, no metadata.parquet)
    raw["explain"]["explainers"] = ["annotations"]
    (msg,) = _problems(raw)
    assert msg.startswith("explain.explainers: 'annotations' needs per-image concept annotations")
    assert "explain.annotations: auto" in msg and "'path' and 'concepts'" in msg and "\n" not in msg
    # ... and with a file, the annotations explainer does not need class labels
    (tmp_path / "ann.csv").write_text("path,concepts\n" + "".join(f"{p},red|dots\n" for p in paths))
    raw["explain"]["annotations"] = str(tmp_path / "ann.csv")
    run_preflight(spec_from_dict(raw))
    # a file that names no probe image: no concept to explain with
    (tmp_path / "other.csv").write_text("path,concepts\nnowhere.png,red\n")
    raw["explain"]["annotations"] = str(tmp_path / "other.csv")
    (msg,) = _problems(raw)
    assert msg.startswith("explain.explainers: 'annotations' found no concept annotated on any probe image")
    # annotations: none refuses the annotations explainer when the spec is read, before any I/O
    raw["explain"]["annotations"] = "none"
    with pytest.raises(
        SpecError, match=r"^explain.explainers: 'annotations' needs .* explain.annotations is none"
    ):
        spec_from_dict(raw)
    raw["explain"] = {"explainers": ["toy"], "ablation": False, "top_impact": False}
    raw["embed"] = {"embedder": "toy", "calibration": "off"}
    (msg,) = _problems(raw)
    assert msg.startswith(
        "explain: embedder 'toy' needs calibrated probabilities but embed.calibration is off"
    )
    raw["explain"]["annotations"] = str(tmp_path / "missing.csv")
    raw["explain"]["explainers"] = ["label"]
    (msg,) = _problems(raw)
    assert msg.startswith("explain.annotations") and "does not exist" in msg


def test_probe_labels_that_are_not_the_models_classes(probe_dir: Path, classes_file: Path):
    # the probe set's classes are cat and dog; the model's 5 outputs are named ant ... elk
    (msg,) = _problems(_explain(probe_dir, classes=str(classes_file)))
    assert msg.startswith(
        "data.root: ablation scores and Top Impact need probe images labelled with the model"
    )
    assert "'cat', 'dog'" in msg and "explain.classes" in msg
    # without class names: 2 probe labels cannot name 5 outputs
    (msg,) = _problems(_explain(probe_dir))
    assert "the model has 5 outputs but 2 class names are known" in msg and "explain.classes" in msg
    run_preflight(spec_from_dict(_explain(probe_dir, ablation=False, top_impact=False)))  # labels unused


def test_every_problem_is_reported_together(probe_dir: Path, tmp_path: Path):
    raw = _raw(
        probe_dir,
        layers=["layr1", "layer2.O"],
        stages=["forward", "embed"],
        embed={"embedder": "open_clip:ViT-B-32", "concepts": str(tmp_path / "missing.txt")},
    )
    problems = _problems(raw)
    assert len(problems) == 4, problems
    assert problems[0].startswith("layers: unknown module path 'layr1'")
    assert problems[1].startswith("layers: unknown module path 'layer2.O'")
    assert problems[2].startswith("embed.checkpoint is missing")
    assert problems[3].startswith(f"embed.concepts {str(tmp_path / 'missing.txt')!r} is neither a file")
    with pytest.raises(SpecError) as err:
        run_audit(spec_from_dict(raw), out=tmp_path / "r", runner=LocalRunner())
    text = str(err.value)
    assert text.startswith("4 problems, fix each:\n  - layers: unknown module path 'layr1'")
    assert len(text.splitlines()) == 5 and not (tmp_path / "r").exists()


def test_unknown_layer_lists_a_few_close_matches(probe_dir: Path):
    resnet = _raw(probe_dir, model={"arch": "resnet18", "input_size": 64}, layers=["layer4.1.con1"])
    (msg,) = _problems(resnet)
    listed = msg.split("(close matches: ")[1].split(")")[0].split(", ")
    assert listed[0] == "'layer4.1.conv1'" and 1 <= len(listed) <= 5, msg
    assert len(msg) < 250 and "layer1.0.bn1" not in msg, msg  # resnet18 has ~60 paths


def test_cross_section_problems_are_reported_together(probe_dir: Path):
    raw = _raw(probe_dir, stages=["forward", "pure", "embed", "psi"], pure={"n_ref": 6}, psi={"top_k": 6})
    with pytest.raises(SpecError) as err:
        spec_from_dict(raw)
    assert [p.split("=")[0] for p in err.value.problems] == ["pure.n_ref", "psi.top_k"]


def test_spec_error_keeps_its_problems_through_pickling():
    err = pickle.loads(pickle.dumps(SpecError(["a: one; fix it", "b: two; fix that"])))
    assert err.problems == ("a: one; fix it", "b: two; fix that") and str(err).count("\n") == 2


def _cli(tmp_path: Path, code: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=cwd or tmp_path,
    )


def test_cli_audit_fails_before_ray_starts(probe_dir: Path, tmp_path: Path, classes_file: Path):
    """`neurodis audit` (Ray runner, not --local) on each bad spec: exit code 2, the key named, and Ray
    never imported, so never started."""
    (tmp_path / "bad.pt").write_bytes(b"junk")
    cases = {
        "layers": _raw(probe_dir, layers=["layr1"]),
        "model.checkpoint": _raw(probe_dir, model={"arch": TINY, "checkpoint": str(tmp_path / "bad.pt")}),
        "embed.checkpoint": _raw(
            probe_dir, stages=["forward", "embed"], embed={"embedder": "open_clip:ViT-B-32"}
        ),
        "embed.concepts": _raw(
            probe_dir, stages=["forward", "embed"], embed={"embedder": "toy", "concepts": "x.txt"}
        ),
        "explain.explainers": _explain(probe_dir, explainers=["oracle-z"], ablation=False, top_impact=False),
        "data.root": _explain(probe_dir, classes=str(classes_file)),  # labels are not the model's classes
        "data.root ": _raw(tmp_path / "no_such_folder"),
    }
    specs = []
    for i, raw in enumerate(cases.values()):
        specs.append(str(tmp_path / f"s{i}.yaml"))
        Path(specs[-1]).write_text(yaml.safe_dump({**raw, "output": str(tmp_path / f"run{i}")}))
    r = _cli(
        tmp_path,
        """
        import json, sys
        from neurodis.cli import main
        codes = [main(["audit", s]) for s in sys.argv[1:]]
        print(json.dumps({"codes": codes, "ray": "ray" in sys.modules}))
        """,
        *specs,
    )
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out == {"codes": [2] * len(cases), "ray": False}, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("neurodis: error: ")]
    assert len(errors) == len(cases), r.stderr[-3000:]
    for key, line in zip(cases, errors):
        assert line.startswith(f"neurodis: error: {key.strip()}"), (key, line)
    assert not any((tmp_path / f"run{i}").exists() for i in range(len(cases)))


def test_status_reads_files_only(probe_dir: Path, tmp_path: Path, monkeypatch):
    """A run of a model whose builder the status process cannot import: status still reports, from the
    recorded plans and manifests, without importing torch."""
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "my_models.py").write_text("from neurodis.models.tiny import tiny_cnn as build\n")
    monkeypatch.syspath_prepend(str(tmp_path / "lib"))
    raw = _raw(probe_dir, model={"arch": "my_models:build"}, forward={"top_k": 2, "shard_size": 5})
    run_audit(spec_from_dict(raw), out=tmp_path / "run", runner=LocalRunner())
    spec = yaml.safe_load((tmp_path / "run" / "spec.yaml").read_text())
    spec["stages"] = ["forward", "pure", "later_method"]  # not planned yet, and unknown to this version
    (tmp_path / "run" / "spec.yaml").write_text(yaml.safe_dump(spec))
    other = tmp_path / "run" / "_plan" / "other_method"  # plans of a method this version does not know
    other.mkdir()
    (other / "step.json").write_text(json.dumps({"step": "s", "root": ".", "units": [["u0", "other", "h"]]}))
    assert stage_status(tmp_path / "run")["forward"]["committed"] == 5  # 3 shards, images, 1 merge

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = _cli(
        tmp_path,
        """
        import sys
        import neurodis.cli
        try:
            import my_models  # noqa: F401
            sys.exit("the builder must not be importable here")
        except ImportError:
            pass
        rc = neurodis.cli.main(["status", sys.argv[1]])
        print("torch imported:", "torch" in sys.modules, "rc:", rc)
        """,
        str(tmp_path / "run"),
        cwd=elsewhere,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.splitlines() == [
        "forward: 5 committed, 0 pending",
        "pure: not planned yet",
        "later_method: not planned yet (a stage this neurodis version does not know)",
        "other_method: 0 committed, 1 pending (next: u0) (a stage this neurodis version does not know)",
        "torch imported: False rc: 0",
    ], r.stdout + r.stderr[-2000:]


@pytest.mark.parametrize("make", ["missing", "empty", "not_yaml"])
def test_status_of_a_folder_that_is_not_a_run(make: str, tmp_path: Path, capsys):
    from neurodis.cli import main

    target = tmp_path / "x"
    if make != "missing":
        target.mkdir()
    if make == "not_yaml":
        (target / "spec.yaml").write_text("stages: [unclosed")
    assert main(["status", str(target)]) in (1, 2)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("neurodis: error: ") and "run directory" in err[0], err
