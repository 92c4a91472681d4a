"""The testbed world: determinism, truth consistent with pixels, exclusions, image-folder output."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from neurodis.testbed.world import (
    BACKGROUNDS,
    CLASS_LABELS,
    CONCEPTS,
    PALETTE,
    TEXTURES,
    WorldConfig,
    read_metadata,
    render,
    sample_label,
    sample_metadata,
    sample_scene,
    write_imagefolder,
)

# nominal background colours, written out here independently of the generator
BACKGROUND_RGB = {
    "grass background": (85, 125, 55),
    "sky background": (142, 185, 236),
    "sand background": (205, 182, 132),
    "night background": (18, 20, 44),
}


def test_render_is_a_pure_function_of_seed_and_index() -> None:
    a = render(WorldConfig(seed=3), 17)
    b = render(WorldConfig(seed=3, n_images=18), 17)  # n_images only bounds the index
    assert a.image.tobytes() == b.image.tobytes()
    assert a.concepts == b.concepts and a.boxes == b.boxes and a.label == b.label
    assert render(WorldConfig(seed=3), 18).image.tobytes() != a.image.tobytes()
    assert render(WorldConfig(seed=4), 17).image.tobytes() != a.image.tobytes()


def test_images_are_uint8_rgb_of_the_configured_size() -> None:
    s = render(WorldConfig(image_size=48), 0)
    assert s.image.dtype == np.uint8 and s.image.shape == (48, 48, 3)


def test_scene_without_pixels_agrees_with_render() -> None:
    cfg = WorldConfig()
    for i in range(30):
        s, scene = render(cfg, i), sample_scene(cfg, i)
        assert scene.concepts == s.concepts and scene.label == s.label == sample_label(cfg, i)


def test_index_outside_the_world_is_refused() -> None:
    with pytest.raises(IndexError, match="n_images"):
        render(WorldConfig(n_images=5), 5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_images": 0},
        {"exclusions": (("red", "blue"),)},
        {"exclusions": (("red", "circle"),)},
        {"object_size": (0.4, 0.2)},
    ],
)
def test_invalid_world_configs_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        WorldConfig(**kwargs)


def _marks(image: np.ndarray) -> np.ndarray:
    return (image.astype(int) > 215).all(-1)  # near-white texture marks


def test_every_concept_marked_present_is_visible_in_its_box() -> None:
    cfg = WorldConfig(seed=5)
    for i in range(60):
        s = render(cfg, i)
        img = s.image.astype(int)
        for o in s.objects:
            x0, y0, x1, y1 = o.box
            mask = s.masks[o.shape][y0:y1, x0:x1] & s.masks[o.colour][y0:y1, x0:x1]
            region = img[y0:y1, x0:x1][mask & ~_marks(s.image[y0:y1, x0:x1])]
            assert len(region) >= 40, (i, o)
            assert np.abs(np.median(region, 0) - np.array(PALETTE[o.colour])).max() <= 20, (i, o)
            share = _marks(s.image[y0:y1, x0:x1])[mask].mean()
            expected = {
                None: (0.0, 0.02),
                "dots": (0.08, 0.28),
                "stripes": (0.35, 0.65),
                "checker": (0.35, 0.65),
            }
            lo, hi = expected[o.texture]
            assert lo <= share <= hi, (i, o.texture, share)
        bg = next(c for c in s.concepts if c in BACKGROUNDS)
        outside = img[s.masks[bg]]
        assert np.abs(np.median(outside, 0) - np.array(BACKGROUND_RGB[bg])).max() <= 45, (i, bg)


def test_boxes_enclose_exactly_the_concept_pixels() -> None:
    cfg = WorldConfig(seed=6)
    for i in range(40):
        s = render(cfg, i)
        assert set(s.boxes) == set(s.concepts) == set(s.masks)
        for c, (x0, y0, x1, y1) in s.boxes.items():
            ys, xs = np.nonzero(s.masks[c])
            assert x0 <= xs.min() and xs.max() < x1 and y0 <= ys.min() and ys.max() < y1, (i, c)
            if c not in BACKGROUNDS:
                assert xs.min() - x0 <= 1 and x1 - 1 - xs.max() <= 1, (i, c)  # tight


def test_label_is_colour_and_shape_of_the_larger_object() -> None:
    cfg = WorldConfig(seed=7)
    seen_two = 0
    for i in range(200):
        s = render(cfg, i)
        assert s.label in CLASS_LABELS
        areas = []
        for o in s.objects:
            x0, y0, x1, y1 = o.box
            areas.append((s.masks[o.colour][y0:y1, x0:x1] & s.masks[o.shape][y0:y1, x0:x1]).sum())
        big = s.objects[int(np.argmax(areas))]
        assert s.label == f"{big.colour} {big.shape}"
        seen_two += len(s.objects) == 2
    assert 20 <= seen_two <= 90  # co-occurrence exists but is controlled


def test_exclusions_never_occur_and_every_concept_does() -> None:
    cfg = WorldConfig()
    counts = dict.fromkeys(CONCEPTS, 0)
    for i in range(2000):
        scene = sample_scene(cfg, i)
        for c in scene.concepts:
            counts[c] += 1
        for a, b in cfg.exclusions:
            if b in BACKGROUNDS:
                assert not {a, b} <= scene.concepts, (i, a, b)
            else:
                assert not any({a, b} <= set(o.concepts) for o in scene.objects), (i, a, b)
    assert min(counts.values()) >= 150, counts
    assert all(counts[t] > 0 for t in TEXTURES)


def test_write_imagefolder_round_trips_and_is_idempotent(tmp_path) -> None:
    cfg = WorldConfig(n_images=24, seed=9)
    root = write_imagefolder(cfg, tmp_path / "world")
    rows = read_metadata(root)
    assert rows == sample_metadata(cfg, range(24))
    for r in rows:
        path = root / r["path"]
        assert path.parent.name == r["label"]
        assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), render(cfg, r["index"]).image)
    assert json.loads((root / "world.json").read_text())["seed"] == 9
    assert not [p for p in tmp_path.iterdir() if p.name != "world"]  # no temp folder left behind
    stamp = os.stat(root / rows[0]["path"]).st_mtime_ns
    assert write_imagefolder(cfg, root) == root
    assert os.stat(root / rows[0]["path"]).st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match="different testbed world"):
        write_imagefolder(WorldConfig(n_images=24, seed=10), root)


def test_write_imagefolder_refuses_a_foreign_nonempty_folder(tmp_path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        write_imagefolder(WorldConfig(n_images=2), tmp_path / "x")


def test_world_config_json_round_trip() -> None:
    cfg = WorldConfig(n_images=7, seed=2, p_two_objects=0.5)
    assert WorldConfig.from_json(json.loads(json.dumps(cfg.to_json()))) == cfg
    assert "seed" not in cfg.distribution_key() and "n_images" not in cfg.distribution_key()
