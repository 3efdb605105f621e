"""``gradtrace watch``: the whole run's history (the engine is :mod:`gradtrace.watching`)."""

from __future__ import annotations

import click

from ._common import _rank_options


@click.command("watch", context_settings={"ignore_unknown_options": False})
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
@_rank_options
def watch(script: str, script_args: tuple[str, ...], output: str | None, fmt: str | None, every: int | None, steps: str | None,
          trace_steps: str | None, no_alarm_trace: bool, nproc_per_node: int | None, rank_timeout: float) -> None:
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
        torchrun --nproc-per-node 2 -m gradtrace watch train.py -o run.json
        gradtrace watch --nproc-per-node 2 train.py -o run.html

    \b
    Under torchrun (or with --nproc-per-node) every rank records its history
    (the same sampled steps on every rank) and rank 0 writes one file holding
    all ranks, with the spread of the loss and of each module's output RMS
    across ranks; a rank that failed is in it with the steps it made. The
    first alarm is not re-run to be traced under torchrun: use `check
    --every-step` for that (see docs/watch.md).

    \b
    Exit status:
        0    the history was written (alarms are in it; they do not change the status)
        N    the script's own non-zero status, passed through, after the history is written
        1    gradtrace could not write the history (the script made no step), or the script raised
             (its traceback is printed after the history is written)
        2    usage error (a bad option, a missing script)
        70   internal error: a bug in gradtrace (its traceback is printed)
        130  interrupted (Ctrl-C), after the history is written
        143  terminated (SIGTERM: timeout, kill, Slurm, docker stop, torchrun), after the history is written
    """
    from ..watching.cli import parse_steps, parse_trace_steps, run_watch, watch_target
    from ._ranks import _launch_if_asked, _ranks

    # -o checked here, before --nproc-per-node starts the ranks: a bad suffix or folder is one usage error, not one
    # per rank after torch started and torchrun's failure dump.
    target, kind, shown = watch_target(output, fmt, script, "html")
    _launch_if_asked("watch", nproc_per_node)
    ranks = _ranks(False, rank_timeout)
    if ranks is not None:
        # Every rank records its own history; rank 0 writes one file holding all ranks (docs/watch.md). The first alarm
        # is not re-run to be traced here: `check --every-step` does that on every rank.
        from ..watching.rankwatch import run_watch_ranks

        run_watch_ranks(ranks.info, script, script_args, target, kind, shown, every, parse_steps(steps),
                        parse_trace_steps(trace_steps), rank_timeout)
    run_watch(script, script_args, output, fmt, every, parse_steps(steps), parse_trace_steps(trace_steps), not no_alarm_trace)
