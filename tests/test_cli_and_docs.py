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
