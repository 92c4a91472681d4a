"""A run directory holding another config's outputs is refused with the spec keys that changed (old ->
new), read from the run's stored spec.yaml, which keeps describing the outputs it holds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from neurodis.cli import main
from neurodis.config import spec_changes
from neurodis.io.manifest import StaleRunError
from neurodis.models.tiny import tiny_cnn


def test_spec_changes_lists_changed_keys_old_to_new():
    old = {
        "model": {"arch": "a", "preprocess": None},
        "layers": ["x"],
        "forward": {"top_k": 3},
        "stages": ["f"],
    }
    new = {
        "model": {"arch": "a", "preprocess": {"crop": 16}},
        "layers": ["x", "y"],
        "forward": {"top_k": 3, "seed": 1},
        "stages": ["f", "g"],  # what runs, not what the outputs are: left out
        "resources": {"workers": 2},
    }
    assert spec_changes(old, new) == [
        'model.preprocess: null -> {"crop": 16}',
        'layers: ["x"] -> ["x", "y"]',
        "forward.seed: (unset) -> 1",
    ]
    assert spec_changes(new, new) == []


def _spec(tmp_path: Path, probe: Path, top_k: int) -> Path:
    p = tmp_path / "s.yaml"
    p.write_text(
        yaml.safe_dump(
            {
                "model": {"arch": "neurodis.models.tiny:tiny_cnn", "checkpoint": str(tmp_path / "w.pt")},
                "data": {"kind": "imagefolder", "root": str(probe)},
                "layers": ["layer1"],
                "forward": {"top_k": top_k},
                "resources": {"workers": top_k},  # never hashed: never listed
                "output": str(tmp_path / "run"),
            }
        )
    )
    return p


def test_a_changed_spec_names_its_changed_keys(tmp_path: Path, probe_dir: Path, capsys):
    torch.save(tiny_cnn().state_dict(), tmp_path / "w.pt")
    assert main(["audit", str(_spec(tmp_path, probe_dir, 3)), "--local"]) == 0
    stored = (tmp_path / "run" / "spec.yaml").read_text()
    capsys.readouterr()
    for _ in range(2):  # the stored spec still describes the outputs, so a second try says the same
        assert main(["audit", str(_spec(tmp_path, probe_dir, 4)), "--local"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "stage 'forward' outputs from a different config" in err[0], err
        assert "(changed: forward.top_k: 3 -> 4)" in err[0] and "--overwrite" in err[0] and "--out" in err[0]
        assert "hash" not in err[0]
        assert (tmp_path / "run" / "spec.yaml").read_text() == stored


def test_changed_weights_with_an_unchanged_spec_say_so(tmp_path: Path, probe_dir: Path):
    from neurodis.config import load_spec
    from neurodis.orchestration.audit import run_audit
    from neurodis.orchestration.runners import LocalRunner

    torch.save(tiny_cnn().state_dict(), tmp_path / "w.pt")
    spec = load_spec(_spec(tmp_path, probe_dir, 3))
    run_audit(spec, runner=LocalRunner())
    other = tiny_cnn()
    with torch.no_grad():
        other.stem[0].bias.add_(1.0)
    torch.save(other.state_dict(), tmp_path / "w.pt")
    with pytest.raises(
        StaleRunError, match=r"no spec key changed: the checkpoint's weights or the probe images"
    ):
        run_audit(spec, runner=LocalRunner())
