"""One small audit with every stage (tiny CNN, 48 random images), shared by the report tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from neurodis import registry
from neurodis.config import spec_from_dict
from neurodis.orchestration.audit import run_audit
from neurodis.orchestration.runners import LocalRunner
from tests.conftest import write_images

CLASSES = tuple(f"class{i:02d}" for i in range(5))
TOP_K = 6


def audit_spec(root: Path, out: Path) -> dict:
    return {
        "model": {"arch": "neurodis.models.tiny:tiny_cnn"},
        "data": {"kind": "imagefolder", "root": str(root / "probe")},
        "layers": ["layer1", "layer2"],
        "stages": list(registry.stage_order()),
        "forward": {"top_k": TOP_K, "shard_size": 24},
        "pure": {"n_ref": TOP_K, "k": [2, 3], "eval_embedder": "toy", "images_per_unit": 24},
        "embed": {"embedder": "toy", "templates": ["{}"], "shard_size": 24},
        "psi": {"top_k": TOP_K, "n_null": 4, "null_neurons": 4},
        "explain": {
            "classes": str(root / "classes.txt"),
            "explainers": ["label"],
            "optim_steps": 5,
            "batch_size": 64,
        },
        "output": str(out),
    }


def make_audit(root: Path, name: str = "run") -> Path:
    if not (root / "probe").exists():
        write_images(root / "probe", per_class=10, classes=CLASSES, size=(32, 32))
        (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    run_audit(spec_from_dict(audit_spec(root, root / name)), runner=LocalRunner())
    return root / name


@pytest.fixture(scope="session")
def small_audit(tmp_path_factory) -> Path:
    return make_audit(tmp_path_factory.mktemp("report_audit"))


@pytest.fixture(scope="session")
def report(small_audit: Path, tmp_path_factory) -> dict:
    """The report of the small audit (every neuron gets a page), timed."""
    from neurodis.report import build_report

    out = tmp_path_factory.mktemp("report") / "site"
    result = build_report(small_audit, out)
    print(f"report of {result['neurons']} neurons: {result['seconds']} s, {result['bytes']} bytes")
    return result | {"out": out}


def table_data(path: Path) -> dict:
    """The table a report page draws (``window.NEURODIS_TABLE = {...};``)."""
    import json

    text = path.read_text()
    return json.loads(text[text.index("=") + 1 :].strip().rstrip(";"))
