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

import dataclasses
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

_EXTENSIONS = {"svg": ".svg", "png": ".png", "pdf": ".pdf", "dot": ".dot", "json": ".json", "text": ".txt", "html": ".html",
               "model-explorer": ".graph.json"}

#: Exit status of a crash inside gradtrace itself (sysexits.h's EX_SOFTWARE): never a script's or a finding's.
INTERNAL_ERROR = 70
#: Exit status after Ctrl-C (KeyboardInterrupt), in the script or in gradtrace, as a shell reports Python's.
INTERRUPTED = 130
# ctx.meta key: the script's failure after its traced step, reported once the command has written its output.
_LATE_FAILURE = "gradtrace.script_failed_after_step"
# ctx.meta key: the last line of a script's failure before its step (what a rank tells the others under torchrun).
_NO_STEP_WHY = "gradtrace.script_failed_before_step"


def _check_timeout(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if not (0 < value <= MAX_TIMEOUT or value == math.inf):  # (NaN fails both)
        raise click.BadParameter(f"{value:g} is not in the range 0<x<={MAX_TIMEOUT:.0f} (seconds; inf for no limit)")
    return value


def _rank_options(f: Any) -> Any:
    f = click.option("--rank-timeout", type=click.FloatRange(min=0, min_open=True), default=300.0, show_default=True,
                     metavar="SECONDS", help="Under torchrun: how long a rank waits for the others to finish their step "
                     "before giving up (a rank that failed is named).")(f)
    f = click.option("--nproc-per-node", type=click.IntRange(min=1), default=None, metavar="N",
                     help="Run SCRIPT on N local ranks through torch.distributed.run (as torchrun would) and trace "
                          "every rank; see docs/distributed.md for several nodes.")(f)
    return f


def _script_options(f: Any) -> Any:
    f = click.option("--step", type=click.IntRange(min=1), default=1, show_default=True, metavar="N",
                     help="Trace the Nth backward() call (and the forward since the previous one).")(f)
    f = click.argument("script_args", nargs=-1, type=click.UNPROCESSED)(f)
    f = click.argument("script", type=click.Path(exists=True, dir_okay=False))(f)
    return f


def _run(script: str, script_args: tuple[str, ...], step: int, run_to_end: bool, *, fmt: str | None = None,
         stdout_busy: bool = True, on_hard_exit: Callable[[Any, int], None] | None = None,
         on_session: Callable[[Any], None] | None = None) -> Any:
    """Run the script and return its trace, or end the command with the script's own status.

    ``fmt``: the output format; one that needs Graphviz is checked for before
    the script runs, not after a long training script has run. ``stdout_busy``:
    the command writes its own output to standard output (``check`` always
    does), so what the script prints goes to standard error while it runs.
    ``on_hard_exit``, ``on_session``: see :func:`gradtrace.script.run_script`. A script ended
    by Ctrl-C before its step ends the command with status 130, as Python's.
    """
    from .script import ScriptFailed, run_script

    if fmt in GRAPHVIZ_FORMATS and shutil.which("dot") is None:
        from .render.execute import INSTALL_HINT

        raise click.ClickException(f"the Graphviz `dot` program is needed for {fmt} output but was not found on PATH "
                                   f"(checked before running {Path(script).name}); {INSTALL_HINT}")
    try:
        return run_script(script, script_args, step=step, run_to_end=run_to_end, keep_alive=True,
                          stdout_to_stderr=stdout_busy, on_hard_exit=on_hard_exit, on_session=on_session)
    except ScriptFailed as e:
        if e.trace is None:
            lines = e.report.strip().splitlines()
            click.get_current_context().meta[_NO_STEP_WHY] = lines[-1] if lines else f"status {e.status}"
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
            if os.environ.get("GRADTRACE_STATUS_FILE"):  # a rank started by --nproc-per-node
                from .distributed.launch import record_status

                if record_status(e.code):
                    # Rank 0's status goes to the launcher, which ends with it: torchrun, which would turn it
                    # into 1 with a page of its own traceback, sees a clean exit.
                    e = SystemExit(0)
            if "gradtrace._script_process" in sys.modules:
                from ._script_process import finish

                finish(e.code)  # does not return if a stopped script's threads would hang the exit
            raise e from None


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
                   "(the script's own prints then go to standard error). 'model-explorer' writes NAME.graph.json "
                   "for Google's Model Explorer and its overlays beside it (NAME.grad_norm.json, ...).")
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
@click.option("--every-rank", is_flag=True, help="Under torchrun, for svg/png/pdf/dot/text files: besides rank 0's OUTPUT, "
              "write each other rank K's as NAME.rankK.SUFFIX (json and html always hold every rank).")
