"""Spec-named ``package.module:callable`` references (``model.arch``, ``model.transform``, embedders),
resolved by import only, never by evaluating a string.

Where modules are looked for: the installed packages and ``PYTHONPATH`` first, then the current
directory (the folder ``neurodis`` runs from; inside ``ray job submit --working-dir`` that is the job's
working directory). On Ray workers, the driver's folders come too: the Ray runner hands them to every
worker (``use_driver_folders``) before it builds anything, so a worker imports the same file as the
driver whatever its own current directory is.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import logging
import os
import sys
from pathlib import Path
from typing import Any

from neurodis.types import SpecError

log = logging.getLogger(__name__)

_driver_folders: list[str] = []  # set in Ray workers: the driver's search folders


def search_folders() -> list[str]:
    """The folders searched after the installed packages: the current directory, then (in a Ray
    worker) the driver's (absolute paths, no duplicates)."""
    out: list[str] = []
    for folder in [os.getcwd(), *_driver_folders]:
        folder = os.path.abspath(folder)
        if folder not in out:
            out.append(folder)
    return out


def use_driver_folders(folders: list[str]) -> None:
    """In a worker process: search the driver's folders too (replaces any earlier driver's)."""
    _driver_folders[:] = list(folders)


def is_reference(text: str) -> bool:
    """``package.module:callable`` with identifiers on both sides."""
    module, sep, attr = text.partition(":")
    return bool(
        sep
        and module
        and attr
        and all(p.isidentifier() for p in module.split("."))
        and all(p.isidentifier() for p in attr.split("."))
    )


def _on_sys_path(folders: list[str]) -> None:
    present = {os.path.abspath(p or os.curdir) for p in sys.path}
    for folder in folders:
        if folder not in present:
            sys.path.append(folder)  # after the installed packages: an installed module of a name wins


def _where(folders: list[str]) -> str:
    return ", ".join(repr(f) for f in folders)


def import_callable(ref: str, key: str) -> Any:
    """The object named by ``package.module:callable``; every failure is a ``SpecError`` that names
    ``key``, the module, the folders searched and the fix."""
    if not is_reference(ref):
        raise SpecError(f"{key} {ref!r}: a reference must look like 'package.module:callable'")
    module_name, _, attr = ref.partition(":")
    top = module_name.split(".")[0]
    folders = search_folders()
    _on_sys_path(folders)
    importlib.invalidate_caches()  # a file written since the folder was last listed is found too
    local = None if top in sys.modules else importlib.machinery.PathFinder.find_spec(top, folders)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise SpecError(
                f"{key} {ref!r}: cannot import module {module_name!r}: it is neither installed nor in "
                f"{_where(folders)}; run neurodis from the folder that holds {top}.py (or the package "
                f"folder {top}/), add that folder to PYTHONPATH, or pip install the package"
            ) from None
        raise SpecError(
            f"{key} {ref!r}: module {module_name!r} was found but imports {e.name!r}, which is not "
            f"installed ({e}); install it in this environment (and on every Ray node)"
        ) from None
    except Exception as e:  # noqa: BLE001 - the user's module may raise anything while importing
        raise SpecError(
            f"{key} {ref!r}: importing module {module_name!r} raised {type(e).__name__}: {e}; "
            "fix the module (python -c 'import " + module_name + "' shows the traceback)"
        ) from None
    origin = getattr(sys.modules.get(top), "__file__", None)
    if local is not None and local.origin and origin and Path(origin) != Path(local.origin):
        log.warning(
            "%s %r: module %r was imported from %s, not from %s: an installed module of that name comes "
            "first; rename the local file to use it",
            key,
            ref,
            top,
            origin,
            local.origin,
        )
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SpecError(
                f"{key} {ref!r}: module {module_name!r} ({getattr(module, '__file__', '?')}) has no "
                f"attribute {attr!r}; check the name after the ':'"
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise SpecError(f"{key} {ref!r}: {attr!r} is a {type(obj).__name__}, not a callable")
    return obj
