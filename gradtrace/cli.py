"""The ``gradtrace`` command: thin click wrappers around the library.

Exit codes mean one thing each: 0 the file was written; the script's own
non-zero status, passed through, when the script exits with one; 1 gradtrace
could not produce the file, or the script raised; 2 a usage error; 70
(EX_SOFTWARE) an internal error, a bug in gradtrace; 130 interrupted
(Ctrl-C). A script that raises gets its own traceback, without gradtrace's
frames. When gradtrace writes its own output to stdout, the script's goes to
stderr.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

import click

from . import __version__
from ._argnames import cli_names
from .errors import GradtraceError
from .render.options import MAX_TIMEOUT, RANKDIRS, THEMES, RenderOptions
from .render.output import FORMATS, GRAPHVIZ_FORMATS, format_for

__all__ = ["main"]

_EXTENSIONS = {"svg": ".svg", "png": ".png", "pdf": ".pdf", "dot": ".dot", "json": ".json", "text": ".txt", "html": ".html"}

#: Exit status of a crash inside gradtrace itself (sysexits.h's EX_SOFTWARE): never a script's or a finding's.
INTERNAL_ERROR = 70
#: Exit status after Ctrl-C (KeyboardInterrupt), in the script or in gradtrace, as a shell reports Python's.
INTERRUPTED = 130
# ctx.meta key: the script's failure after its traced step, reported once the command has written its output.
_LATE_FAILURE = "gradtrace.script_failed_after_step"


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


def _run(script: str, script_args: tuple[str, ...], step: int, run_to_end: bool, *, fmt: str | None = None,
         stdout_busy: bool = True, on_hard_exit: Callable[[Any, int], None] | None = None) -> Any:
    """Run the script and return its trace, or end the command with the script's own status.

    ``fmt``: the output format; one that needs Graphviz is checked for before
    the script runs, not after a long training script has run. ``stdout_busy``:
    the command writes its own output to standard output (``check`` always
    does), so what the script prints goes to standard error while it runs.
    ``on_hard_exit``: see :func:`gradtrace.script.run_script`. A script ended
    by Ctrl-C before its step ends the command with status 130, as Python's.
    """
    from .script import ScriptFailed, run_script

    if fmt in GRAPHVIZ_FORMATS and shutil.which("dot") is None:
        from .render.execute import INSTALL_HINT

        raise click.ClickException(f"the Graphviz `dot` program is needed for {fmt} output but was not found on PATH "
                                   f"(checked before running {Path(script).name}); {INSTALL_HINT}")
    try:
        return run_script(script, script_args, step=step, run_to_end=run_to_end, keep_alive=True,
                          stdout_to_stderr=stdout_busy, on_hard_exit=on_hard_exit)
    except ScriptFailed as e:
        if e.trace is None:
            sys.stdout.flush()  # the script's own output first, as it came
            click.echo(e.report, err=True, nl=False)
            if isinstance(e.exc, KeyboardInterrupt):
                raise _Interrupted() from None  # not a status a command maps (check's 5): Ctrl-C is 130 everywhere
            raise SystemExit(e.status) from None
        # The step was recorded before the script failed: the command writes it, then the failure is reported.
        click.get_current_context().meta[_LATE_FAILURE] = e
        return e.trace
    except GradtraceError as e:
        raise click.ClickException(str(e)) from None


def _is_stdout(path: str | None) -> bool:
    """Whether writing ``path`` writes this process's standard output (/dev/stdout, /dev/fd/1, the file it goes to)."""
    if path is None:
        return False
    try:
        a, b = os.stat(path), os.fstat(1)
    except (OSError, ValueError):  # no such file yet, or no standard output at all
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


class _Interrupted(KeyboardInterrupt):
    """The script was interrupted (Ctrl-C) before its step, and its traceback is already printed."""


def _report_late_failure(ctx: click.Context) -> Any:
    """Print the script's failure after its traced step, if any, and return it (None if none)."""
    failure = ctx.meta.pop(_LATE_FAILURE, None)
    if failure is None:
        return None
    sys.stdout.flush()
    click.echo(failure.report, err=True, nl=False)
    return failure


def _interrupted(failure: Any) -> bool:
    return failure is not None and isinstance(failure.exc, KeyboardInterrupt)


