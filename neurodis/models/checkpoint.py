"""Checkpoints as people save them, read with ``torch.load(weights_only=True)`` only.

Accepted: a state dict (``torch.save(model.state_dict())``), or a training checkpoint holding one under
``state_dict``, ``model_state_dict``, ``model``, ``net`` or ``network`` (the plain weights; EMA weights
under ``state_dict_ema``, ``model_ema``, ``ema`` or ``ema_state_dict`` are used only when the file holds
no plain ones), or any dict holding exactly one state dict. Keys saved through
``torch.nn.DataParallel``/``DistributedDataParallel`` (``module.``) or ``torch.compile``
(``_orig_mod.``), in any combination and on either side, are matched to the model's own keys. The model
then accepts exactly what ``model.load_state_dict(state, strict=True)`` accepts (a BatchNorm
``num_batches_tracked`` buffer, for one, may be absent from a dict without version metadata).
A file holding pickled Python objects (``torch.save(model)``) is refused, never unpickled.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import re
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from neurodis.io.store import StorePath, storage_problem
from neurodis.types import SpecError

log = logging.getLogger(__name__)

PLAIN_KEYS = ("state_dict", "model_state_dict", "model", "net", "network")
EMA_KEYS = ("state_dict_ema", "model_ema", "ema", "ema_state_dict")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DDP, torch.compile
SAVE_HINT = "save model.state_dict() with torch.save"


def load_checkpoint(model: nn.Module, path: str | Path, arch: str) -> None:
    """Load the weights in ``path`` (a local file or a URI on an object store) into ``model``; every
    failure is one line naming the fix (the model is then left partly loaded: discard it)."""
    p = StorePath.of(os.path.expanduser(os.fspath(path)))
    where = f"model.checkpoint {str(p)!r}"
    problem = storage_problem("model.checkpoint", str(p), write=False) if p.remote else None
    if problem:
        raise SpecError(problem)
    if not p.is_file():
        raise SpecError(f"{where} does not exist; fix the path or leave checkpoint out")
    state, inside = find_state_dict(read_checkpoint(p), where)
    fitted, renamed = fit_keys(model, state)
    if renamed:
        log.info(
            "%s: matched %d keys saved with a wrapper prefix (%s)", where, renamed, "/".join(WRAPPER_PREFIXES)
        )
    own = model.state_dict()
    try:
        result = model.load_state_dict(fitted, strict=False)
    except RuntimeError as e:  # size mismatches raise even when not strict
        parts = [_mismatch(own, fitted, str(e))] + _key_counts(
            [k for k in own if k not in fitted], [k for k in fitted if k not in own]
        )
        raise SpecError(
            f"{where}{inside} does not fit model.arch {arch!r}: {', '.join(parts)}; use the checkpoint "
            "saved from this architecture (same layer sizes and number of classes)"
        ) from None
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if missing or unexpected:
        counts = ", ".join(_key_counts(missing, unexpected))
        raise SpecError(
            f"{where}{inside} does not fit model.arch {arch!r}: {counts}; "
            f"{_key_hint(missing, unexpected, list(own))}"
        )


def _key_counts(missing: list[str], unexpected: list[str]) -> list[str]:
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {_examples(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {_examples(unexpected)})")
    return parts


def read_checkpoint(p: Path | StorePath) -> Any:
    """``torch.load(p, weights_only=True)`` (an object on a store read into memory first); a refusal or
    unreadable file is a ``SpecError`` carrying the whole reason."""
    where = f"model.checkpoint {str(p)!r}"
    try:
        source = io.BytesIO(p.read_bytes()) if isinstance(p, StorePath) and p.remote else os.fspath(p)
        return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = unpickler_reason(str(e))
        if "GLOBAL" in reason:
            raise SpecError(
                f"{where} holds pickled Python objects, which torch.load(weights_only=True) refuses: "
                f"{reason} neurodis never unpickles objects (a whole model saved with torch.save(model) "
                f"is one): load the file once in a Python session you trust and {SAVE_HINT} instead"
            ) from None
        raise SpecError(
            f"{where} is not a readable torch checkpoint: {reason} Pass a file: {SAVE_HINT}"
        ) from None
    except Exception as e:  # noqa: BLE001 - torch raises many types for a file it cannot read
        text = " ".join(str(e).split()) or "no detail"
        raise SpecError(
            f"{where} is not a readable torch checkpoint (torch.load raised {type(e).__name__}: {text}); "
            f"pass a file written by torch.save: {SAVE_HINT}"
        ) from None


def unpickler_reason(text: str) -> str:
    """The reason in torch's weights-only refusal, whole, on one line, without its advice to load with
    ``weights_only=False`` or to allow-list globals."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    text = text.split("Check the documentation of torch.load", 1)[0]
    sentences = re.split(r"(?<=\.)\s+", " ".join(text.split()))
    kept = [
        s
        for s in sentences
        if s and not re.search(r"safe_globals|allowlist|weights_only`? (set to|=) `?False", s)
    ]
    reason = " ".join(kept).strip() or "the unpickler refused the file"
    return reason if reason.endswith(".") else reason + "."


def is_state_dict(obj: Any) -> bool:
    """A non-empty mapping of parameter names to tensors (``_extra_state`` entries may hold anything)."""
    return (
        isinstance(obj, dict)
        and bool(obj)
        and all(isinstance(k, str) for k in obj)
        and all(isinstance(v, torch.Tensor) or k.endswith("_extra_state") for k, v in obj.items())
    )


