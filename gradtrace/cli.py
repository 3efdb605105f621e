"""The ``gradtrace`` command: thin click wrappers around the library.

The library's own errors become ``click.ClickException`` (exit 1); click
handles usage errors (exit 2). A script that raises gets its own traceback,
without gradtrace's frames, and exit 1.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any

import click

from . import __version__
from .errors import GradtraceError
from .render.options import MAX_TIMEOUT, RANKDIRS, THEMES, RenderOptions
from .render.output import FORMATS, format_for

__all__ = ["main"]

_EXTENSIONS = {"svg": ".svg", "png": ".png", "pdf": ".pdf", "dot": ".dot", "json": ".json", "text": ".txt", "html": ".html"}


def _check_timeout(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if not (0 < value <= MAX_TIMEOUT or value == math.inf):  # (NaN fails both)
        raise click.BadParameter(f"{value:g} is not in the range 0<x<={MAX_TIMEOUT:.0f} (seconds; inf for no limit)")
    return value


def _script_options(f: Any) -> Any:
    f = click.option("--step", type=click.IntRange(min=1), default=1, show_default=True, metavar="N",
                     help="Trace the Nth backward() call (and the forward since the previous one).")(f)
    f = click.argument("script_args", nargs=-1, type=click.UNPROCESSED)(f)
    f = click.argument("script", type=click.Path(exists=True, dir_okay=False))(f)
    return f


def _run(script: str, script_args: tuple[str, ...], step: int, run_to_end: bool) -> Any:
    from .script import ScriptFailed, run_script

    try:
        return run_script(script, script_args, step=step, run_to_end=run_to_end)
    except ScriptFailed as e:
        sys.stdout.flush()
        click.echo(e.report, err=True, nl=False)
        raise SystemExit(1) from None
    except GradtraceError as e:
        raise click.ClickException(str(e)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="gradtrace")
def main() -> None:
    """See one PyTorch training step: every autograd node with its value, its gradient, and backprop's order.

    \b
    Example:
        gradtrace render train.py -o step.svg
    """


@main.command(context_settings={"ignore_unknown_options": False})
@_script_options
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False), default=None,
              help="File to write ('-': standard output). Default: SCRIPT's name with the format's suffix, in the working directory.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=None,
              help="Output format. Default: from OUTPUT's suffix, else svg. 'text' without -o prints a table.")
@click.option("--run-to-end", is_flag=True, help="Let the script run on after the traced step instead of stopping it.")
@click.option("--rankdir", type=click.Choice(RANKDIRS), default="TB", show_default=True, help="Direction data flows in the diagram.")
@click.option("--no-values", is_flag=True, help="Leave forward values out of the nodes.")
@click.option("--no-grads", is_flag=True, help="Leave gradients out of the nodes.")
@click.option("--theme", type=click.Choice(THEMES), default="light", show_default=True, help="Colours for light or dark pages.")
@click.option("--timeout", type=float, default=120.0, show_default=True, callback=_check_timeout,
              help=f"Seconds Graphviz may spend on layout, up to {MAX_TIMEOUT:.0f}; inf for no limit.")
@click.option("--depth", type=click.IntRange(min=0), default=None, help="Draw modules deeper than N levels as one node each.")
@click.option("--max-nodes", type=click.IntRange(min=1), default=250, show_default=True,
              help="Without --depth, collapse modules until the diagram has at most this many nodes (nothing is dropped: nodes are grouped).")
@click.option("--module", "module", default=None, metavar="PATH", help="Draw only this module (e.g. encoder.layer.3), with its inputs and outputs as boundary nodes.")
@click.option("--no-fold", is_flag=True, help="Do not fold runs of identical sibling modules (a transformer's layers) into one ×K node.")
def render(script: str, script_args: tuple[str, ...], step: int, output: str | None, fmt: str | None, run_to_end: bool,
           rankdir: str, no_values: bool, no_grads: bool, theme: str, timeout: float, depth: int | None, max_nodes: int,
           module: str | None, no_fold: bool) -> None:
    """Run SCRIPT as `python SCRIPT SCRIPT_ARGS` would and draw its training step.

    The script is unmodified: gradtrace records the forward that leads to its
    Nth backward() call, that backward, and the optimizer step() after it,
    then stops the script. Arguments for the script follow SCRIPT; put those
    that look like options after `--`.

    \b
    Examples:
        gradtrace render train.py                       # writes train.svg
        gradtrace render train.py --step 3 -o step3.png
        gradtrace render train.py --format text         # a table in the terminal
        gradtrace render train.py -o step.html          # replay backprop in a browser
        gradtrace render train.py -o step.svg -- --lr 0.1 --epochs 5
        gradtrace render train.py --depth 1                # one node per top-level block
        gradtrace render train.py --module encoder.layer.3
    """
    to_stdout = output == "-"
    if output is not None and not to_stdout:
        try:
            fmt = format_for(Path(output), fmt, option="--format")
        except GradtraceError as e:
            raise click.UsageError(str(e)) from None
        out_dir = Path(output).parent
        if not out_dir.is_dir():
            raise click.ClickException(f"cannot write {output!r}: the folder {str(out_dir)!r} does not exist")
    fmt = fmt or "svg"
    try:
        options = RenderOptions(rankdir=rankdir, show_values=not no_values, show_grads=not no_grads, theme=theme, timeout=timeout,
                                depth=depth, max_nodes=max_nodes, module=module, fold=not no_fold)
    except GradtraceError as e:
        raise click.UsageError(str(e)) from None
    # Where the file goes is decided now, against the folder gradtrace was run from: the script may chdir.
    shown = output if output is not None else Path(script).stem + _EXTENSIONS[fmt]
    target = Path("-") if to_stdout else Path(os.path.abspath(shown))
    trace = _run(script, script_args, step, run_to_end)
    try:
        if output is None and fmt == "text":
            from .render.text import to_text

            click.echo(to_text(trace, options), nl=False)
            return
        from .render.output import write_counted

        _, drawn = write_counted(trace, target, fmt, options)
    except GradtraceError as e:
        raise click.ClickException(str(e)) from None
    total = len(trace.nodes)
    size = f"{total} nodes" if drawn == total else f"{total} nodes drawn as {drawn}"
    click.echo(f"gradtrace: wrote {'standard output' if to_stdout else shown} ({size}, step {step})", err=True)
    if depth is not None:
        from .collapse import max_module_depth

        deepest = max_module_depth(trace)
        if deepest <= depth:
            why = "the trace has no modules" if deepest == 0 else f"its modules nest only {deepest} deep"
            hint = "; leave --depth out and --max-nodes folds runs of ops" if deepest == 0 else ""
            click.echo(f"gradtrace: --depth {depth} collapses nothing: {why}{hint}", err=True)


@main.command()
@_script_options
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON instead of a table.")
def check(script: str, script_args: tuple[str, ...], step: int, as_json: bool) -> None:
    """Run SCRIPT like `render` does and report where gradients vanish, explode or turn NaN.

    Exit status: 0 when no NaN or inf was found, 1 when one was (so it can
    gate CI), 2 for usage errors. Vanishing, exploding, dead units and
    odd update sizes are reported but do not fail the check.

    \b
    Examples:
        gradtrace check train.py
        gradtrace check train.py --step 10 --json
    """
    trace = _run(script, script_args, step, False)
    findings = trace.diagnose()
    if as_json:
        import json

        rows = [dict(f.to_dict(), label=trace.node(f.node).label, module=trace.node(f.node).module) for f in findings]
        click.echo(json.dumps({"step": step, "findings": rows}, indent=1))
    elif not findings:
        click.echo(f"gradtrace check: no findings in step {step} ({len(trace.nodes)} nodes)")
    else:
        header = ("kind", "node", "module", "finding")
        rows_t = [(f.kind, trace.node(f.node).label, trace.node(f.node).module or "-", f.message) for f in findings]
        widths = [max(len(r[i]) for r in [header, *rows_t]) for i in range(3)]
        for r in [header, *rows_t]:
            click.echo("  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3])
    if any(f.alarm for f in findings):
        raise SystemExit(1)
