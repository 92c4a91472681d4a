"""Scheduled audits stay cheap: a stage whose inputs are unchanged is adopted from the cache."""

from __future__ import annotations

from pathlib import Path

import torch

from neurodis.config import spec_from_dict
from neurodis.io.tables import read_table
from neurodis.models.tiny import tiny_cnn
from neurodis.orchestration.audit import run_audit
from neurodis.orchestration.runners import LocalRunner


def _spec(probe: Path, out: Path, cache: Path, ckpt: Path | None = None):
    model = {"arch": "neurodis.models.tiny:tiny_cnn", **({"checkpoint": str(ckpt)} if ckpt else {})}
    return spec_from_dict(
        {
            "model": model,
            "data": {"kind": "imagefolder", "root": str(probe)},
            "layers": ["layer1"],
            "forward": {"shard_size": 4, "top_k": 3},
            "output": str(out),
            "cache_dir": str(cache),
        }
    )


def test_unchanged_inputs_reuse_committed_units_and_changed_weights_recompute(
    probe_dir: Path, tmp_path: Path
):
    cache = tmp_path / "cache"
    first = run_audit(_spec(probe_dir, tmp_path / "night1", cache), runner=LocalRunner())
    assert first["stages"]["forward"]["shards_run"] == 3 and first["cached_units"] > 0
    second = run_audit(_spec(probe_dir, tmp_path / "night2", cache), runner=LocalRunner())
    assert second["stages"]["forward"]["shards_run"] == 0
    for t in ("references", "neurons", "activations", "images", "rejects"):
        assert read_table(tmp_path / "night1", t).equals(read_table(tmp_path / "night2", t)), t
    # a new checkpoint (other weights) changes the config hash: nothing is reused
    model = tiny_cnn()
    with torch.no_grad():
        model.fc.weight.mul_(2.0)  # the audited layer is unchanged, but the weights hash is not
    torch.save(model.state_dict(), tmp_path / "w.pt")
    third = run_audit(_spec(probe_dir, tmp_path / "night3", cache, tmp_path / "w.pt"), runner=LocalRunner())
    assert third["stages"]["forward"]["shards_run"] == 3
    assert third["stages"]["forward"]["config_hash"] != first["stages"]["forward"]["config_hash"]