def find_state_dict(obj: Any, where: str, depth: int = 0) -> tuple[dict[str, Any], str]:
    """(the state dict, where it sits in the file, e.g. ``"['state_dict']"``)."""
    if is_state_dict(obj):
        return obj, ""
    if not isinstance(obj, dict):
        raise SpecError(f"{where} holds a {type(obj).__name__}, not a state dict; {SAVE_HINT}")
    keys = [k for k in obj if isinstance(k, str)]
    if depth < 2:
        for key in PLAIN_KEYS + EMA_KEYS:
            if key in obj and isinstance(obj[key], dict):
                try:
                    state, inside = find_state_dict(obj[key], where, depth + 1)
                except SpecError:
                    continue
                ema = [k for k in EMA_KEYS if k in obj and k != key]
                if key in EMA_KEYS:
                    log.info("%s: no plain weights in the file; loading the EMA weights under %r", where, key)
                elif ema:
                    log.info(
                        "%s: loading the weights under %r (the EMA weights under %r are not used)",
                        where,
                        key,
                        ema[0],
                    )
                return state, f"[{key!r}]{inside}"
    found = [k for k in keys if is_state_dict(obj[k])]
    if len(found) == 1:
        return obj[found[0]], f"[{found[0]!r}]"
    if len(found) > 1:
        raise SpecError(
            f"{where} holds {len(found)} state dicts ({', '.join(map(repr, found))}); save the one to audit "
            f"alone: torch.save(checkpoint[{found[0]!r}], path)"
        )
    shown = ", ".join(repr(k) for k in keys[:8]) + (" ..." if len(keys) > 8 else "")
    raise SpecError(
        f"{where} holds a dict with keys {shown or 'none'} and no state dict (looked under "
        f"{', '.join(PLAIN_KEYS + EMA_KEYS)}); {SAVE_HINT}"
    )


def strip_wrappers(key: str) -> str:
    """``key`` without leading ``module.``/``_orig_mod.`` components, in any combination."""
    while True:
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                break
        else:
            return key


def fit_keys(model: nn.Module, state: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """``state`` with keys renamed to the model's own where they differ only by wrapper prefixes, and its
    version metadata moved along; (fitted state, number of keys renamed). Ambiguous matches rename
    nothing."""
    own = list(model.state_dict())
    by_norm = {strip_wrappers(k): k for k in own}
    if len(by_norm) != len(own) or set(state) == set(own):
        return state, 0
    renamed = {k: by_norm.get(strip_wrappers(k), k) for k in state}
    if len(set(renamed.values())) != len(renamed):
        return state, 0
    fitted: dict[str, Any] = OrderedDict((renamed[k], v) for k, v in state.items())
    metadata = getattr(state, "_metadata", None)
    if metadata is not None:  # per-module versions (e.g. BatchNorm's), keyed by module name
        modules = {strip_wrappers(name + ".").rstrip("."): name for name, _ in model.named_modules()}
        moved = OrderedDict()
        for name, value in metadata.items():
            moved[modules.get(strip_wrappers(name + ".").rstrip("."), name)] = value
        fitted._metadata = moved  # type: ignore[attr-defined]
    return fitted, sum(1 for k, v in renamed.items() if k != v)


def _examples(keys: list[str], n: int = 3) -> str:
    return ", ".join(repr(k) for k in keys[:n]) + (", ..." if len(keys) > n else "")


def _mismatch(own: dict[str, Any], state: dict[str, Any], torch_text: str) -> str:
    shapes = [
        k
        for k in own
        if k in state and isinstance(state[k], torch.Tensor) and tuple(own[k].shape) != tuple(state[k].shape)
    ]
    if not shapes:
        return " ".join(torch_text.split())
    k = shapes[0]
    return (
        f"{len(shapes)} shape mismatches (e.g. {k!r}: checkpoint {tuple(state[k].shape)} vs model "
        f"{tuple(own[k].shape)})"
    )


def _first(key: str) -> str:
    return key.split(".", 1)[0]


def _key_hint(missing: list[str], unexpected: list[str], own: list[str]) -> str:
    """The fix for keys that do not match: a prefix on one side, or another architecture."""
    own_tops = {_first(k) for k in own}
    tops = [t for t, _ in Counter(_first(k) for k in unexpected).most_common(3) if t not in own_tops]
    for top in tops:
        covered = {k[len(top) + 1 :] for k in unexpected if k.startswith(top + ".")} & set(missing)
        if covered and len(covered) * 2 >= len(missing):
            pre = top + "."
            return (
                f"keys starting with {pre!r} hold {len(covered)} of the {len(missing)} missing keys: "
                f"the file holds a larger module whose attribute {top!r} is this network; save that part's "
                f"weights (torch.save(wrapper.{top}.state_dict(), path)) or strip the prefix "
                f"({{k.removeprefix({pre!r}): v for k, v in sd.items() if k.startswith({pre!r})}})"
            )
    if missing:
        top, count = Counter(_first(k) for k in missing).most_common(1)[0]
        if count == len(own) and {k[len(top) + 1 :] for k in missing} & set(unexpected):
            return (
                f"the model's own keys start with {top + '.'!r} and the checkpoint's do not: the builder "
                f"wraps the network; return the network itself from model.arch, or save the checkpoint "
                "from the same wrapper"
            )
    return "use the checkpoint saved from this architecture (model.arch), or the builder that made it"
