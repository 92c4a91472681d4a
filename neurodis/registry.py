"""The method registry: every method, in the order an audit runs them. Adding a method is a package
under ``neurodis/methods/`` and one line here; the spec, the tables, ``neurodis status``, the demo's
scorecard and the CLI all read this tuple (through this module, so a test may extend it)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from neurodis.methods import embed, forward, le, patch_swap, psi, pure

if TYPE_CHECKING:
    from neurodis.pipeline.method import Method

METHODS: tuple[Method, ...] = (
    forward.METHOD,
    pure.METHOD,
    embed.METHOD,
    psi.METHOD,
    patch_swap.METHOD,
    le.METHOD,
)


def stage_order() -> tuple[str, ...]:
    """The stage names a spec may list, in run order."""
    return tuple(m.stage for m in METHODS)


def by_stage() -> dict[str, Method]:
    return {m.stage: m for m in METHODS}


def by_name() -> dict[str, Method]:
    return {m.name: m for m in METHODS}
