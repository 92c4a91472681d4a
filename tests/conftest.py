from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole test session (each start costs ~10 s)."""
    import ray

    if not ray.is_initialized():
        # address="local": always a fresh instance, never a cluster someone started on this machine
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray


def write_images(
    root: Path, per_class: int = 6, classes: tuple[str, ...] = ("cat", "dog"), size=(36, 44), seed: int = 0
) -> list[Path]:
    """A small image folder of random RGB PNGs (class sub-folders)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            p = root / c / f"img{i:03d}.png"
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(p)
            paths.append(p)
    return paths


@pytest.fixture()
def probe_dir(tmp_path: Path) -> Path:
    root = tmp_path / "probe"
    write_images(root)
    return root
