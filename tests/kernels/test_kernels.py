"""Kernels: pure functions checked against brute force and their algebraic properties."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from neurodis.kernels.summaries import summarize, token_grid
from neurodis.kernels.topk import merge_top_k, top_k
from tests.reference import brute


@pytest.mark.parametrize("seed", range(5))
def test_top_k_equals_brute_force_and_merge_is_associative(seed: int):
    rng = np.random.default_rng(seed)
    n, c, k = 40, 6, 7
    values = rng.integers(0, 4, (n, c)).astype(np.float32)  # many ties
    ids = rng.permutation(1000)[:n]
    h = rng.integers(0, 9, (n, c)).astype(np.int32)
    w = rng.integers(0, 9, (n, c)).astype(np.int32)
    full = top_k(values, ids, h, w, k)
    want = brute.top_k_rows(values, list(ids), k)
    assert [list(full.image_ids[:, j]) for j in range(c)] == want
    # any split, any merge order, gives the same result
    cuts = sorted(rng.choice(np.arange(1, n), size=3, replace=False))
    parts = [top_k(values[a:b], ids[a:b], h[a:b], w[a:b], k) for a, b in zip([0, *cuts], [*cuts, n])]
    left = merge_top_k(merge_top_k(merge_top_k(parts[0], parts[1], k), parts[2], k), parts[3], k)
    right = merge_top_k(parts[3], merge_top_k(parts[2], merge_top_k(parts[1], parts[0], k), k), k)
    for a, b, f in zip(left, right, full):
        np.testing.assert_array_equal(a, f)
        np.testing.assert_array_equal(b, f)


def test_top_k_nan_sorts_last_and_small_inputs():
    values = np.array([[np.nan], [1.0], [0.5]], np.float32)
    z = np.zeros((3, 1), np.int32)
    r = top_k(values, np.array([0, 1, 2]), z, z, 5)
    assert r.image_ids[:, 0].tolist() == [1, 2, 0]
    assert top_k(values[:0], np.array([], np.int64), z[:0], z[:0], 3).values.shape == (0, 1)


def test_summarize_conv_matches_brute_force():
    x = torch.randn(3, 4, 5, 6, generator=torch.Generator().manual_seed(0))
    x[0, 1] = 2.0  # all-equal map: first position wins
    s = summarize(x)
    mean, mx, ah, aw = brute.summaries(x.numpy())
    np.testing.assert_allclose(s.mean.numpy(), mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(s.max.numpy(), mx)
    np.testing.assert_array_equal(s.argmax_h.numpy(), ah)
    np.testing.assert_array_equal(s.argmax_w.numpy(), aw)
    assert (s.argmax_h[0, 1].item(), s.argmax_w[0, 1].item()) == (0, 0)


def test_summarize_tokens_and_vectors():
    x = torch.randn(2, 1 + 9, 5, generator=torch.Generator().manual_seed(1))  # CLS + 3x3 grid
    s = summarize(x, "mean")
    torch.testing.assert_close(s.mean, x.mean(dim=1))
    s_cls = summarize(x, "cls")
    torch.testing.assert_close(s_cls.mean, x[:, 0])
    patches = x[:, 1:]
    torch.testing.assert_close(s.max, patches.max(dim=1).values)
    idx = patches.argmax(dim=1)
    assert torch.equal(s.argmax_h.long(), idx // 3) and torch.equal(s.argmax_w.long(), idx % 3)
    assert token_grid(197) == (1, 14, 14) and token_grid(196) == (0, 14, 14)
    v = torch.randn(4, 7)
    sv = summarize(v)
    torch.testing.assert_close(sv.mean, v)
    torch.testing.assert_close(sv.max, v)
    with pytest.raises(ValueError, match="cannot summarise"):
        summarize(torch.zeros(1, 2, 3, 4, 5))


def test_kernels_import_neither_ray_nor_parquet():
    code = (
        "import sys, neurodis.kernels.topk, neurodis.kernels.summaries; "
        "bad = [m for m in ('ray', 'pyarrow.parquet', 'neurodis.io', 'neurodis.orchestration') if m in "
        "sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_only_orchestration_imports_ray():
    from pathlib import Path

    import neurodis

    root = Path(neurodis.__file__).parent
    offenders = [
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if "orchestration" not in p.parts
        and any(line.strip().startswith(("import ray", "from ray")) for line in p.read_text().splitlines())
    ]
    assert offenders == []
