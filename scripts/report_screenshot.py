"""The README's screenshot (``docs/img/report.png``): one neuron page of a report, in headless
Chromium. ``--run``: an audit to report on (the README's image: the small demo's ``entangled`` audit,
``DemoConfig(n_images=240, n_ref=20, psi_top_k=20, n_null=5)`` as in ``tests/orchestration/test_demo.py``,
neuron ``planted/102``); without it, the report tests' audit (the tiny CNN on random images) is computed
into ``--work``.

    python scripts/report_screenshot.py [--run RUN] [--neuron planted/102] [--out docs/img/report.png]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="runs/report_screenshot")
    ap.add_argument("--out", default="docs/img/report.png")
    ap.add_argument("--run", help="an audit to report on (default: compute the tests' small audit)")
    ap.add_argument("--neuron", default="layer2/3")
    args = ap.parse_args()

    from playwright.sync_api import sync_playwright

    from neurodis.report import build_report
    from tests.report.conftest import make_audit

    work = Path(args.work)
    if args.run:
        run = Path(args.run)
    else:
        run = work / "run" if (work / "run" / "summary.json").is_file() else make_audit(work)
    result = build_report(run, work / "report", neurons=[args.neuron], refs=8)
    layer, channel = args.neuron.split("/")
    page = Path(result["index"]).parent / "n" / layer / f"{channel}.html"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"))
        tab = browser.new_page(viewport={"width": 900, "height": 760}, device_scale_factor=1)
        tab.goto(page.as_uri())
        tab.wait_for_load_state("load")
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        tab.screenshot(path=args.out)
        browser.close()
    from PIL import Image  # a 256-colour palette keeps the README's image small

    Image.open(args.out).convert("RGB").quantize(256).save(args.out, optimize=True)
    print(f"{args.out}: {Path(args.out).stat().st_size} bytes")


if __name__ == "__main__":
    main()
