"""open_clip through the real embedding code path: ViT-B-32 with random weights saved to a local checkpoint,
images (any size, the model's own preprocessing) and texts (its packaged BPE tokenizer) against direct
open_clip calls. SigLIP text needs a Hugging Face tokenizer: slow-marked, skipped when unavailable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from neurodis.config import spec_from_dict
from neurodis.data.probe import decode
from neurodis.io.tables import read_table
from neurodis.methods.embed import store
from neurodis.models.clip import CLIP_TEMPLATES
from neurodis.models.embedders_registry import get_embedder
from neurodis.orchestration.audit import run_audit
from neurodis.orchestration.runners import LocalRunner
from neurodis.types import SpecError

open_clip = pytest.importorskip("open_clip")
TEMPLATES = (CLIP_TEMPLATES[0], "{}")


def _unit(x: torch.Tensor) -> np.ndarray:
    return (x / x.norm(dim=-1, keepdim=True)).float().numpy()


def test_vit_b32_random_weights_images_texts_and_patches(tmp_path: Path, probe_dir: Path):
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    model.eval()
    ckpt = tmp_path / "vit-b-32-random.pt"
    torch.save(model.state_dict(), ckpt)
    spec = spec_from_dict(
        {
            "model": {"arch": "neurodis.models.tiny:tiny_cnn"},
            "data": {"kind": "imagefolder", "root": str(probe_dir)},
            "layers": ["layer1"],
            "stages": ["forward", "embed", "psi"],
            "forward": {"top_k": 6},
            "embed": {
                "embedder": "open_clip:ViT-B-32",
                "checkpoint": str(ckpt),
                "batch_size": 32,
                "channels_per_unit": 8,
                "templates": list(TEMPLATES),
            },
            "psi": {"top_k": 6, "n_null": 4, "null_neurons": 1},
            "output": str(tmp_path / "run"),
        }
    )
    summary = run_audit(spec, runner=LocalRunner())
    out = tmp_path / "run"
    name = "open_clip:ViT-B-32"
    # whole images: the model's own preprocess on each decoded image (36 x 44 px), L2-normalised
    paths = read_table(out, "images")["path"].to_pylist()
    from PIL import Image

    with torch.no_grad():
        want = _unit(model.encode_image(torch.stack([preprocess(Image.fromarray(decode(p))) for p in paths])))
    ids, got = store.load_image_vectors(out, name)
    assert got.shape == (12, 512)
    np.testing.assert_allclose(got, want, atol=2e-5)
    # concepts: the renormalised mean of the templates' embeddings
    tok = open_clip.get_tokenizer("ViT-B-32")
    names, vecs = store.concept_vectors(out, name, "testbed")
    with torch.no_grad():
        per = _unit(model.encode_text(tok([t.format(names[0]) for t in TEMPLATES])))
    mean = per.mean(0)
    np.testing.assert_allclose(vecs[0], mean / np.linalg.norm(mean), atol=2e-5)
    # patches went through the same embedder; PSI scored every channel
    crops = read_table(out, "crop_embeddings")
    assert crops.num_rows == 8 * 6 and len(crops["vector"][0].as_py()) == 512
    psi = read_table(out, "psi")
    assert psi.num_rows == 8 and set(psi["status"].to_pylist()) == {"ok"}
    assert summary["stages"]["embed"]["calibration"]["source"] == "fitted"


def test_open_clip_checkpoint_errors_name_the_key(tmp_path: Path):
    with pytest.raises(SpecError, match=r"embed.checkpoint is missing.*'random'"):
        get_embedder("open_clip:ViT-B-32")
    with pytest.raises(
        SpecError,
        match=r"embed.checkpoint 'openai'.*neither a file nor a pretrained tag already in the local cache",
    ):
        get_embedder("open_clip:ViT-B-32", checkpoint="openai")
    with pytest.raises(SpecError, match=r"embed.checkpoint '.*nope.pt'.*is not a file"):
        get_embedder("open_clip:ViT-B-32", checkpoint=str(tmp_path / "nope.pt"))
    with pytest.raises(SpecError, match=r"no model 'ViT-B-33' \(did you mean 'ViT-B-32'\?\)"):
        get_embedder("open_clip:ViT-B-33", checkpoint="random")
    bad = tmp_path / "bad.pt"
    torch.save({"visual.nothing": torch.zeros(1)}, bad)
    with pytest.raises(SpecError, match=r"cannot be loaded into open_clip model 'ViT-B-32'"):
        get_embedder("open_clip:ViT-B-32", checkpoint=str(bad))


@pytest.mark.slow
def test_siglip_random_weights_images_and_text_when_the_tokenizer_is_available():
    emb = get_embedder("open_clip:ViT-B-16-SigLIP", checkpoint="random")
    x = emb.embed_images([np.zeros((40, 70, 3), np.uint8), np.full((300, 200, 3), 200, np.uint8)])
    assert x.shape == (2, 768)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    try:
        t = emb.embed_texts(["a red circle", "stripes"])
    except SpecError as e:
        pytest.skip(f"SigLIP tokenizer unavailable offline: {e}")
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-5)
