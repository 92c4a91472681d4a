"""run_unit: the one place that records attempts, commits and turns errors into a unit's result."""

from __future__ import annotations

import pyarrow as pa
import pytest

from neurodis.io.layout import RunLayout
from neurodis.io.manifest import attempts, committed
from neurodis.pipeline.step import UnitOutput, error_text, run_unit

TABLE = pa.table({"image_id": pa.array([1, 2], pa.int64()), "path": ["a", "b"], "label": ["x", None]})


def test_run_unit_commits_tables_then_manifest(tmp_path):
    layout = RunLayout(tmp_path)
    r = run_unit(
        layout, "forward", "images", "h1", lambda: UnitOutput({"images": TABLE}, {"rows": 2}, {"rows": 2})
    )
    assert r == {"unit": "images", "error": None, "rows": 2}
    m = committed(layout, "forward", "h1")["images"]
    assert m.meta == {"rows": 2} and (tmp_path / m.files["images"]).is_file()
    assert attempts(layout, "forward", "images") == 1


def test_a_failing_unit_commits_nothing_and_returns_one_line(tmp_path):
    layout = RunLayout(tmp_path)

    def boom() -> UnitOutput:
        raise ValueError("bad shard\nsecond line never shown")

    r = run_unit(layout, "forward", "shard-00001", "h1", boom)
    assert r == {"unit": "shard-00001", "error": "ValueError: bad shard"}
    assert committed(layout, "forward") == {}
    assert attempts(layout, "forward", "shard-00001") == 1
    run_unit(layout, "forward", "shard-00001", "h1", boom)
    assert attempts(layout, "forward", "shard-00001") == 2


@pytest.mark.parametrize(
    ("exc", "want"),
    [
        (KeyError("x"), "KeyError: 'x'"),
        (RuntimeError(""), "RuntimeError: "),
        (OSError("a" * 400), "OSError: " + "a" * 300),
    ],
)
def test_error_text_is_one_bounded_line(exc, want):
    assert error_text(exc) == want
