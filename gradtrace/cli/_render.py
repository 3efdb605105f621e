"""``gradtrace render``: one step of a script, drawn or written in any format."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from .._argnames import cli_names
from ..errors import GradtraceError
from ..render.options import MAX_TIMEOUT, RANKDIRS, THEMES, RenderOptions
from ..render.output import FORMATS, format_for
from ._common import _check_timeout, _is_stdout, _rank_options, _run, _script_options
from ._ranks import _Ranks, _launch_if_asked, _ranks, _run_ranks


_EXTENSIONS = {"svg": ".svg", "png": ".png", "pdf": ".pdf", "dot": ".dot", "json": ".json", "text": ".txt", "html": ".html",
               "model-explorer": ".graph.json"}


@click.command(context_settings={"ignore_unknown_options": False})
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
    with cli_names():  # (a bad -o is one usage error here, not one per rank after the launch)
        _output_format(output, fmt)
    _launch_if_asked("render", nproc_per_node)
    ranks = _ranks(every_rank, rank_timeout)
    with cli_names():  # every message and diagram note names --timeout, --max-nodes, not timeout=, max_nodes=
        _render(script, script_args, step, output, fmt, run_to_end, rankdir, no_values, no_grads, theme, timeout, depth,
                max_nodes, module, no_fold, edge_grads, ranks)


def _output_format(output: str | None, fmt: str | None) -> str | None:
    """The format ``-o OUTPUT`` / ``--format`` ask for (``None``: the default), checked (a known format, an
    existing folder) before any script runs and before --nproc-per-node starts its ranks."""
    to_stdout = output == "-"
    if to_stdout and fmt == "model-explorer":  # several files: refused before the script runs, not after
        from ..render.model_explorer import check_graph_path

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
    return fmt


def _render(script: str, script_args: tuple[str, ...], step: int, output: str | None, fmt: str | None, run_to_end: bool,
            rankdir: str, no_values: bool, no_grads: bool, theme: str, timeout: float, depth: int | None, max_nodes: int,
            module: str | None, no_fold: bool, edge_grads: bool | None, ranks: _Ranks | None = None) -> None:
    to_stdout = output == "-"
    fmt = _output_format(output, fmt)
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
                from ..render.text import to_text

                click.echo(to_text(trace, options), nl=False)
                return
            from ..render.output import write_counted

            _, drawn = write_counted(trace, target, fmt, options)
        except GradtraceError as e:
            raise click.ClickException(str(e)) from None
        total = len(trace.nodes)
        size = f"{total} nodes" if drawn == total else f"{total} nodes drawn as {drawn}"
        click.echo(f"gradtrace: wrote {'standard output' if to_stdout else shown} ({size}, step {step})", err=True)
        if fmt == "model-explorer":
            from ..render.model_explorer import overlay_paths

            beside = ", ".join(p.name for p in overlay_paths(Path(shown)).values())
            click.echo(f"gradtrace: and its Model Explorer overlays beside it: {beside}", err=True)
        if depth is not None and not ignored:  # (a format that draws no diagram was named above)
            from ..collapse import max_module_depth

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
        from ..distributed.output import collective_table, rank_path, write_multi

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