class _Command(click.Group):
    """The ``gradtrace`` group: turns every outcome into its one exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            result = super().invoke(ctx)
        except KeyboardInterrupt as e:  # Ctrl-C: Python's status 130, never click's "Aborted!" and 1
            _report_late_failure(ctx)
            if not isinstance(e, _Interrupted):
                sys.stdout.flush()
                click.echo("gradtrace: interrupted", err=True)
            raise SystemExit(INTERRUPTED) from None
        except SystemExit:
            # A command's own end (check's verdict): a Ctrl-C that ended the script after its step still ends it with 130.
            if _interrupted(_report_late_failure(ctx)):
                raise SystemExit(INTERRUPTED) from None
            raise
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            _report_late_failure(ctx)
            raise
        except GradtraceError as e:  # one a command did not map itself: still gradtrace's own, clear error
            _report_late_failure(ctx)
            raise click.ClickException(str(e)) from None
        except Exception:
            _report_late_failure(ctx)
            sys.stdout.flush()
            click.echo("gradtrace internal error: this is a bug in gradtrace, not in your script; please report it "
                       "with this traceback:\n" + traceback.format_exc(), err=True, nl=False)
            raise SystemExit(INTERNAL_ERROR) from None
        failure = _report_late_failure(ctx)
        if failure is not None and failure.status:
            raise SystemExit(failure.status)
        return result

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # The process's own entry (the console script, python -m gradtrace); CliRunner calls main() instead.
        try:
            return self.main(*args, **kwargs)
        except SystemExit as e:
            if "gradtrace._script_process" in sys.modules:
                from ._script_process import finish

                finish(e.code)  # does not return if a stopped script's threads would hang the exit
            raise


@click.group(cls=_Command, context_settings={"help_option_names": ["-h", "--help"]})
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
              help="File to write ('-': standard output; the script's own prints then go to standard error). "
                   "Default: SCRIPT's name with the format's suffix, in the working directory.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=None,
              help="Output format. Default: from OUTPUT's suffix, else svg. 'text' without -o prints a table "
                   "(the script's own prints then go to standard error).")
@click.option("--run-to-end", is_flag=True, help="Let the script run on after the traced step instead of stopping it.")
@click.option("--rankdir", type=click.Choice(RANKDIRS), default="TB", show_default=True, help="Direction data flows in the diagram.")
@click.option("--no-values", is_flag=True, help="Leave forward values out of the nodes.")
@click.option("--no-grads", is_flag=True, help="Leave gradients out of the nodes.")
@click.option("--theme", type=click.Choice(THEMES), default="light", show_default=True, help="Colours for light or dark pages.")
@click.option("--timeout", type=float, default=120.0, show_default=True, callback=_check_timeout,
              help=f"Seconds Graphviz may spend on layout, up to {MAX_TIMEOUT:.0f}; inf for no limit.")
@click.option("--depth", type=click.IntRange(min=0), default=None, help="Draw modules deeper than N levels as one node each (diagrams only).")
@click.option("--max-nodes", type=click.IntRange(min=1), default=250, show_default=True,
              help="Without --depth, collapse modules until the diagram has at most this many nodes (nothing is dropped: nodes are grouped).")
@click.option("--module", "module", default=None, metavar="PATH", help="Draw only this module (e.g. encoder.layer.3), with its inputs and outputs as boundary nodes; the text table lists only its rows.")
@click.option("--no-fold", is_flag=True, help="Do not fold runs of identical sibling modules (a transformer's layers) into one ×K node.")
@click.option("--edge-grads/--no-edge-grads", "edge_grads", default=None,
              help="Label each edge with the gradient sent back along it. Default: only on small diagrams (tooltips always say it).")
def render(script: str, script_args: tuple[str, ...], step: int, output: str | None, fmt: str | None, run_to_end: bool,
           rankdir: str, no_values: bool, no_grads: bool, theme: str, timeout: float, depth: int | None, max_nodes: int,
           module: str | None, no_fold: bool, edge_grads: bool | None) -> None:
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

    \b
    Exit status:
        0    the file was written (the script stopped after the step, or ran to its end)
        N    the script's own non-zero status (sys.exit(N), os._exit(N)), passed through;
             the file is written first when the step was recorded before the exit
        1    gradtrace could not produce the file, or the script raised (its
             traceback is printed; the file is written first when the step was recorded)
        2    usage error (a bad option, a missing script)
        70   internal error: a bug in gradtrace (its traceback is printed)
        130  interrupted (Ctrl-C); the file is written first when the step was recorded
    """
    with cli_names():  # every message and diagram note names --timeout, --max-nodes, not timeout=, max_nodes=
        _render(script, script_args, step, output, fmt, run_to_end, rankdir, no_values, no_grads, theme, timeout, depth,
                max_nodes, module, no_fold, edge_grads)


