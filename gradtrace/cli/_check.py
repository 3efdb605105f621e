"""``gradtrace check``: the findings of one step (or, with --every-step, of every step), as a table or JSON and an exit status."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ._common import _is_stdout, _rank_options, _run, _script_options
from ._ranks import _Ranks, _launch_if_asked, _ranks, _run_ranks


#: ``gradtrace check`` exit statuses, one meaning each (a bug in gradtrace is INTERNAL_ERROR, as for every command).
EXIT_HEALTHY, EXIT_ALARM, EXIT_USAGE, EXIT_WARNING, EXIT_NO_STEP = 0, 1, 2, 3, 5


@click.command()
@_script_options
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON instead of a table. Either way the script's own prints go to standard error.")
@click.option("--every-step", is_flag=True,
              help="Run the whole training with a cheap sentinel on every step (loss, gradients, update ratio); at the first "
                   "broken step, print it and write that step's full trace (see docs/watch.md).")
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False), default=None,
              help="With --every-step: the file to write the broken step's trace to (format from the suffix; default "
                   "SCRIPT-stepK.html; not '-': the findings are printed on standard output).")
@_rank_options
def check(script: str, script_args: tuple[str, ...], step: int, as_json: bool, every_step: bool, output: str | None,
          nproc_per_node: int | None, rank_timeout: float) -> None:
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
      143 terminated (SIGTERM: timeout, kill, Slurm, docker stop, torchrun)

    \b
    Under torchrun (or with --nproc-per-node) every rank is checked, and the
    ranks are compared (where NaN first appears, graphs or reduced gradients
    that differ, a parameter without gradient on some rank, imbalance); rank
    0 prints, with the rank of each finding, and exits with the status
    above over all ranks (torchrun itself reports 1 for any non-zero status;
    --nproc-per-node passes rank 0's on).

    \b
    With --every-step (the whole run, a sentinel on every optimizer step):
      0  every step was healthy and the script ran to its end
      1  a step went wrong (loss, gradients non-finite, or the update larger
         than the weights): its number and finding are printed and its full
         trace is written (the script is re-run to that step and checked to
         reproduce it); under torchrun the ranks stop at the same step, every
         rank is re-run in a fresh group and traced, and the rank and op
         where it first went wrong are printed
      5  no broken step, but the script raised, exited non-zero or made no
         step (its message or traceback is printed)
      2, 70, 130 and 143 as above; 3 is not used

    \b
    Examples:
        gradtrace check train.py
        gradtrace check train.py --step 10 --json
        torchrun --nproc-per-node 4 -m gradtrace check train.py
        gradtrace check train.py --every-step -o first_bad.html
        torchrun --nproc-per-node 2 -m gradtrace check train.py --every-step
    """
    if every_step:
        if step != 1:
            raise click.UsageError("--step and --every-step do not go together: --every-step checks every step")
        from ..watching.cli import check_every_step, check_trace_output

        if output == "-" or _is_stdout(output):
            # The findings (a table or --json's document) are printed on standard output: the trace there too would
            # make two documents back to back that no reader (json.load, jq) can split.
            raise click.UsageError("-o - (standard output) does not go with check --every-step: the findings are printed "
                                   "there; write the broken step's trace to a file (-o step.json, -o step.html)")
        check_trace_output(output)
        _launch_if_asked("check", nproc_per_node)
        ranks = _ranks(False, rank_timeout)
        if ranks is not None:
            from ..watching.rankcheck import check_every_step_ranks

            check_every_step_ranks(ranks.info, script, script_args, output, as_json, rank_timeout)
        check_every_step(script, script_args, output, as_json)
        return
    if output is not None:
        raise click.UsageError("-o/--output is for --every-step (the broken step's trace); check alone prints its findings")
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
    from ..render.inert import inert_trace

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
    from ..render.inert import inert_trace

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

    from ..render.inert import printable

    changes = {name: printable(getattr(f, name)) for name in ("message", "module", "hint")
               if isinstance(getattr(f, name, None), str)}
    return dataclasses.replace(f, **changes)
