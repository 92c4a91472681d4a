"""Command line: argument parsing and printing only."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import shlex
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from neurodis import registry
from neurodis.types import SpecError

DEMO_IMAGES = 2000


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread as Ctrl-C raises ``KeyboardInterrupt``: the run stops the
    same way (committed units kept, Ray shut down) and the process exits 143."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


def _catch_signals() -> None:
    """SIGINT -> ``KeyboardInterrupt``, SIGTERM -> ``Terminated``."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_terminated)


def _print_summary(summary: dict[str, Any]) -> None:
    """One line per stage (its headline) and per stage and layer (its results), then the warnings."""
    print(f"run: {summary['run_dir']}  ({summary['seconds']} s)")
    for stage, s in summary["stages"].items():
        if "text" in s:  # the method's own one-line account
            print(f"  {stage}: {s['text']}")
        elif not s.get("lines"):
            plain = {k: v for k, v in s.items() if not isinstance(v, (dict, list)) and not k.endswith("hash")}
            print(f"  {stage}: {json.dumps(plain)}")
        for line in s.get("lines", []):
            print(f"  {stage} {line}")
    for w in summary.get("warnings", []):
        print(f"warning: {w}")


def _run_stoppably(make_runner: Callable[[], Any], work: Callable[[Any], Any]) -> Any:
    """``work(make_runner())`` with SIGINT and SIGTERM stopping it cleanly: the runner's Ray is shut
    down, then the interrupt propagates to :func:`main`, which says how to resume. The process's
    signal handlers are restored after."""
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        return work(make_runner())
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    runner = None
    try:
        _catch_signals()
        runner = make_runner()
        _catch_signals()  # again: ray.init installs its own SIGTERM handler
        return work(runner)
    except KeyboardInterrupt:
        for s in previous:  # a second signal must not break the shutdown
            signal.signal(s, signal.SIG_IGN)
        shutdown = getattr(runner, "shutdown", None)
        if shutdown is not None:
            shutdown()
        raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def cmd_audit(args: argparse.Namespace) -> int:
    from neurodis.config import load_spec
    from neurodis.orchestration.audit import run_audit
    from neurodis.orchestration.runners import LocalRunner, RayRunner
    from neurodis.preflight import run_preflight

    overrides: dict[str, Any] = {}
    if args.stages:
        overrides["stages"] = args.stages
    spec = load_spec(args.spec, overrides)
    run_preflight(spec, args.out)  # every problem of the spec at once, before Ray starts
    summary = _run_stoppably(
        lambda: LocalRunner() if args.local else RayRunner(address=args.address),
        lambda runner: run_audit(
            spec, out=args.out, runner=runner, overwrite=args.overwrite, preflight=False
        ),
    )
    _print_summary(summary)
    return 0


