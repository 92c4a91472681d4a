"""``neurodis report RUN``: a static site of an audit (overview, neuron index, one page per neuron) and
``neurodis diff A B --report``: the neuron-by-neuron changes between two audits. Plain files that open
from ``file://``: matplotlib SVG figures, Jinja2 templates, one small script for the tables
(``static/table.js``); nothing is fetched from the network. ``docs/report.md``."""

from __future__ import annotations

from neurodis.report.build import build_diff_report, build_report

__all__ = ["build_diff_report", "build_report"]
