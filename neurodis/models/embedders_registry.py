"""Embedders by name: an exact-name registry of factories, plus ``package.module:callable`` paths.

``get_embedder(name)`` returns an object implementing ``neurodis.models.embedder.Embedder``.
Factories import their heavy dependencies lazily. Add an embedder with ``EMBEDDERS[name] = factory``
(a zero-argument callable); open_clip models are named ``open_clip:<model>`` (neurodis.models.clip).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from neurodis.models.embedder import Embedder
from neurodis.types import SpecError


def _toy() -> Embedder:
    from neurodis.models.tiny import ToyEmbedder

    return ToyEmbedder()


def _testbed(name: str) -> Callable[[], Embedder]:
    def factory() -> Embedder:
        try:
            module = importlib.import_module("neurodis.testbed.embedders")
        except ImportError as e:
            raise ValueError(
                f"embedder {name!r} needs neurodis.testbed.embedders, which cannot be imported ({e})"
            ) from None
        make = getattr(module, "get_oracle", None) or getattr(module, "oracle_embedder", None)
        table = getattr(module, "EMBEDDERS", None)  # the testbed's own name -> factory table
        if make is None and isinstance(table, dict) and name in table:
            return table[name]()  # type: ignore[no-any-return]
        if make is None:
            raise ValueError(f"embedder {name!r}: neurodis.testbed.embedders has no get_oracle(name) factory")
        return make(name)  # type: ignore[no-any-return]

    return factory


EMBEDDERS: dict[str, Callable[[], Any]] = {
    "toy": _toy,
    "oracle-a": _testbed("oracle-a"),
    "oracle-b": _testbed("oracle-b"),
}


OPEN_CLIP_PREFIX = "open_clip:"  # "open_clip:<model>": any open_clip model (neurodis.models.clip)


def _import_callable(name: str) -> Any:
    """The object at ``package.module:callable`` (imported, never evaluated; modules of the working
    directory too, see ``neurodis.callables``); ValueError naming it."""
    from neurodis.callables import import_callable
    from neurodis.types import SpecError

    try:
        return import_callable(name, "embedder")
    except SpecError as e:  # a plain ValueError: the caller prefixes its spec key
        raise ValueError(str(e)) from None


def _unknown(name: str) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(EMBEDDERS), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return (
        f"unknown embedder {name!r}{hint}; known: {sorted(EMBEDDERS)}, 'open_clip:<model>' or "
        "'package.module:callable'"
    )


def check_embedder(
    name: str,
    checkpoint: str | None,
    key: str = "embed.embedder",
    checkpoint_key: str = "embed.checkpoint",
    cache_dir: str | None = None,
) -> str:
    """Check that embedder ``name`` (the spec's ``key``) exists and its weights (``checkpoint_key``) are
    there, without loading them; returns what its outputs depend on (name and weights) for config
    hashes. Errors are ``SpecError``s naming the key."""
    if name.startswith(OPEN_CLIP_PREFIX):
        from neurodis.models.clip import check_model, resolve_checkpoint

        model = name[len(OPEN_CLIP_PREFIX) :]
        check_model(model, key)
        return f"{name}|{resolve_checkpoint(model, checkpoint, cache_dir, checkpoint_key)[1]}"
    if name in EMBEDDERS:
        return name
    if ":" not in name:
        raise SpecError(f"{key}: {_unknown(name)}")
    try:
        _import_callable(name)
    except ValueError as e:
        raise SpecError(f"{key}: {e}; install the package or fix the name") from None
    return name


def get_embedder(
    name: str, checkpoint: str | None = None, device: str | None = None, cache_dir: str | None = None
) -> Embedder:
    """The embedder registered as ``name``, ``open_clip:<model>`` (weights from ``checkpoint``: a local
    file, a cached pretrained tag, or ``random``), or built by the callable at ``package.module:callable``."""
    if name.startswith(OPEN_CLIP_PREFIX):
        from neurodis.models.clip import OpenClipEmbedder

        emb: Any = OpenClipEmbedder(
            name[len(OPEN_CLIP_PREFIX) :], checkpoint, device or "cpu", cache_dir, name=name
        )
    elif name in EMBEDDERS:
        emb = EMBEDDERS[name]()
    elif ":" in name:
        emb = _import_callable(name)()
    else:
        raise ValueError(_unknown(name))
    if not isinstance(emb, Embedder):
        raise ValueError(
            f"embedder {name!r} built a {type(emb).__name__}, which lacks the Embedder interface "
            "(name, dim, embed_images, embed_texts)"
        )
    return emb
