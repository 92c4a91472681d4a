from __future__ import annotations

from pathlib import Path

import yaml

from neurodis.cli import main
from neurodis.schemas import TABLES, render_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_schemas_doc_is_generated_from_schemas():
    assert (ROOT / "docs" / "schemas.md").read_text() == render_markdown(), "run `make schemas`"


def test_every_row_carries_its_full_key():
    for t in TABLES.values():
        for k in t.key:
            assert k in t.schema.names and not t.schema.field(k).nullable, (t.name, k)


def test_cli_layers_and_audit_and_status(tmp_path: Path, probe_dir: Path, capsys):
    assert main(["layers", "resnet18"]) == 0
    out = capsys.readouterr().out
    assert "layer4.1" in out and "512" in out and "[512, 7, 7]" in out
    spec = tmp_path / "s.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "model": {"arch": "neurodis.models.tiny:tiny_cnn"},
                "data": {"kind": "imagefolder", "root": str(probe_dir)},
                "layers": ["layer1"],
                "forward": {"top_k": 2, "shard_size": 5},
                "output": str(tmp_path / "run"),
            }
        )
    )
    assert main(["audit", str(spec), "--local"]) == 0
    out = capsys.readouterr().out
    assert "12 images, 0 rejected" in out
    assert main(["status", str(tmp_path / "run")]) == 0
    assert "forward: 5 committed, 0 pending" in capsys.readouterr().out


def test_cli_errors_are_one_line(tmp_path: Path, probe_dir: Path, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "model": {"arch": "neurodis.models.tiny:tiny_cnn"},
                "data": {"kind": "imagefolder", "root": str(probe_dir)},
                "layers": ["layr1"],
            }
        )
    )
    assert main(["audit", str(spec), "--local"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("neurodis: error: layers: unknown module path 'layr1' (close matches: 'layer1'")
    assert main(["status", str(tmp_path)]) == 1
    assert "not a neurodis run directory" in capsys.readouterr().err


def _forward_run(tmp_path: Path, probe_dir: Path) -> Path:
    spec = tmp_path / "s.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "model": {"arch": "neurodis.models.tiny:tiny_cnn"},
                "data": {"kind": "imagefolder", "root": str(probe_dir)},
                "layers": ["layer1"],
                "forward": {"top_k": 2},
                "output": str(tmp_path / "run"),
            }
        )
    )
    assert main(["audit", str(spec), "--local"]) == 0
    return tmp_path / "run"


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("neurodis: error: "), err
    return err[0]


def test_run_dir_verbs_refuse_bad_runs_and_neurons_in_one_line(tmp_path: Path, probe_dir: Path, capsys):
    run = _forward_run(tmp_path, probe_dir)
    image = str(next(probe_dir.glob("*/*.png")))
    capsys.readouterr()
    assert main(["explain", str(run), "layer1/3"]) == 0  # a neuron of the run: its report
    assert capsys.readouterr().out.startswith("layer1/3: max")
    cases = [  # (argv, exit code, words of the one-line error)
        (["explain", str(run), "17"], 2, ["'17' is not 'layer/channel'"]),
        (["explain", str(run), "layer9/0"], 2, ["did not audit layer 'layer9'", "its layers: ['layer1']"]),
        (["explain", str(run), "vgg/layer1/0"], 2, ["names model 'vgg'", "audited 'tiny_cnn'"]),
        (["explain", str(run), "layer1/8"], 2, ["layer 'layer1' has channels 0..7"]),
        (["explain", str(tmp_path / "nope"), "layer1/0"], 1, ["nope does not exist"]),
        (["explain", str(probe_dir), "layer1/0"], 1, ["is not a neurodis run directory"]),
        (["assign", str(run), image, "--neuron", "layer9/0"], 2, ["its layers: ['layer1']"]),
        (["assign", str(run), image, "--neuron", "layer1/0"], 2, ["no PURE index for layer 'layer1'"]),
        (["assign", str(tmp_path / "nope"), image, "--neuron", "layer1/0"], 1, ["does not exist"]),
        (["status", str(tmp_path / "nope")], 1, ["does not exist"]),
        (["diff", str(tmp_path / "nope"), str(run)], 2, ["is not a neurodis run directory"]),
    ]
    for argv, rc, words in cases:
        assert main(argv) == rc, argv
        line = _one_line_error(capsys)
        assert all(w in line for w in words), (argv, line)