def _render(script: str, script_args: tuple[str, ...], step: int, output: str | None, fmt: str | None, run_to_end: bool,
            rankdir: str, no_values: bool, no_grads: bool, theme: str, timeout: float, depth: int | None, max_nodes: int,
            module: str | None, no_fold: bool, edge_grads: bool | None) -> None:
    to_stdout = output == "-"
    if output is not None and not to_stdout:
        if fmt is None and not Path(output).suffix:
            fmt = "svg"  # as --help says: from OUTPUT's suffix, else svg (-o /dev/stdout, -o diagram)
        try:
            fmt = format_for(Path(output), fmt)
        except GradtraceError as e:
            raise click.UsageError(str(e)) from None
        out_dir = Path(output).parent
        if not out_dir.is_dir():
            raise click.ClickException(f"cannot write {output!r}: the folder {str(out_dir)!r} does not exist")
    fmt = fmt or "svg"
    try:
        options = RenderOptions(rankdir=rankdir, show_values=not no_values, show_grads=not no_grads, theme=theme, timeout=timeout,
                                depth=depth, max_nodes=max_nodes, module=module, fold=not no_fold,
                                edge_grads=edge_grads)
    except GradtraceError as e:
        raise click.UsageError(str(e)) from None
    # Where the file goes is decided now, against the folder gradtrace was run from: the script may chdir.
    shown = output if output is not None else Path(script).stem + _EXTENSIONS[fmt]
    target = Path("-") if to_stdout else Path(os.path.abspath(shown))
    text_table = output is None and fmt == "text"
    ignored = _diagram_only_note(fmt, depth, module, max_nodes, no_fold)
    if ignored:
        click.echo(ignored, err=True)

    def emit(trace: Any) -> None:
        try:
            if text_table:
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
        if depth is not None and not ignored:  # (a format that draws no diagram was named above)
            from .collapse import max_module_depth

            deepest = max_module_depth(trace)
            if deepest <= depth:
                why = "the trace has no modules" if deepest == 0 else f"its modules nest only {deepest} deep"
                hint = "; leave --depth out and --max-nodes folds runs of ops" if deepest == 0 else ""
                click.echo(f"gradtrace: --depth {depth} collapses nothing: {why}{hint}", err=True)

    def before_hard_exit(trace: Any, status: int) -> None:
        # The script calls os._exit() after the step (--run-to-end): the process ends there, so the output is written now.
        emit(trace)
        click.echo(f"gradtrace: {Path(script).name} called os._exit({status}) after the traced step (backward() call {step})",
                   err=True)

    # gradtrace's own output on stdout (-o -, -o /dev/stdout, a text table) must not be mixed with what the script prints.
    trace = _run(script, script_args, step, run_to_end, fmt=fmt, stdout_busy=to_stdout or text_table or _is_stdout(output),
                 on_hard_exit=before_hard_exit)
    emit(trace)


def _diagram_only_note(fmt: str, depth: int | None, module: str | None, max_nodes: int, no_fold: bool) -> str | None:
    """What to tell a user whose drawing options the format does not use (never silently ignored):
    --depth, --max-nodes and --no-fold shape only the diagrams; --module also selects the text
    table's rows; JSON and the HTML page always hold the whole trace."""
    if fmt in ("svg", "png", "pdf", "dot"):
        return None
    given = [opt for opt, used in (("--module", module is not None and fmt != "text"), ("--depth", depth is not None),
                                   ("--max-nodes", max_nodes != RenderOptions.max_nodes), ("--no-fold", no_fold)) if used]
    if not given:
        return None
    whole = {"json": "a JSON file always holds the whole trace", "html": "the HTML page always shows the whole trace",
             "text": "the table lists every node" + (" of the module" if module is not None else "")}[fmt]
    return (f"gradtrace: {', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} only to the diagram formats "
            f"(svg, png, pdf, dot): {whole}")


