"""The testbeds' model cache: code digests for cache keys, a file lock, and the atomic build of one
cached folder (``model.pt``, ``ground_truth.json``, ``report.json``), shared by every testbed builder."""

from __future__ import annotations

import ast
import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

MODEL_FILE = "model.pt"
TRUTH_FILE = "ground_truth.json"
REPORT_FILE = "report.json"

_AST_LOCK = threading.Lock()


@functools.lru_cache(maxsize=64)
def code_only(source: str) -> str:
    """The module's syntax tree without docstrings (comments are not in it): edits to the prose of a
    testbed do not invalidate cached models, edits to its code do. ``ast.parse`` is not safe to call from
    several threads at once in CPython 3.11 (the demo loads models from worker threads): one at a time,
    and each source is parsed once per process."""
    with _AST_LOCK:
        tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def code_digest(paths: Iterable[Path]) -> str:
    """16 hex digits over the code (docstrings excluded) of these source files, named by file name."""
    h = hashlib.sha256()
    for path in paths:
        h.update(path.name.encode() + b"\0" + code_only(path.read_text()).encode())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created if missing) for the duration of the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


Built = tuple[nn.Module, dict[str, Any], dict[str, Any]]


def build_cached(cache: Path, prefix: str, key: str, build: Callable[[], Built]) -> Path:
    """``cache/<prefix>-<key>/``: returned as it is when it exists; else built once (concurrent builders
    of one key serialise on ``cache/.<prefix>-<key>.lock``), written under a temp name and renamed, so
    a half-written folder is never read as done. ``build()`` returns the model and the JSON-able truth
    and report."""
    final = cache / f"{prefix}-{key}"
    if final.is_dir():
        return final
    with file_lock(cache / f".{prefix}-{key}.lock"):
        if final.is_dir():  # another process built it while we waited
            return final
        log.info("building %s %s into %s", prefix, key, cache)
        model, truth, report = build()
        tmp = cache / f".{prefix}-{key}.{uuid.uuid4().hex}.tmp"
        tmp.mkdir(parents=True)
        try:
            torch.save(model.state_dict(), tmp / MODEL_FILE)
            (tmp / TRUTH_FILE).write_text(json.dumps(truth, indent=1, sort_keys=True))
            (tmp / REPORT_FILE).write_text(json.dumps(report, indent=1, sort_keys=True))
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("%s %s built in %.1f s", prefix, key, float(report.get("build_seconds", float("nan"))))
    return final