def cmd_layers(args: argparse.Namespace) -> int:
    from neurodis.config import ModelConfig, load_spec
    from neurodis.models.layers import discover_layers
    from neurodis.models.loading import load_model, resolve_preprocess

    target = args.target
    if target.endswith((".yaml", ".yml")) and Path(target).is_file():
        cfg = load_spec(target).model
    else:
        cfg = ModelConfig(arch=target, input_size=args.input_size)
    model = load_model(cfg)
    size = resolve_preprocess(cfg, model).crop
    infos = discover_layers(model, size)
    if not args.all:
        infos = [i for i in infos if i.default or "." not in i.path]
    width = max((len(i.path) for i in infos), default=10)
    print(f"{'module path':<{width}}  {'channels':>8}  {'output shape':<18} type   (* = in `layers: all`)")
    for i in infos:
        print(
            f"{i.path:<{width}}  {i.channels:>8}  {str(list(i.shape)):<18} "
            f"{i.module_type}{' *' if i.default else ''}"
        )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from neurodis.orchestration.audit import stage_status

    for stage, s in stage_status(args.run_dir).items():
        line = f"{stage}: {s['committed']} committed, {s['pending']} pending"
        if not (s["planned"] or s["committed"] or s["pending"]):
            line = f"{stage}: not planned yet"
        if s["pending_units"]:
            line += f" (next: {', '.join(s['pending_units'][:5])})"
        if not s.get("known", True):
            line += " (a stage this neurodis version does not know)"
        print(line)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from neurodis.orchestration.demo import DemoConfig, render_scorecard, run_demo
    from neurodis.orchestration.runners import LocalRunner, RayRunner

    cfg = DemoConfig(n_images=args.images)
    result = _run_stoppably(
        lambda: LocalRunner() if args.local else RayRunner(address=args.address),
        lambda runner: run_demo(args.out, cfg, runner),
    )
    _print_summary(result["summary"])
    print(render_scorecard(result["scorecard"]))
    print(f"scorecard: {Path(args.out) / 'scorecard.json'}")
    report = result.get("report")
    if report and "error" in report:
        print(f"report: failed ({report['error']})")
    elif report:
        print(f"report: {report['index']}  ({report['pages']} neuron pages, {report['seconds']} s)")
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from neurodis.tools.diff import diff_runs

    if args.report is not None:
        from neurodis.report import build_diff_report

        summary = build_diff_report(args.run_a, args.run_b, args.out, args.report or None)
    else:
        summary = diff_runs(args.run_a, args.run_b, args.out)
    print(summary["text"], end="")
    print(f"table: {Path(args.out) / 'neuron_diff.parquet'}")
    if args.report is not None:
        print(f"report: {summary['index']}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from neurodis.report import build_report

    mapper = None
    if args.address:
        from neurodis.orchestration.report import ray_mapper

        mapper = ray_mapper(args.address)
    result = build_report(
        args.run_dir,
        args.out,
        neurons=args.neurons,
        max_pages=args.max_pages,
        refs=args.refs,
        workers=args.workers,
        mapper=mapper,
        map_method=args.map,
    )
    for problem in result["problems"]:
        print(f"warning: {problem}")
    print(
        f"{result['neurons']} neurons, {result['pages']} neuron pages, "
        f"{result['bytes'] / 1e6:.1f} MB in {result['seconds']} s"
    )
    print(f"report: {result['index']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="neurodis", description="Audit every neuron of a vision model for polysemanticity."
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    a = sub.add_parser("audit", help="run an audit spec (resumes an interrupted run)")
    a.add_argument("spec", help="audit spec YAML")
    a.add_argument("--out", help="run directory (default: the spec's output)")
    a.add_argument("--stages", nargs="+", help="run only these stages")
    a.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or an embedded local Ray)")
    a.add_argument("--local", action="store_true", help="run in this process without Ray (debugging)")
    a.add_argument("--overwrite", action="store_true", help="recompute stages whose config changed")
    a.set_defaults(fn=cmd_audit)

    la = sub.add_parser("layers", help="list the auditable module paths of a model")
    la.add_argument("target", help="torchvision model name, package.module:callable, or a spec YAML")
    la.add_argument("--input-size", type=int, default=224)
    la.add_argument("--all", action="store_true", help="every module, not only blocks and top-level modules")
    la.set_defaults(fn=cmd_layers)

    s = sub.add_parser("status", help="committed / pending shards per stage of a run directory")
    s.add_argument("run_dir")
    s.set_defaults(fn=cmd_status)

    dm = sub.add_parser("demo", help="audit the ground-truth testbed and score every method against it")
    dm.add_argument(
        "--out", default="runs/demo", help="folder for the probe set, one run per network and scorecard.json"
    )
    dm.add_argument("--images", type=int, default=DEMO_IMAGES, help=f"probe images (default {DEMO_IMAGES})")
    dm.add_argument("--address", help="Ray cluster address (default: an embedded local Ray)")
    dm.add_argument("--local", action="store_true", help="run in this process without Ray")
    dm.set_defaults(fn=cmd_demo)

    for method in registry.METHODS:  # each method's own verbs (PURE's `assign`, LE's `explain`)
        if method.cli:
            importlib.import_module(method.cli).register(sub)

    d = sub.add_parser("diff", help="compare two audits of one architecture neuron by neuron")
    d.add_argument("run_a")
    d.add_argument("run_b")
    d.add_argument("--out", default="runs/diff", help="folder for neuron_diff.parquet and diff_summary.txt")
    d.add_argument(
        "--report",
        nargs="?",
        const="",
        metavar="DIR",
        help="also write a browsable page of the diff (default DIR: OUT/report)",
    )
    d.set_defaults(fn=cmd_diff)

    r = sub.add_parser(
        "report", help="write a static site of an audit (overview, neuron index, neuron pages)"
    )
    r.add_argument("run_dir")
    r.add_argument("--out", help="report folder (default: RUN/report)")
    r.add_argument("--neurons", nargs="+", metavar="LAYER/CHANNEL", help="pages for these neurons only")
    r.add_argument(
        "--max-pages", type=int, help="at most this many neuron pages, spread over the PSI ranking"
    )
    r.add_argument("--refs", type=int, default=12, help="references shown per neuron and virtual neuron")
    r.add_argument("--workers", type=int, help="local processes drawing the pages (default: CPUs, at most 8)")
    r.add_argument("--address", help="draw the pages as tasks on this Ray cluster")
    r.add_argument(
        "--map", choices=("pca", "umap"), default="pca", help="2-D map of PURE's attribution vectors"
    )
    r.set_defaults(fn=cmd_report)

    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.fn(args))
    except SpecError as e:
        print(f"neurodis: error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, RuntimeError) as e:
        print(f"neurodis: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:  # Ctrl-C (SIGINT), or SIGTERM during an audit
        terminated = isinstance(e, Terminated)
        line = f"neurodis: stopped by {'SIGTERM' if terminated else 'SIGINT'}"
        if args.command in ("audit", "demo"):
            line += (
                "; committed units are kept and unfinished ones are redone: resume with "
                f"`neurodis {shlex.join(argv)}`"
            )
        print(line, file=sys.stderr)
        return 143 if terminated else 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