#: ``gradtrace check`` exit statuses, one meaning each (a bug in gradtrace is INTERNAL_ERROR, as for every command).
EXIT_HEALTHY, EXIT_ALARM, EXIT_USAGE, EXIT_WARNING, EXIT_NO_STEP = 0, 1, 2, 3, 5


@main.command()
@_script_options
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON instead of a table. Either way the script's own prints go to standard error.")
@click.option("--every-step", is_flag=True,
              help="Run the whole training with a cheap sentinel on every step (loss, gradients, update ratio); at the first "
                   "broken step, print it and write that step's full trace (see docs/watch.md).")
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False), default=None,
              help="With --every-step: where to write the broken step's trace (format from the suffix; default "
                   "SCRIPT-stepK.html).")
def check(script: str, script_args: tuple[str, ...], step: int, as_json: bool, every_step: bool, output: str | None) -> None:
    """Run SCRIPT like `render` does and report where gradients vanish, explode or turn NaN.

    Each finding has a severity: an alarm (NaN or inf, named where it starts:
    the data, a forward op, a backward op), a warning (vanishing, exploding,
    dead units, a gradient stopped by an op, an update larger than the weight)
    or a note (a fact that is no fault: a bias whose gradient is zero by the
    model's structure, a -inf attention mask), each with its node, module,
    numbers and what to try.

    \b
    Exit status:
      0  healthy: no alarm and no warning (notes are allowed)
      1  the step's numbers are broken: an alarm (NaN or inf)
      2  usage error (bad option, missing script)
      3  warnings only (vanishing, exploding, dead, zero gradient, update size)
      5  there was no step to check: the script raised, exited or ended before
         the asked-for backward() (its message or traceback is printed)
      70 internal error: a bug in gradtrace (its traceback is printed)
      130 interrupted (Ctrl-C); a step recorded before it is checked first

    \b
    With --every-step (the whole run, a sentinel on every optimizer step):
      0  every step was healthy and the script ran to its end
      1  a step went wrong (loss, gradients non-finite, or the update larger
         than the weights): its number and finding are printed and its full
         trace is written (the script is re-run to that step and checked to
         reproduce it)
      5  no broken step, but the script raised, exited non-zero or made no
         step (its message or traceback is printed)
      2, 70 and 130 as above; 3 is not used

    \b
    Examples:
        gradtrace check train.py
        gradtrace check train.py --step 10 --json
        gradtrace check train.py --every-step -o first_bad.html
    """
    if every_step:
        if step != 1:
            raise click.UsageError("--step and --every-step do not go together: --every-step checks every step")
        from .watching.cli import check_every_step

        check_every_step(script, script_args, output, as_json)
        return
    if output is not None:
        raise click.UsageError("-o/--output is for --every-step (the broken step's trace); check alone prints its findings")
    try:
        trace = _run(script, script_args, step, False)
    except click.ClickException as e:  # no step was traced: that is not "NaN found" (exit 1)
        e.show()
        raise SystemExit(EXIT_NO_STEP) from None
    except SystemExit as e:  # the script ended with its own status before the step (its report is printed)
        click.echo(f"gradtrace check: no step to check ({Path(script).name} exited with status {e.code})", err=True)
        raise SystemExit(EXIT_NO_STEP) from None
    findings = trace.diagnose()  # a bug in it is an internal error (exit 70), never "NaN found"
    status = EXIT_ALARM if any(f.alarm for f in findings) else EXIT_WARNING if any(f.severity == "warning" for f in findings) else EXIT_HEALTHY
    if as_json:
        import json

        rows = [dict(f.to_dict(), label=trace.node(f.node).label) for f in findings]
        click.echo(json.dumps({"step": step, "exit_status": status, "findings": rows, "notes": list(trace.notes)}, indent=1))
    else:
        _echo_findings(trace, findings, step)
    raise SystemExit(status)


