"""Opening a run directory for the verbs that read one back (``status``, ``explain``, ``assign``):
its stored spec, and a neuron named on the command line checked against the layers the run audited.
Every error is one line naming the run and the fix."""

from __future__ import annotations

from pathlib import Path

from neurodis.config import AuditSpec, load_spec, spec_from_yaml
from neurodis.io.layout import RunLayout
from neurodis.io.tables import read_table
from neurodis.sections import did_you_mean
from neurodis.types import NeuronRef, SpecError


def open_run(run_dir: str | Path) -> tuple[RunLayout, AuditSpec]:
    """The run's layout and stored spec; ``FileNotFoundError`` when ``run_dir`` is not a run directory."""
    layout = run_layout(run_dir)
    return layout, run_spec(layout)


def run_spec(layout: RunLayout) -> AuditSpec:
    """The run's stored spec (its ``spec.yaml``, local or on an object store)."""
    p = layout.spec_path
    return load_spec(p.local) if not p.remote else spec_from_yaml(p.read_text(), str(p))


def run_layout(run_dir: str | Path) -> RunLayout:
    """The layout of an existing run directory; ``FileNotFoundError`` naming the fix otherwise."""
    layout = RunLayout(run_dir)
    if not layout.spec_path.is_file():
        what = "does not exist" if not layout.root.exists() else "has no spec.yaml"
        raise FileNotFoundError(
            f"{run_dir} {what}: it is not a neurodis run directory; pass the --out of an audit"
        )
    return layout


def audited_layers(layout: RunLayout) -> dict[str, int]:
    """Layer -> number of channels, from the run's committed ``neurons`` table, in audit order."""
    t = read_table(layout, "neurons", columns=["layer", "channel"])
    out: dict[str, int] = {}
    for layer, channel in zip(t["layer"].to_pylist(), t["channel"].to_pylist()):
        out[layer] = max(out.get(layer, 0), int(channel) + 1)
    return out


def resolve_neuron(layout: RunLayout, spec: AuditSpec, text: str) -> NeuronRef:
    """Parse ``layer/channel`` (or ``model/layer/channel``) and check it against the run: its model,
    one of its audited layers, a channel of that layer. Raises ``SpecError`` listing the run's layers."""
    model = spec.model.model_name
    ref = NeuronRef.parse(text, model)
    layers = audited_layers(layout)
    if not layers:
        raise SpecError(
            f"{layout.root} has no committed neurons (its forward stage has not finished); resume the "
            "audit with the same command first"
        )
    listed = f"its layers: {list(layers)}"
    if ref.model != model:
        raise SpecError(
            f"neuron {text!r} names model {ref.model!r}, but {layout.root} audited {model!r} ({listed}); "
            "write LAYER/CHANNEL, e.g. "
            f"{next(iter(layers))}/0"
        )
    if ref.layer not in layers:
        raise SpecError(
            f"neuron {text!r}: {layout.root} did not audit layer {ref.layer!r}"
            f"{did_you_mean(ref.layer, layers)}; {listed}"
        )
    if ref.channel >= layers[ref.layer]:
        raise SpecError(
            f"neuron {text!r}: layer {ref.layer!r} has channels 0..{layers[ref.layer] - 1} in {layout.root}"
        )
    return ref
