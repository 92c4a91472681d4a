"""The walkthrough of docs/architecture.md ("Adding a method"), done for real: a new method written as
one package outside neurodis and one more entry in the registry tuple. Nothing else in neurodis is
touched, and the spec, the driver, the tables reader and `neurodis status` all take it."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from neurodis import registry, schemas
from neurodis.config import spec_from_dict
from neurodis.io.tables import read_table
from neurodis.orchestration.audit import run_audit, stage_status
from neurodis.orchestration.runners import LocalRunner
from neurodis.types import SpecError

FILES = {
    "__init__.py": """
        from breadth_method.config import BreadthConfig
        from breadth_method.tables import TABLES
        from neurodis.pipeline.method import Method

        METHOD = Method(name="breadth", stage="breadth", title="Breadth", config=BreadthConfig, tables=TABLES,
                        namespaces=("breadth",), runtime="breadth_method.steps", requires=("forward",))
    """,
    "config.py": """
        from dataclasses import dataclass

        from neurodis.types import SpecError


        @dataclass(frozen=True)
        class BreadthConfig:
            fraction: float = 0.5

            def __post_init__(self):
                if not 0 < self.fraction < 1:
                    raise SpecError("breadth.fraction must be in (0, 1)")
    """,
    "tables.py": """
        import pyarrow as pa

        from neurodis.tablespec import table_spec

        BREADTH = table_spec("breadth", "breadth", ("layer", "channel"), "Images above a fraction.", [
            ("layer", pa.string(), "module path"),
            ("channel", pa.int32(), "channel"),
            ("images", pa.int64(), "probe images whose max exceeds fraction * the neuron's max"),
        ])
        TABLES = (BREADTH,)
    """,
    "steps.py": """
        import functools

        import numpy as np
        import pyarrow as pa
        import pyarrow.dataset as ds

        from breadth_method.tables import BREADTH
        from neurodis.io.tables import read_table
        from neurodis.methods.forward.shards import plan_forward
        from neurodis.pipeline.step import Step, Unit, UnitOutput, run_unit
        from neurodis.sections import stable_hash


        def steps(spec, layout):
            fplan, _ = plan_forward(spec, layout)
            h = stable_hash(fplan.config_hash, spec.breadth)
            units = [Unit(f"layer.{lp.path}", lp) for lp in fplan.layers]
            ran = yield Step("breadth", "breadth", h, layout, units,
                             functools.partial(count_layer, layout, h, spec.breadth.fraction))
            return {"config_hash": h, "units_run": ran}


        def count_layer(layout, h, fraction, layer):
            return run_unit(layout, "breadth", f"layer.{layer.path}", h, lambda: _count(layout, fraction,
            layer))


        def _count(layout, fraction, layer):
            acts = read_table(layout, "activations", filter=ds.field("layer") == layer.path)
            top = np.stack(acts["max"].to_numpy(zero_copy_only=False))
            counts = (top > fraction * top.max(axis=0)).sum(axis=0)
            table = pa.table({"layer": [layer.path] * layer.channels, "channel":
            pa.array(range(layer.channels), pa.int32()),
                              "images": pa.array(counts, pa.int64())}, schema=BREADTH.schema)
            return UnitOutput({"breadth": table})
    """,
}


@pytest.fixture()
def breadth(tmp_path, monkeypatch):
    pkg = tmp_path / "pkgs" / "breadth_method"
    pkg.mkdir(parents=True)
    for name, text in FILES.items():
        (pkg / name).write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    import breadth_method

    # the one registry line
    monkeypatch.setattr(registry, "METHODS", (*registry.METHODS, breadth_method.METHOD))
    monkeypatch.setitem(schemas.TABLES, "breadth", breadth_method.METHOD.tables[0])
    yield breadth_method
    for mod in [m for m in sys.modules if m.startswith("breadth_method")]:
        del sys.modules[mod]


def test_a_new_method_is_a_package_and_one_registry_line(breadth, probe_dir: Path, tmp_path: Path):
    raw = {
        "model": {"arch": "neurodis.models.tiny:tiny_cnn"},
        "data": {"kind": "imagefolder", "root": str(probe_dir)},
        "layers": ["layer1", "layer2"],
        "stages": ["forward", "breadth"],
        "forward": {"top_k": 3, "shard_size": 5},
        "breadth": {"fraction": 0.25},
        "output": str(tmp_path / "run"),
    }
    with pytest.raises(SpecError, match="breadth.fraction"):
        spec_from_dict({**raw, "breadth": {"fraction": 2.0}})
    spec = spec_from_dict(raw)
    summary = run_audit(spec, runner=LocalRunner())
    assert summary["stages"]["breadth"]["units_run"] == 2
    status = stage_status(tmp_path / "run")
    assert status["breadth"] == {"committed": 2, "pending": 0, "pending_units": [], "planned": True}
    got = read_table(tmp_path / "run", "breadth")
    acts = read_table(tmp_path / "run", "activations")
    for layer in ("layer1", "layer2"):  # oracle: the count straight from the activations rows
        rows = [np.array(r["max"]) for r in acts.to_pylist() if r["layer"] == layer]
        top = np.stack(rows)
        want = (top > 0.25 * top.max(axis=0)).sum(axis=0)
        have = [r["images"] for r in got.to_pylist() if r["layer"] == layer]
        assert have == want.tolist() and len(have) == top.shape[1]
    # a second run computes nothing: the generic driver resumes the new method like any other
    again = run_audit(spec, runner=LocalRunner())
    assert again["stages"]["breadth"]["units_run"] == 0