@_rank_options
def render(script: str, script_args: tuple[str, ...], step: int, output: str | None, fmt: str | None, run_to_end: bool,
           rankdir: str, no_values: bool, no_grads: bool, theme: str, timeout: float, depth: int | None, max_nodes: int,
           module: str | None, no_fold: bool, edge_grads: bool | None, every_rank: bool, nproc_per_node: int | None,
           rank_timeout: float) -> None:
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
        torchrun --nproc-per-node 2 -m gradtrace render train.py -o step.json   # every rank, one file
        gradtrace render --nproc-per-node 2 train.py -o step.html             # the same, without torchrun

    \b
    Under torchrun every rank records the same step and rank 0 writes one
    file holding all ranks; only rank 0 prints. A rank that fails before its
    step is named, and every rank exits non-zero (torchrun reports 1).

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
    _launch_if_asked("render", nproc_per_node)
    ranks = _ranks(every_rank, rank_timeout)
    with cli_names():  # every message and diagram note names --timeout, --max-nodes, not timeout=, max_nodes=
        _render(script, script_args, step, output, fmt, run_to_end, rankdir, no_values, no_grads, theme, timeout, depth,
                max_nodes, module, no_fold, edge_grads, ranks)


def _render(script: str, script_args: tuple[str, ...], step: int, output: str | None, fmt: str | None, run_to_end: bool,
            rankdir: str, no_values: bool, no_grads: bool, theme: str, timeout: float, depth: int | None, max_nodes: int,
            module: str | None, no_fold: bool, edge_grads: bool | None, ranks: _Ranks | None = None) -> None:
    to_stdout = output == "-"
    if to_stdout and fmt == "model-explorer":  # several files: refused before the script runs, not after
        from .render.model_explorer import check_graph_path

        try:
            check_graph_path(Path(output), "-o")
        except GradtraceError as e:
            raise click.UsageError(str(e)) from None
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
    if ignored and (ranks is None or ranks.info.is_main):
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
        if fmt == "model-explorer":
            from .render.model_explorer import overlay_paths

            beside = ", ".join(p.name for p in overlay_paths(Path(shown)).values())
            click.echo(f"gradtrace: and its Model Explorer overlays beside it: {beside}", err=True)
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
    stdout_busy = to_stdout or text_table or _is_stdout(output)
    if ranks is not None:
        multi = _run_ranks(ranks, script, script_args, step, run_to_end, fmt=fmt, stdout_busy=stdout_busy)
        if multi is None:
            return  # not rank 0: its trace went to rank 0, which writes
        from .distributed.output import collective_table, rank_path, write_multi

        if text_table:
            click.echo(f"rank 0 of {multi.world_size} (the other ranks: -o FILE.json or FILE.html holds them all)")
            emit(multi.trace(multi.ranks[0].rank))
            table = collective_table(multi)
            if table:
                click.echo("\nthe collective: each parameter's gradient norm on each rank before it, and after it")
                click.echo(table, nl=False)
            return

        try:
            written = write_multi(multi, target, fmt, options, ranks.every_rank)
        except GradtraceError as e:
            raise click.ClickException(str(e)) from None
        world = multi.world_size
        if fmt in ("json", "html"):
            total = sum(len(r.trace.nodes) for r in multi.ranks)
            click.echo(f"gradtrace: wrote {'standard output' if to_stdout else shown} ({world} rank{'s' if world != 1 else ''}, "
                       f"{total} nodes in all, step {step})", err=True)
            if ranks.every_rank:
                click.echo(f"gradtrace: --every-rank writes nothing more for {fmt}: the file holds every rank", err=True)
            return
        for (path, drawn), r in zip(written, multi.ranks):
            n = len(r.trace.nodes)
            size = f"{n} nodes" if drawn == n else f"{n} nodes drawn as {drawn}"
            name = ("standard output" if to_stdout else shown) if r is multi.ranks[0] else str(rank_path(Path(shown), r.rank))
            click.echo(f"gradtrace: wrote {name} (rank {r.rank} of {world}: {size}, step {step})", err=True)
        if not ranks.every_rank and world > 1:
            click.echo("gradtrace: the diagram is rank 0's; --every-rank also writes NAME.rankK.SUFFIX for each other "
                       "rank, and -o FILE.json or FILE.html holds every rank", err=True)
        return
    trace = _run(script, script_args, step, run_to_end, fmt=fmt, stdout_busy=stdout_busy, on_hard_exit=before_hard_exit)
    emit(trace)


