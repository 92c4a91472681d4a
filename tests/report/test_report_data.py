"""The report's data, without a browser: the index holds every neuron with the run's own numbers, the
gallery's heatmaps come from maps whose max is the recorded max site, selections and patch swaps, and
one-line errors for a folder that is not a run, a missing table and a damaged one."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from neurodis.cli import main
from neurodis.io.tables import read_table
from neurodis.types import SpecError
from tests.report.conftest import TOP_K, table_data


def test_index_lists_every_neuron_with_the_run_numbers(small_audit: Path, report: dict):
    data = table_data(report["out"] / "neurons.data.js")
    keys = [c["key"] for c in data["columns"]]
    rows = [dict(zip(keys, r)) for r in data["rows"]]
    neurons = read_table(small_audit, "neurons").to_pylist()
    assert sorted((r["layer"], r["channel"]) for r in rows) == sorted(
        (n["layer"], n["channel"]) for n in neurons
    )
    psi = {(r["layer"], r["channel"]): r for r in read_table(small_audit, "psi").to_pylist()}
    for r in rows:
        p = psi[(r["layer"], r["channel"])]
        for c in ("log_psi", "log_psi_ci_low", "log_psi_ci_high"):
            assert r[c] == pytest.approx(p[c]) if p[c] is not None and math.isfinite(p[c]) else r[c] is None
        assert r["k_hat"] == p["k_hat"]
        href = data["rows"][rows.index(r)][data["link"]["href"]]
        assert (report["out"] / href).is_file()  # every neuron has its page
    expl = {(r["layer"], r["channel"]): r for r in read_table(small_audit, "explanations").to_pylist()}
    for r in rows:
        e = expl[(r["layer"], r["channel"])]
        assert r["test_corr"] == (pytest.approx(e["test_corr"]) if e["test_corr"] is not None else None)
        for concept in e["concepts"]:
            assert concept in r["explanation"]
    assert report["pages"] == len(neurons) and not report["problems"]


def test_gallery_maps_peak_at_the_recorded_max_site(small_audit: Path):
    """The heatmaps are the channel's maps from a fresh forward pass: each reference's map peaks where
    the audit recorded its max, at the recorded value."""
    import torch

    from neurodis.config import load_spec
    from neurodis.data.probe import decode
    from neurodis.data.transforms import preprocess
    from neurodis.io.layout import RunLayout
    from neurodis.models.loading import load_model, resolve_preprocess
    from neurodis.models.subnet import capture
    from neurodis.report.images import channel_map

    spec = load_spec(RunLayout(small_audit).spec_path)
    model = load_model(spec.model).eval()
    pre = resolve_preprocess(spec.model, model)
    paths = dict(zip(*read_table(small_audit, "images").select(["image_id", "path"]).to_pydict().values()))
    refs = [
        r
        for r in read_table(small_audit, "references").to_pylist()
        if r["layer"] == "layer2" and r["channel"] == 3
    ]
    x = torch.stack([preprocess(decode(paths[r["image_id"]]), pre) for r in refs])
    out = capture(model, x, "layer2")
    for j, r in enumerate(refs):
        m = channel_map(out[j], 3)
        assert np.unravel_index(np.argmax(m), m.shape) == (r["h"], r["w"])
        assert m.max() == pytest.approx(r["value"], rel=1e-4)


def test_max_pages_spreads_over_the_psi_ranking_and_named_neurons(small_audit: Path, tmp_path: Path):
    from neurodis.report import build_report

    r = build_report(small_audit, tmp_path / "few", max_pages=3, refs=2)
    data = table_data(tmp_path / "few" / "neurons.data.js")
    linked = [row[0] for row in data["rows"] if row[data["link"]["href"]]]
    assert r["pages"] == 3 == len(linked) and len(data["rows"]) == 24
    psi = sorted(read_table(small_audit, "psi").to_pylist(), key=lambda p: -p["log_psi"])
    best, worst = f"{psi[0]['layer']}/{psi[0]['channel']}", f"{psi[-1]['layer']}/{psi[-1]['channel']}"
    assert best in linked and worst in linked  # the ends of the ranking
    r = build_report(small_audit, tmp_path / "named", neurons=["layer1/2"], refs=2)
    assert r["pages"] == 1 and (tmp_path / "named" / "n" / "layer1" / "2.html").is_file()
    page = (tmp_path / "named" / "n" / "layer1" / "2.html").read_text()
    assert page.count('alt="rank ') == 2  # refs=2 thumbnails in the gallery
    with pytest.raises(SpecError, match="no neuron layer9/0"):
        build_report(small_audit, tmp_path / "bad", neurons=["layer9/0"])


def test_patch_swap_bars_are_the_neuron_rows_of_the_summary(small_audit: Path):
    """A neuron page's patch-swap bars: per condition the neuron's mean normalised change and the larger
    side of its interval, as committed in ``patch_swap_summary`` (oracle: numpy over ``patch_swaps``)."""
    from neurodis.io.tables import read_table
    from neurodis.report.build import Facts, _swaps
    from neurodis.report.data import open_report_run

    run = open_report_run(small_audit)
    swaps = read_table(small_audit, "patch_swaps").to_pylist()
    key = next((r["layer"], r["channel"]) for r in swaps if r["status"] == "ok")
    got = _swaps(run, {key})[key]
    assert [g[0] for g in got] == [
        c
        for c in ("aligned", "non_aligned", "random", "shuffled_position", "ablate_elsewhere")
        if any((r["layer"], r["channel"], r["condition"], r["status"]) == (*key, c, "ok") for r in swaps)
    ]
    for c, mean, err in got:
        values = [
            r["delta_norm"]
            for r in swaps
            if (r["layer"], r["channel"], r["condition"]) == (*key, c) and r["status"] == "ok"
        ]
        assert mean == pytest.approx(np.mean(values)) and err >= 0
    assert Facts(run).keys  # the run still reads


def test_not_a_run_is_one_line(tmp_path: Path, capsys):
    assert main(["report", str(tmp_path / "nothing")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not a neurodis run directory" in err and "Traceback" not in err


def test_missing_and_damaged_tables_are_one_line_naming_the_table(small_audit: Path, tmp_path: Path, capsys):
    run = tmp_path / "run"
    shutil.copytree(small_audit, run, ignore=shutil.ignore_patterns("report"))
    victim = next((run / "psi").rglob("*.parquet"))
    victim.write_bytes(b"not parquet at all")
    assert main(["report", str(run), "--out", str(tmp_path / "r1")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "table 'psi'" in err and "--stages psi --overwrite" in err

    shutil.rmtree(run / "_manifests" / "forward")  # the forward stage never committed
    assert main(["report", str(run), "--out", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no committed 'neurons' table" in err and "resume the audit" in err


def test_report_refuses_to_replace_a_foreign_folder(small_audit: Path, tmp_path: Path):
    from neurodis.report import build_report

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(SpecError, match="not a neurodis report folder"):
        build_report(small_audit, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_diff_report_table_has_every_compared_neuron(small_audit: Path, tmp_path: Path, capsys):
    assert main(["diff", str(small_audit), str(small_audit), "--out", str(tmp_path / "d"), "--report"]) == 0
    assert f"report: {tmp_path / 'd' / 'report' / 'index.html'}" in capsys.readouterr().out
    data = table_data(tmp_path / "d" / "report" / "diff.data.js")
    n = read_table(small_audit, "neurons").num_rows
    assert len(data["rows"]) == n
    change = [c["key"] for c in data["columns"]].index("change")
    assert {r[change] for r in data["rows"]} == {"none"}  # a run against itself
    assert TOP_K == 6


@pytest.mark.ray
def test_pages_drawn_as_ray_tasks_equal_the_local_ones(small_audit: Path, tmp_path: Path, ray_session):
    """``--address``: the pages are Ray tasks; every file equals the local report's, byte for byte."""
    from neurodis.orchestration.report import ray_mapper
    from neurodis.report import build_report

    local = build_report(small_audit, tmp_path / "local", max_pages=4, refs=3, workers=1)
    remote = build_report(small_audit, tmp_path / "ray", max_pages=4, refs=3, mapper=ray_mapper("auto"))
    assert remote["pages"] == local["pages"] == 4

    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    assert files(tmp_path / "ray") == files(tmp_path / "local")


