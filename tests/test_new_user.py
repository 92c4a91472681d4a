"""What a new user does, end to end through the CLI, on Ray: their own ResNet-like model in a ``.py`` file
of their project folder (functional ops in ``forward``), a checkpoint saved from a ``DataParallel``
training script inside ``{'state_dict': ...}`` (old-style BatchNorm without ``num_batches_tracked``), a
folder of JPEGs at 32 px with a corrupt one and a few larger photos, every command run from that folder
with no ``PYTHONPATH``, two PURE layers whose lower layers have different widths.

The oracle is the user's model loaded by PyTorch's own strict ``load_state_dict`` and run on
torchvision's standard eval transform of PIL images (``Resize``, ``CenterCrop``, ``ToTensor``,
``Normalize``), computed here without neurodis."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch

MODEL_PY = textwrap.dedent('''
    """A CIFAR-style ResNet as people write it."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F


    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.short = None
            if stride != 1 or cin != cout:
                self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return F.relu(out + (x if self.short is None else self.short(x)))


    class CifarResNet(nn.Module):
        def __init__(self, num_classes=3):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(8)
            self.layer1 = Block(8, 8, 1)
            self.layer2 = Block(8, 16, 2)
            self.layer3 = Block(16, 32, 2)
            self.fc = nn.Linear(32, num_classes)

        def forward(self, x):
            x = F.relu(self.bn1(self.conv1(x)))
            x = self.layer3(self.layer2(self.layer1(x)))
            x = F.adaptive_avg_pool2d(x, 1)
            return self.fc(torch.flatten(x, 1))


    def build():
        return CifarResNet()