@dataclasses.dataclass(frozen=True)
class _Ranks:
    """A run under torchrun: this process's rank and what the rank options asked."""

    info: Any  # gradtrace.distributed.RankInfo
    every_rank: bool
    timeout: float


def _ranks(every_rank: bool, timeout: float) -> _Ranks | None:
    """This process's rank under torchrun (None when not started by it)."""
    from .distributed.env import rank_info

    try:
        info = rank_info()
    except GradtraceError as e:
        raise click.UsageError(str(e)) from None
    if info is None:
        if every_rank:
            click.echo("gradtrace: --every-rank applies only under torchrun (or with --nproc-per-node): "
                       "this run has one process", err=True)
        return None
    return _Ranks(info, every_rank, timeout)


def _launch_if_asked(command: str, nproc: int | None) -> None:
    """``--nproc-per-node N``: run this same command on N ranks through torch.distributed.run, end with rank 0's status."""
    if nproc is None:
        return
    from .distributed.env import rank_info
    from .distributed.launch import launch, without_option

    if rank_info() is not None:
        raise click.UsageError("--nproc-per-node starts the ranks itself: under torchrun, leave it out "
                               "(torchrun's own --nproc-per-node says how many ranks)")
    argv = sys.argv[1:]
    if command not in argv:
        raise click.UsageError(f"--nproc-per-node works from the command line (`gradtrace {command} --nproc-per-node N SCRIPT`)")
    try:
        status = launch(nproc, without_option(argv, "--nproc-per-node"))
    except GradtraceError as e:
        raise click.ClickException(str(e)) from None
    raise SystemExit(status)


def _run_ranks(ranks: _Ranks, script: str, script_args: tuple[str, ...], step: int, run_to_end: bool, *, fmt: str | None,
               stdout_busy: bool) -> Any:
    """This rank's step, and on rank 0 every rank's: a MultiTrace on rank 0, None on the others.

    A script that fails before its step on this rank ends the command as it
    would alone, after telling the other ranks; another rank's failure ends
    this one with status 1, named on rank 0.
    """
    from .distributed.gather import RankFailure
    from .distributed.run import report_failure, run_rank

    info = ranks.info
    ctx = click.get_current_context()

    def run(on_session: Callable[[Any], None]) -> Any:
        try:
            return _run(script, script_args, step, run_to_end, fmt=fmt, stdout_busy=stdout_busy, on_session=on_session)
        except (SystemExit, click.ClickException, KeyboardInterrupt) as e:
            why = ctx.meta.pop(_NO_STEP_WHY, None) or (e.format_message() if isinstance(e, click.ClickException)
                                                       else "interrupted" if isinstance(e, KeyboardInterrupt)
                                                       else f"{Path(script).name} exited with status {e.code}")
            summary = report_failure(info, why, ranks.timeout)
            sys.stdout.flush()
            if summary is not None:
                click.echo(f"gradtrace: {summary}", err=True)
            else:
                click.echo(f"gradtrace: rank {info.rank} of {info.world_size} has no step to trace ({why}); "
                           "rank 0 writes no file", err=True)
            raise

    try:
        return run_rank(info, run, step, ranks.timeout)
    except RankFailure as e:
        if info.is_main:
            raise click.ClickException(str(e)) from None
        raise SystemExit(1) from None
    except GradtraceError as e:
        raise click.ClickException(f"rank {info.rank}: {e}") from None


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
             "model-explorer": "the Model Explorer graph always holds the whole trace (Model Explorer collapses modules itself)",
             "text": "the table lists every node" + (" of the module" if module is not None else "")}[fmt]
    return (f"gradtrace: {', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} only to the diagram formats "
            f"(svg, png, pdf, dot): {whole}")


