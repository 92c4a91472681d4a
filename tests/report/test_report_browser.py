"""The report in a real browser (headless Chromium through Playwright, from ``file://``): every page
loads with no console error and no failed request, every image decodes, every link resolves, the
index sorts, filters and pages, a neuron page shows its K reference thumbnails. Screenshots of the
overview and one neuron page go to the test's tmp folder. A missing Chromium or Playwright fails these
tests (``.ci/run`` installs both); it never skips them."""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from neurodis.io.tables import read_table
from tests.report.conftest import TOP_K, table_data


@pytest.fixture(scope="module")
def browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: pip install -e '.[dev]' (`.ci/run` does)")
    if chromium is None:
        pytest.fail("no chromium on PATH: apt-get install -y chromium (`.ci/run` does)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium)
        yield b
        b.close()


class Visit:
    """One page visit, recording console errors, failed requests and page errors."""

    def __init__(self, browser, path: Path) -> None:
        self.page = browser.new_page(viewport={"width": 1200, "height": 900})
        self.problems: list[str] = []
        self.page.on("console", lambda m: self.problems.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.problems.append(str(e)))
        self.page.on("requestfailed", lambda r: self.problems.append(f"failed: {r.url}"))
        self.page.goto(path.as_uri())
        self.page.wait_for_load_state("load")

    def check(self) -> list[str]:
        """Problems plus images that did not decode and links whose file does not exist."""
        bad_images = self.page.eval_on_selector_all(
            "img", "els => els.filter(e => !(e.complete && e.naturalWidth > 0)).map(e => e.src)"
        )
        hrefs = self.page.eval_on_selector_all("a[href]", "els => els.map(e => e.href)")
        dangling = [
            h for h in hrefs if h.startswith("file:") and not Path(unquote(urlparse(h).path)).exists()
        ]
        return (
            self.problems
            + [f"image not decoded: {s}" for s in bad_images]
            + [f"no file: {h}" for h in dangling]
        )


def test_every_page_loads_clean(browser, report: dict, small_audit: Path):
    out: Path = report["out"]
    pages = [out / "index.html", out / "neurons.html", *sorted((out / "n").rglob("*.html"))]
    assert len(pages) == 2 + read_table(small_audit, "neurons").num_rows
    for path in pages:
        v = Visit(browser, path)
        assert v.check() == [], path
        v.page.close()
    v = Visit(browser, out / "index.html")
    assert v.page.eval_on_selector_all("img", "els => els.length") >= 4  # PSI, depth, LE, TI, PURE figures
    v.page.screenshot(path=str(out.parent / "overview.png"), full_page=True)
    v.page.close()


def test_neuron_page_shows_k_thumbnails_with_neighbour_links(browser, report: dict):
    out: Path = report["out"]
    v = Visit(browser, out / "n" / "layer2" / "3.html")
    assert v.check() == []
    thumbs = v.page.eval_on_selector_all("#references img", "els => els.map(e => e.naturalWidth)")
    assert len(thumbs) == TOP_K and all(w == 96 for w in thumbs)
    assert v.page.inner_text("h1").startswith("layer2/3")
    v.page.screenshot(path=str(out.parent / "neuron.png"), full_page=True)
    v.page.click("#next")
    v.page.wait_for_load_state("load")
    assert v.page.inner_text("h1").startswith("layer2/4")
    v.page.click("text=neuron index")
    v.page.wait_for_load_state("load")
    assert v.page.url.endswith("/neurons.html")
    v.page.close()


def _column(page, key: str) -> list[str]:
    idx = page.eval_on_selector_all("#table th", f"ths => ths.findIndex(t => t.dataset.key === '{key}')")
    return page.eval_on_selector_all("#table tbody tr", f"trs => trs.map(r => r.cells[{idx}].textContent)")


def test_index_sorts_filters_and_links(browser, report: dict, small_audit: Path):
    out: Path = report["out"]
    v = Visit(browser, out / "neurons.html")
    page = v.page
    psi = [r["log_psi"] for r in read_table(small_audit, "psi").to_pylist()]
    page.click("#table th[data-key=log_psi]")
    got = [float(x) for x in _column(page, "log_psi")]
    assert got == pytest.approx(sorted(psi), abs=1e-3)
    page.click("#table th[data-key=log_psi]")  # again: descending
    assert [float(x) for x in _column(page, "log_psi")] == pytest.approx(sorted(psi, reverse=True), abs=1e-3)

    page.select_option("#enum-layer", "layer1")
    layer1 = sum(r["layer"] == "layer1" for r in read_table(small_audit, "neurons").to_pylist())
    assert set(_column(page, "layer")) == {"layer1"} and len(_column(page, "layer")) == layer1
    page.select_option("#enum-layer", "")
    page.fill("#filter", "layer2/1")  # neurons layer2/1 and layer2/10 ... layer2/15
    assert sorted(_column(page, "neuron")) == sorted(
        f"layer2/{c}" for c in range(16) if str(c).startswith("1")
    )
    page.click("#table tbody tr >> nth=0 >> a")
    page.wait_for_load_state("load")
    assert page.inner_text("h1").startswith("layer2/1")
    assert v.check() == []
    page.close()


def test_index_pages_through_many_rows(browser, tmp_path: Path):
    """table.js draws 100 rows at a time: 250 rows are three pages."""
    from neurodis.report.build import STATIC, _write_table_page

    shutil.copytree(STATIC, tmp_path / "static")
    cols = [{"key": "neuron", "label": "neuron", "type": "text"}, {"key": "v", "label": "v", "type": "num"}]
    rows = [[f"l/{i}", float(i)] for i in range(250)]
    _write_table_page(tmp_path, "t.html", "t", "", {"columns": cols, "rows": rows, "link": None})
    v = Visit(browser, tmp_path / "t.html")
    assert v.page.inner_text("#info").startswith("rows 1–100 of 250")
    v.page.click("#next")
    v.page.click("#next")
    assert v.page.inner_text("#info").startswith("rows 201–250 of 250")
    assert _column(v.page, "v")[-1] == "249"
    assert table_data(tmp_path / "t.data.js")["rows"] == rows
    assert v.problems == []
    v.page.close()


def test_diff_report_loads_clean(browser, small_audit: Path, tmp_path: Path):
    from neurodis.report import build_diff_report

    r = build_diff_report(small_audit, small_audit, tmp_path / "d")
    v = Visit(browser, Path(r["index"]))
    assert v.check() == []
    assert len(_column(v.page, "neuron")) == read_table(small_audit, "neurons").num_rows
    v.page.close()