''')

CLASSES = ("apple", "boat", "cloud")


def _import_user_model(folder: Path):
    spec = importlib.util.spec_from_file_location("user_model_oracle", folder / "mymodel.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_project(folder: Path) -> dict[str, object]:
    from PIL import Image

    (folder / "mymodel.py").write_text(MODEL_PY)
    user = _import_user_model(folder)
    torch.manual_seed(3)
    model = user.build()
    with torch.no_grad():  # a "trained" look: BatchNorm statistics away from their defaults
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    state = torch.nn.DataParallel(model).state_dict()  # keys start with "module."
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save({"state_dict": state, "epoch": 30, "best_acc": 0.71}, folder / "ckpt.pth")

    rng = np.random.default_rng(7)
    for ci, c in enumerate(CLASSES):
        (folder / "photos" / c).mkdir(parents=True)
        for i in range(5):
            size = (32, 32) if i < 3 else (int(rng.integers(300, 500)), int(rng.integers(300, 500)))
            base = rng.integers(0, 256, (size[1] // 8 + 1, size[0] // 8 + 1, 3)).astype(np.uint8)
            img = Image.fromarray(base).resize(size, Image.BILINEAR)  # smooth, photo-like content
            arr = np.asarray(img).astype(np.int16)
            arr[..., ci] = np.clip(arr[..., ci] + 60, 0, 255)  # a class colour cast
            Image.fromarray(arr.astype(np.uint8)).save(folder / "photos" / c / f"img{i}.jpg", quality=90)
    (folder / "photos" / "boat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    (folder / "audit.yaml").write_text(
        textwrap.dedent("""
            model:
              arch: mymodel:build
              checkpoint: ckpt.pth
              input_size: 32
            data:
              kind: imagefolder
              root: photos
            layers: [layer2, layer3]
            stages: [forward, pure, embed, psi, explain]
            forward: {top_k: 6, shard_size: 8}
            pure: {layers: [layer2, layer3], n_ref: 5, k: [2], images_per_unit: 8}
            embed: {embedder: toy, templates: ["{}"]}
            psi: {top_k: 6, k_range: [2, 3], n_null: 4, null_neurons: 3}
            explain:
              explainers: [label, toy]
              simulator: neurodis.models.tiny:ToyEmbedder
              classes: classes.txt
              calibrations:
                toy: {a: 10.0, b: 0.0}
                neurodis.models.tiny:ToyEmbedder: {a: 10.0, b: 0.0}
              optim_steps: 10
            output: runs/mine
        """)
    )
    return {"model": model, "user": user}


def _cli(folder: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS")}
    return subprocess.run(
        [sys.executable, "-m", "neurodis.cli", *args],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _oracle_activations(model: torch.nn.Module, folder: Path, layers: tuple[str, ...]) -> dict:
    """Per image path and layer, the spatial mean and max of each channel, from torchvision's PIL path."""
    from PIL import Image
    from torchvision import transforms

    tf = transforms.Compose(
        [
            transforms.Resize(32),
            transforms.CenterCrop(32),
            transforms.ToTensor(),
            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    model.eval()
    grabbed: dict[str, torch.Tensor] = {}
    hooks = [
        getattr(model, name).register_forward_hook(lambda m, i, o, n=name: grabbed.__setitem__(n, o))
        for name in layers
    ]
    out = {}
    for p in sorted((folder / "photos").rglob("img*.jpg")):
        with torch.no_grad():
            model(tf(Image.open(p).convert("RGB")).unsqueeze(0))
        rel = str(p.relative_to(folder / "photos"))
        out[rel] = {
            n: (grabbed[n][0].mean((1, 2)).numpy(), grabbed[n][0].amax((1, 2)).numpy()) for n in layers
        }
    for h in hooks:
        h.remove()
    return out


def test_a_new_users_own_model_checkpoint_and_photos_on_ray(tmp_path: Path):
    from neurodis.io.tables import read_table

    folder = tmp_path / "myproject"
    folder.mkdir()
    made = _write_project(folder)

    layers = _cli(folder, "layers", "mymodel:build", "--input-size", "32")
    assert layers.returncode == 0, layers.stderr
    assert "layer2" in layers.stdout and "layer3" in layers.stdout

    audit = _cli(folder, "audit", "audit.yaml")
    assert audit.returncode == 0, audit.stderr[-3000:]
    run = folder / "runs" / "mine"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "complete"

    # the corrupt JPEG is rejected by name, the other 15 images are audited
    rejects = read_table(run, "rejects").to_pylist()
    assert [Path(r["path"]).name for r in rejects] == ["broken.jpg"]
    images = read_table(run, "images").to_pylist()
    assert len(images) == 16  # every listed file has an id; the rejected one has no activations

    # activations equal the user's model under torchvision's PIL eval transform (1e-5 relative)
    oracle = _oracle_activations(made["model"], folder, ("layer2", "layer3"))
    photos = (folder / "photos").resolve()
    path_of = {r["image_id"]: str((folder / r["path"]).resolve().relative_to(photos)) for r in images}
    acts = read_table(run, "activations").to_pylist()
    assert len(acts) == 2 * 15
    for row in acts:
        mean, mx = oracle[path_of[row["image_id"]]][row["layer"]]
        scale = float(np.abs(mx).max())
        np.testing.assert_allclose(row["mean"], mean, rtol=0, atol=1e-5 * scale)
        np.testing.assert_allclose(row["max"], mx, rtol=0, atol=1e-5 * scale)

    # PURE ran both layers, whose lower layers have 8 and 16 channels
    attributions = read_table(run, "pure_attributions")
    widths = {}
    for row in attributions.select(["layer", "attribution"]).to_pylist():
        widths.setdefault(row["layer"], set()).add(len(row["attribution"]))
    assert widths == {"layer2": {8}, "layer3": {16}}

    status = _cli(folder, "status", "runs/mine")
    assert status.returncode == 0, status.stderr
    assert " 0 pending" in status.stdout and "pending" in status.stdout

    explain = _cli(folder, "explain", "runs/mine", "layer3/0")
    assert explain.returncode == 0, explain.stderr
    assert "layer3/0" in explain.stdout