#: ``gradtrace check`` exit statuses, one meaning each (a bug in gradtrace is INTERNAL_ERROR, as for every command).
EXIT_HEALTHY, EXIT_ALARM, EXIT_USAGE, EXIT_WARNING, EXIT_NO_STEP = 0, 1, 2, 3, 5


@main.command()
@_script_options
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON instead of a table. Either way the script's own prints go to standard error.")
@_rank_options
def check(script: str, script_args: tuple[str, ...], step: int, as_json: bool, nproc_per_node: int | None,
          rank_timeout: float) -> None:
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
    Under torchrun (or with --nproc-per-node) every rank is checked, and the
    ranks are compared (where NaN first appears, graphs or reduced gradients
    that differ, a parameter without gradient on some rank, imbalance); rank
    0 prints, with the rank of each finding, and exits with the status
    above over all ranks (torchrun itself reports 1 for any non-zero status;
    --nproc-per-node passes rank 0's on).

    \b
    Examples:
        gradtrace check train.py
        gradtrace check train.py --step 10 --json
        torchrun --nproc-per-node 4 -m gradtrace check train.py
    """
    _launch_if_asked("check", nproc_per_node)
    ranks = _ranks(False, rank_timeout)
    if ranks is not None:
        _check_ranks(ranks, script, script_args, step, as_json)
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


def _check_ranks(ranks: _Ranks, script: str, script_args: tuple[str, ...], step: int, as_json: bool) -> None:
    """``check`` under torchrun: every rank's findings and the cross-rank ones, printed by rank 0; ends the command."""
    info = ranks.info
    try:
        multi = _run_ranks(ranks, script, script_args, step, False, fmt=None, stdout_busy=True)
    except click.ClickException as e:
        if info.is_main:
            e.show()
        raise SystemExit(EXIT_NO_STEP) from None
    except SystemExit as e:
        if info.is_main:
            click.echo(f"gradtrace check: no step to check ({Path(script).name} exited with status {e.code} on rank "
                       f"{info.rank})", err=True)
        raise SystemExit(EXIT_NO_STEP) from None
    if multi is None:
        raise SystemExit(EXIT_HEALTHY)  # rank 0 speaks for the run
    pairs = multi.findings()
    findings = [f for _, f in pairs]
    status = EXIT_ALARM if any(f.alarm for f in findings) else EXIT_WARNING if any(f.severity == "warning" for f in findings) else EXIT_HEALTHY
    if as_json:
        import json

        rows = [dict(f.to_dict(), rank=r, label=multi.trace(r).node(f.node).label) for r, f in pairs]
        notes = {str(r.rank): list(r.trace.notes) for r in multi.ranks}
        click.echo(json.dumps({"step": step, "world_size": multi.world_size, "exit_status": status, "findings": rows,
                               "notes": notes}, indent=1))
    else:
        _echo_rank_findings(multi, pairs, step)
    raise SystemExit(status)


def _echo_rank_findings(multi: Any, pairs: list[tuple[int, Any]], step: int) -> None:
    from .render.inert import inert_trace

    traces = {r.rank: inert_trace(r.trace) for r in multi.ranks}
    faults = [(r, _printable_finding(f)) for r, f in pairs if f.severity != "note"]
    total = sum(len(t.nodes) for t in traces.values())
    if not faults:
        click.echo(f"gradtrace check: no alarms or warnings in step {step} on any of {multi.world_size} ranks ({total} nodes)")
    else:
        header = ("rank", "severity", "kind", "node", "module", "finding")
        rows = [(str(r), f.severity, f.kind, traces[r].node(f.node).label, f.module or "-", f.message) for r, f in faults]
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(5)]
        for f, row in zip([None, *faults], [header, *rows]):
            click.echo("  ".join(c.ljust(w) for c, w in zip(row[:5], widths)) + "  " + row[5])
            if f is not None and f[1].hint:
                click.echo(" " * (sum(widths) + 10) + "try: " + f[1].hint)
    notes = sorted({n for t in traces.values() for n in t.notes})
    for note in notes:
        ranks_with = [r for r, t in traces.items() if note in t.notes]
        where = "every rank" if len(ranks_with) == len(traces) else "rank " + ", ".join(map(str, ranks_with))
        click.echo(f"note ({where}): {note}")


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


from .diff.cli import diff as _diff  # noqa: E402  (`gradtrace diff` lives in its own package)

main.add_command(_diff)