def _echo_findings(trace: Any, findings: list[Any], step: int) -> None:
    from .render.inert import inert_trace

    trace = inert_trace(trace)  # names from a model reach the terminal: no escape sequence may act there
    findings = [_printable_finding(f) for f in findings]
    faults = [f for f in findings if f.severity != "note"]
    notes = [f for f in findings if f.severity == "note"]
    if not faults:
        click.echo(f"gradtrace check: no alarms or warnings in step {step} ({len(trace.nodes)} nodes)")
    else:
        header = ("severity", "kind", "node", "module", "finding")
        rows = [(f.severity, f.kind, trace.node(f.node).label, f.module or "-", f.message) for f in faults]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
        for f, r in zip([None, *faults], [header, *rows]):
            click.echo("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4])
            if f is not None and f.hint:
                click.echo(" " * (sum(widths) + 8) + "try: " + f.hint)
    if notes:
        click.echo("notes (facts, not faults):")
        for f in notes:
            click.echo(f"  {f.kind} at '{trace.node(f.node).label}'" + (f" in {f.module}" if f.module else "") + f": {f.message}")
    for note in trace.notes:
        click.echo(f"note: {note}")


def _printable_finding(f: Any) -> Any:
    """``f`` with its words made safe for a terminal (a message quotes labels and module paths)."""
    import dataclasses

    from .render.inert import printable

    changes = {name: printable(getattr(f, name)) for name in ("message", "module", "hint")
               if isinstance(getattr(f, name, None), str)}
    return dataclasses.replace(f, **changes)


@main.command("watch", context_settings={"ignore_unknown_options": False})
@click.argument("script", type=click.Path(exists=True, dir_okay=False))
@click.argument("script_args", nargs=-1, type=click.UNPROCESSED)
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False), default=None,
              help="File to write: .html (the offline page), .json or .csv ('-': JSON on standard output, the script's "
                   "prints then go to standard error). Default: SCRIPT's name with .html.")
@click.option("--format", "fmt", type=click.Choice(("html", "json", "csv")), default=None,
              help="Output format. Default: from OUTPUT's suffix, else html.")
@click.option("--every", type=click.IntRange(min=1), default=None, metavar="N",
              help="Sample every Nth optimizer step. Default: adaptive, so the sampled steps add about 3 % to the run.")
@click.option("--steps", "steps", default=None, metavar="A:B", help="Sample only steps A to B (e.g. 100:200, 100:).")
@click.option("--trace-steps", "trace_steps", default=None, metavar="N,M,...",
              help="Embed the full trace of these steps (e.g. 1,100,1000).")
@click.option("--no-alarm-trace", is_flag=True,
              help="Do not re-run the script to embed the full trace of the first step with an alarm.")
def watch(script: str, script_args: tuple[str, ...], output: str | None, fmt: str | None, every: int | None, steps: str | None,
          trace_steps: str | None, no_alarm_trace: bool) -> None:
    """Run SCRIPT to its end and record the training's history, every N steps.

    Per module (output RMS, non-finite outputs, gradient norm) and per
    parameter (gradient norm and RMS, value norm, update ratio |dw|/|w|,
    non-finite gradients), the loss, the learning rates, gradient clipping
    and GradScaler's skipped steps. A step is an optimizer step() (see
    docs/watch.md for accumulation, several optimizers, no optimizer). The
    first step with an alarm gets its full trace (the script is run again to
    it). Arguments for the script follow SCRIPT; put those that look like
    options after `--`.

    \b
    Examples:
        gradtrace watch train.py                        # writes train.html
        gradtrace watch train.py -o run.json --every 10
        gradtrace watch train.py -o run.csv --steps 100:200
        gradtrace watch train.py --trace-steps 1,100 -- --epochs 5

    \b
    Exit status:
        0    the history was written (alarms are in it; they do not change the status)
        N    the script's own non-zero status, passed through, after the history is written
        1    gradtrace could not write the history (the script made no step), or the script raised
             (its traceback is printed after the history is written)
        2    usage error (a bad option, a missing script)
        70   internal error: a bug in gradtrace (its traceback is printed)
        130  interrupted (Ctrl-C)
    """
    from .watching.cli import parse_steps, parse_trace_steps, run_watch

    run_watch(script, script_args, output, fmt, every, parse_steps(steps), parse_trace_steps(trace_steps), not no_alarm_trace)
