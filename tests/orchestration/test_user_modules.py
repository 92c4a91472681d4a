"""A model and transform from the user's own file (`module:callable` in the current directory) reach the
Ray workers: the session's Ray was started from another folder, so only the runner's hand-over of the
driver's folders lets a worker import the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from neurodis.config import spec_from_dict
from neurodis.orchestration.audit import run_audit
from neurodis.orchestration.runners import LocalRunner
from tests.conftest import write_images
from tests.methods.forward.test_forward import _assert_same_run


@pytest.mark.ray
def test_ray_workers_import_the_drivers_module(user_module: str, tmp_path: Path, ray_session):
    from neurodis.orchestration.runners import RayRunner

    probe = tmp_path / "probe"
    write_images(probe, per_class=3, size=(45, 38))

    def spec(out: Path):
        return spec_from_dict(
            {
                "model": {"arch": f"{user_module}:build", "transform": f"{user_module}:transform"},
                "data": {"kind": "imagefolder", "root": str(probe)},
                "layers": ["layer1", "layer2"],
                "stages": ["forward"],
                "forward": {"top_k": 3, "shard_size": 3},
                "output": str(out),
            }
        )

    summary = run_audit(spec(tmp_path / "ray"), runner=RayRunner())
    assert summary["stages"]["forward"]["images"] == 6
    run_audit(spec(tmp_path / "local"), runner=LocalRunner())
    _assert_same_run(tmp_path / "local", tmp_path / "ray")
