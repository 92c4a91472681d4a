"""`module:callable` references resolve from the current directory, as a user runs neurodis next to
their `mymodel.py`; import failures name the module, the folders searched and the fix."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from neurodis.callables import import_callable
from neurodis.cli import main
from neurodis.models.embedders_registry import get_embedder
from neurodis.types import SpecError
from tests.conftest import write_images


def test_cli_layers_imports_a_module_from_the_current_directory(user_module: str, capsys):
    from neurodis.models.layers import discover_layers
    from neurodis.models.tiny import TinyCNN

    with pytest.raises(ModuleNotFoundError):  # not importable the ordinary way: only neurodis finds it
        __import__(user_module)
    assert main(["layers", f"{user_module}:build"]) == 0
    out = capsys.readouterr().out
    want = [i for i in discover_layers(TinyCNN(), 32) if i.default or "." not in i.path]
    rows = out.splitlines()[1:]
    assert [r.split()[0] for r in rows] == [i.path for i in want]
    assert f"{list(want[0].shape)}" in rows[0]  # the builder's own 32-pixel input


def test_cli_audit_with_a_spec_naming_the_module(user_module: str, tmp_path: Path, capsys):
    write_images(Path("probe"), per_class=2, size=(40, 50))
    Path("spec.yaml").write_text(
        yaml.safe_dump(
            {
                "model": {"arch": f"{user_module}:build", "transform": f"{user_module}:transform"},
                "data": {"kind": "imagefolder", "root": "probe"},
                "layers": ["layer1"],
                "forward": {"top_k": 2},
                "output": "run",
            }
        )
    )
    assert main(["audit", "--local", "spec.yaml"]) == 0
    assert "forward: 4 images, 0 rejected" in capsys.readouterr().out


def test_embedder_from_the_current_directory(user_module: str):
    emb = get_embedder(f"{user_module}:embedder")
    assert emb.name and emb.dim > 0
    with pytest.raises(ValueError, match=r"embedder 'no_such_embedder_mod:make': cannot import module"):
        get_embedder("no_such_embedder_mod:make")


def test_an_import_failure_names_the_module_the_folders_and_the_fix(user_module: str, capsys):
    here = os.getcwd()
    with pytest.raises(SpecError) as err:
        import_callable("no_such_user_mod.sub:build", "model.arch")
    text = str(err.value)
    assert text.startswith(
        "model.arch 'no_such_user_mod.sub:build': cannot import module 'no_such_user_mod.sub'"
    )
    assert repr(here) in text
    assert "run neurodis from the folder that holds no_such_user_mod.py" in text
    assert "PYTHONPATH" in text and "\n" not in text
    # through the command line: exit code 2 and the same line
    assert main(["layers", "no_such_user_mod:build"]) == 2
    assert (
        "neurodis: error: model.arch 'no_such_user_mod:build': cannot import module"
        in capsys.readouterr().err
    )


@pytest.mark.parametrize(
    "source, match",
    [
        (
            "import no_such_dependency_xyz\n",
            r"was found but imports 'no_such_dependency_xyz', which is not installed",
        ),
        ("raise RuntimeError('half-written')\n", r"importing module '.*' raised RuntimeError: half-written"),
        ("x = 1\n", r"has no attribute 'build'; check the name after the ':'"),
        ("build = 1\n", r"'build' is a int, not a callable"),
    ],
)
def test_a_module_that_does_not_deliver(source: str, match: str, user_module: str):
    name = f"{user_module}_b"
    Path(f"{name}.py").write_text(source)
    try:
        with pytest.raises(SpecError, match=match):
            import_callable(f"{name}:build", "model.arch")
    finally:
        import sys

        sys.modules.pop(name, None)
