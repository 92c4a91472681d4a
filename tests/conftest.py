from __future__ import annotations

import os
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


USER_MODULE = '''"""A user's own model file, as `mymodel.py` next to a spec."""
from torchvision import transforms as T

from neurodis.models.tiny import TinyCNN


def build():
    return TinyCNN(seed=3)


def transform():
    return T.Compose(
        [T.Resize(40), T.CenterCrop(32), T.ToTensor(), T.Normalize([0.4, 0.5, 0.6], [0.2, 0.25, 0.3])]
    )


def transform_bicubic():  # the same numbers as transform(), another resampling filter
    return T.Compose(
        [
            T.Resize(40, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(32),
            T.ToTensor(),
            T.Normalize([0.4, 0.5, 0.6], [0.2, 0.25, 0.3]),
        ]
    )


def squash():  # no readable geometry: every image squashed to 32 x 32
    to_tensor = T.ToTensor()
    return lambda image: to_tensor(image.resize((32, 32)))


def preset():  # torchvision's eval transform for its ResNet-50 weights (nothing is downloaded)
    from torchvision.models import ResNet50_Weights

    return ResNet50_Weights.DEFAULT.transforms()


def not_a_transform():
    return 3


def wrong_shape():
    return T.Compose([T.Resize(40), T.ToTensor()])


def uint8():
    return T.Compose([T.Resize(40), T.CenterCrop(32), T.PILToTensor()])


def broken():
    raise RuntimeError("no weights here")


def embedder():
    from neurodis.models.tiny import ToyEmbedder

    return ToyEmbedder()
'''


@pytest.fixture()
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The name of a module file (``USER_MODULE``) in a fresh folder that becomes the current directory
    and is on no import path, as for a user running ``neurodis`` next to their ``mymodel.py`` (the
    console script puts no current directory on ``sys.path``). The name is unique per test."""
    import sys
    import uuid

    name = f"user_model_{uuid.uuid4().hex[:10]}"
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / f"{name}.py").write_text(USER_MODULE)
    monkeypatch.chdir(folder)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", os.curdir)])
    yield name
    sys.modules.pop(name, None)
