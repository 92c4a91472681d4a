"""Small value types shared by every layer of the package."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True, order=True)
class NeuronRef:
    """One channel of one module output of one model: ``"resnet50/layer4.2/117"``."""

    model: str
    layer: str
    channel: int

    def __str__(self) -> str:
        return f"{self.model}/{self.layer}/{self.channel}"

    @classmethod
    def parse(cls, text: str, model: str = "") -> NeuronRef:
        """Parse ``model/layer/channel`` or ``layer/channel`` (then ``model`` is the given default);
        ``SpecError`` (a ``ValueError``) names what is wrong with ``text``."""
        parts = text.strip().split("/")
        if len(parts) == 2:
            parts = [model, *parts]
        if len(parts) != 3 or not parts[1]:
            raise SpecError(
                f"neuron {text!r} is not 'layer/channel' or 'model/layer/channel' (e.g. layer4/117)"
            )
        try:
            channel = int(parts[2])
        except ValueError:
            raise SpecError(f"neuron {text!r}: channel {parts[2]!r} is not an integer") from None
        if channel < 0:
            raise SpecError(f"neuron {text!r}: channel must be >= 0")
        return cls(parts[0], parts[1], channel)


class SpecError(ValueError):
    """A bad audit spec or bad input named before any compute; the message says what to fix.

    ``SpecError("key: problem; fix")`` is one problem on one line. ``SpecError([p1, p2, ...])`` reports
    several problems together (the preflight's way), one line each; ``problems`` holds them."""

    def __init__(self, problems: str | Sequence[str]) -> None:
        items = (problems,) if isinstance(problems, str) else tuple(dict.fromkeys(problems))
        self.problems: tuple[str, ...] = items or ("spec error (no detail given)",)
        if len(self.problems) == 1:
            text = self.problems[0]
        else:
            text = f"{len(self.problems)} problems, fix each:\n" + "\n".join(
                f"  - {p}" for p in self.problems
            )
        super().__init__(text)

    def __reduce__(self) -> tuple[type[SpecError], tuple[tuple[str, ...]]]:  # pickles with its problems
        return (SpecError, (self.problems,))


def gather(problems: list[str], check: Callable[[], T]) -> T | None:
    """Run ``check``; a ``SpecError`` it raises adds its problems to ``problems`` and gives None, so
    independent checks all report (``gather(problems, lambda: load_model(cfg))``)."""
    try:
        return check()
    except SpecError as e:
        problems.extend(e.problems)
        return None
