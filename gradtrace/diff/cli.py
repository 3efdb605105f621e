"""``gradtrace diff A B``: compare two saved traces (the command; ``gradtrace.cli`` registers it).

Exit statuses mean one thing each (documented in the command's help and docs/diff.md).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import click

from .._argnames import cli_names
from ..errors import GradtraceError
from ..render.diff_output import DIFF_FORMATS

if TYPE_CHECKING:
    from ..steptrace import Trace

__all__ = ["EXIT_BEYOND", "EXIT_COMPARED", "EXIT_NOT_WRITTEN", "EXIT_NOTHING_MATCHED", "EXIT_USAGE", "diff", "load_trace"]

EXIT_COMPARED, EXIT_BEYOND, EXIT_USAGE, EXIT_NOTHING_MATCHED, EXIT_NOT_WRITTEN = 0, 1, 2, 3, 4

MULTI_FORMAT = "gradtrace-multirank"
#: A trace file larger than this is refused before it is read (a real trace of a large model is tens of MB).
MAX_FILE = 2 * 1024**3


def load_trace(path: str, param: str, rank: int | None = None) -> Trace:
    """The trace in the file at ``path``, checked (it is untrusted input); a usage error naming
    ``param`` (A or B) and what is wrong with it otherwise.

    The one place a file becomes a Trace. A multi-rank file (``gradtrace-multirank``, written by
    ``torchrun ... -m gradtrace render``) holds one trace per rank: ``rank`` picks one.
    """
    from ..steptrace import Trace

    try:
        size = Path(path).stat().st_size
        if size > MAX_FILE:
            raise click.BadParameter(f"{path!r} is {size / 1024**3:.1f} GiB, larger than any trace file (at most 2 GiB)",
                                     param_hint=param)
        data = Path(path).read_bytes()
    except OSError as e:
        raise click.BadParameter(f"cannot read {path!r}: {e.strerror or e}", param_hint=param) from None
    try:
        ranked = _rank_trace(data, rank, param)
        return ranked if ranked is not None else Trace.from_json(data)
    except GradtraceError as e:
        raise click.BadParameter(f"{path!r} is not a trace gradtrace can read: {e} "
                                 f"(write one with `gradtrace render SCRIPT -o step.json` or Trace.render('step.json'))",
                                 param_hint=param) from None


def _rank_trace(data: bytes, rank: int | None, param: str) -> Trace | None:
    """Rank ``rank``'s trace when ``data`` is a multi-rank file, else None (a single trace; ``rank``
    must then be None). The whole multi-rank file is checked by its own loader, the same one
    ``MultiTrace.from_json`` uses: a file is valid or not whichever rank is asked for."""
    from ..distributed.multitrace import MultiTrace
    from ..tracefile import _parse

    option = f"--rank-{param.lower()}"
    if b'"gradtrace-multirank"' not in data[:4096] and rank is None:
        return None  # (the format field comes first in files gradtrace writes; Trace.from_json checks the rest)
    doc = _parse(data)
    if not isinstance(doc, dict) or doc.get("format") != MULTI_FORMAT:
        if rank is None:
            return None
        raise GradtraceError(f"{option} {rank} needs a multi-rank file (\"format\": \"{MULTI_FORMAT}\", written under "
                             "torchrun); this file holds one trace")
    multi = MultiTrace.from_json(data)
    numbers = [r.rank for r in multi.ranks]
    listed = f"{numbers[:16]}{' …' if len(numbers) > 16 else ''}"
    if rank is None:
        raise GradtraceError(f"it holds the traces of ranks {listed}: choose one with {option} K")
    if rank not in numbers:
        raise GradtraceError(f"{option} {rank}: the file holds no rank {rank} (its ranks: {listed})")
    return multi.trace(rank)


def _check_factor(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and not (value >= 1 and math.isfinite(value)):
        raise click.BadParameter(f"{value:g} is not a factor of at least 1 (2 means: fail when a gradient norm "
                                 "doubles or halves)")
    return value


def _check_timeout(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if not value > 0:
        raise click.BadParameter(f"{value:g} is not a positive number of seconds (inf for no limit)")
    return value


@click.command("diff")
@click.argument("a", type=click.Path(exists=True, dir_okay=False))
@click.argument("b", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="File to write: .html (B's graph coloured by the change, a sortable table), .svg/.png/.pdf, .dot, "
                   ".json, .txt; '-' is standard output (give --format). Default: a table on the terminal.")
@click.option("--format", "fmt", type=click.Choice(DIFF_FORMATS), default=None,
              help="Output format. Default: from OUTPUT's suffix; without -o, text.")
@click.option("--by", type=click.Choice(("grad", "value")), default="grad", show_default=True,
              help="Colour the drawing by the change of each node's gradient norm or of its value RMS.")
@click.option("--top", type=click.IntRange(min=1), default=20, show_default=True, help="Rows of the largest changes in the text table.")
@click.option("--fail-above", "fail_above", type=float, default=None, metavar="RATIO", callback=_check_factor,
              help="Exit 1 when a matched node's gradient norm changed by more than RATIO either way (B/A or A/B), "
                   "got NaN/inf in one trace only, or a gradient in one trace only: a check for CI.")
@click.option("--rank-a", "rank_a", type=click.IntRange(min=0), default=None, metavar="K",
              help="A is a multi-rank file (written under torchrun): compare its rank K.")
@click.option("--rank-b", "rank_b", type=click.IntRange(min=0), default=None, metavar="K",
              help="B is a multi-rank file: compare its rank K (rank 0 against rank 3: the same file twice).")
@click.option("--timeout", type=float, default=120.0, show_default=True, callback=_check_timeout,
              help="Seconds Graphviz may spend on layout (html, svg, png, pdf); inf for no limit.")
def diff(a: str, b: str, output: str | None, fmt: str | None, by: str, top: int, fail_above: float | None,
         rank_a: int | None, rank_b: int | None, timeout: float) -> None:
    """Compare two saved traces, B against A: what changed at each node, and what exists in one only.

    Nodes are matched by module, op and position within the module (robust to
    inserted or removed ops and layers); each matched node gets the ratio
    B/A of its gradient norm and of its value RMS, NaN/inf appearing in one
    trace only, and changes of shape or dtype; parameters also the change of
    their update ratio. Uses: step 1 against step 1000, fp32 against bf16
    autocast, rank 0 against rank 3, before and after a code change.

    \b
    Examples:
        gradtrace diff step1.json step50.json                 # a table in the terminal
        gradtrace diff fp32.json bf16.json -o diff.html       # the graph, coloured, and a sortable table
        gradtrace diff before.json after.json --fail-above 4  # CI: exit 1 if a gradient changed over 4x
        gradtrace diff step.json step.json --rank-a 0 --rank-b 3   # two ranks of a torchrun capture

    \b
    Exit status:
        0  compared (and, with --fail-above, no gradient changed beyond it)
        1  --fail-above: a matched node's gradient norm changed by more than
           RATIO, or got NaN/inf or a gradient in one trace only (the output
           is written first)
        2  usage error: a bad option, a missing file, a file that is not a trace
        3  nothing matched: the traces share no parameter, leaf or module
           (two different models); nothing is written
        4  the output could not be written (a missing folder, Graphviz missing
           or too slow)
        70 internal error: a bug in gradtrace (its traceback is printed)
    """
    from ..render.diff_output import diff_bytes, diff_format_for
    from ..render.output import write_bytes

    to_stdout = output == "-"
    printed = output is None  # a table (or --format's output) on standard output
    if printed:
        fmt = fmt or "text"
    elif to_stdout and fmt is None:
        raise click.UsageError("writing to standard output ('-') needs --format (one of " + ", ".join(DIFF_FORMATS) + ")")
    else:
        try:
            fmt = diff_format_for(Path(output), fmt) if not to_stdout else fmt
        except GradtraceError as e:
            raise click.UsageError(str(e)) from None
        folder = Path(output).parent if str(Path(output).parent) else Path(".")  # type: ignore[arg-type]
        if not to_stdout and not folder.is_dir():  # said before the traces are read and drawn
            click.echo(f"Error: cannot write {output!r}: the folder {str(folder)!r} does not exist", err=True)
            raise SystemExit(EXIT_NOT_WRITTEN)
    trace_a, trace_b = load_trace(a, "A", rank_a), load_trace(b, "B", rank_b)
    names = (a if rank_a is None else f"{a} rank {rank_a}", b if rank_b is None else f"{b} rank {rank_b}")
    from .result import NothingMatched, diff_traces

    try:
        result = diff_traces(trace_a, trace_b, names=names)
    except NothingMatched as e:
        click.echo(f"gradtrace diff: {e}", err=True)
        raise SystemExit(EXIT_NOTHING_MATCHED) from None
    try:
        with cli_names():  # messages name --timeout, not timeout=
            data = diff_bytes(result, fmt, by=by, timeout=None if math.isinf(timeout) else timeout, top=top)
        if printed:
            click.echo(data, nl=False)  # bytes: written as they are (--format png without -o too)
        else:
            write_bytes(Path(output), data)  # type: ignore[arg-type]
            click.echo(f"gradtrace: wrote {'standard output' if to_stdout else output} "
                       f"({len(result.changes)} nodes matched, {len(result.only_a)} only in A, {len(result.only_b)} only in B)",
                       err=True)
    except GradtraceError as e:
        click.echo(f"Error: {e}", err=True)
        raise SystemExit(EXIT_NOT_WRITTEN) from None
    if fail_above is not None:
        beyond = result.beyond(fail_above)
        if beyond:
            from ..render.diff_text import describe_node, factor

            worst = beyond[0]
            what = ("; ".join(worst.nonfinite) if worst.nonfinite else f"a gradient in {worst.grad_only_in} only"
                    if worst.grad_only_in else f"gradient norm {factor(worst.grad_log2)}")
            click.echo(f"gradtrace diff: {len(beyond)} matched node{'s' if len(beyond) > 1 else ''} changed beyond "
                       f"--fail-above {fail_above:g}; the largest: {describe_node(worst.label, worst.scope)} ({what})", err=True)
            raise SystemExit(EXIT_BEYOND)