def test_gallery_without_a_loadable_model_shows_plain_images(small_audit: Path, tmp_path: Path):
    """A run whose model no longer loads (here: its module is gone) still gets its report: plain images
    in the galleries and one warning line saying why."""
    import yaml

    from neurodis.report import build_report

    run = tmp_path / "run"
    shutil.copytree(small_audit, run, ignore=shutil.ignore_patterns("report"))
    spec = yaml.safe_load((run / "spec.yaml").read_text())
    spec["model"]["arch"] = "no_such_module_here:build"
    (run / "spec.yaml").write_text(yaml.safe_dump(spec))
    r = build_report(run, tmp_path / "site", neurons=["layer1/0"], refs=3)
    assert len(r["problems"]) == 1 and r["problems"][0].startswith("no heatmaps: the model did not load")
    assert len(list((tmp_path / "site" / "n" / "layer1" / "0").glob("r*.jpg"))) == 3


def test_patch_swap_section_reads_the_layer_rows(small_audit: Path, tmp_path: Path):
    """The overview's patch-swap part: each layer's condition means and intervals and its aligned-vs-control
    rows, read from ``patch_swap_summary``'s layer rows (oracle: the rows themselves)."""
    from neurodis.io.tables import read_table
    from neurodis.report.build import _swap_section, swap_layers

    t = read_table(small_audit, "patch_swap_summary")
    layer_rows = [r for r in t.to_pylist() if r["scope"] == "layer" and r["status"] == "ok"]
    assert layer_rows, "the small audit has no patch-swap layer rows"
    means, errors, rows = swap_layers(t)
    for r in layer_rows:
        if r["mean_delta_norm"] is not None:
            assert means[r["layer"]][r["condition"]] == pytest.approx(r["mean_delta_norm"])
            lo, hi = r["ci_low"], r["ci_high"]
            assert errors[r["layer"]][r["condition"]] == pytest.approx(
                max(r["mean_delta_norm"] - lo, hi - r["mean_delta_norm"])
            )
    assert len(rows) == sum(r["condition"] != "aligned" for r in layer_rows)
    section = _swap_section(t, tmp_path)
    svg = (tmp_path / "fig" / "patch_swap.svg").read_text()
    assert section["title"] == "Patch swaps" and section["figures"][0]["src"] == "fig/patch_swap.svg"
    assert "aligned" in svg and "shuffled_position" in svg
    assert section["tables"][0]["header"][3] == "aligned - control"


def test_cli_report_prints_the_index_path(small_audit: Path, tmp_path: Path, capsys):
    assert (
        main(["report", str(small_audit), "--out", str(tmp_path / "r"), "--max-pages", "2", "--refs", "2"])
        == 0
    )
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == f"report: {tmp_path / 'r' / 'index.html'}"
    assert out[-2].startswith("24 neurons, 2 neuron pages, ")
