"""The commands under torchrun: this process's rank, launching ranks (--nproc-per-node), running a rank's step."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, Callable

import click

from ..errors import GradtraceError
from ._common import _NO_STEP_WHY, _run


@dataclasses.dataclass(frozen=True)
class _Ranks:
    """A run under torchrun: this process's rank and what the rank options asked."""

    info: Any  # gradtrace.distributed.RankInfo
    every_rank: bool
    timeout: float


def _ranks(every_rank: bool, timeout: float) -> _Ranks | None:
    """This process's rank under torchrun (None when not started by it)."""
    from ..distributed.env import rank_info

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
    from ..distributed.env import rank_info
    from ..distributed.launch import launch, without_option

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
    from ..distributed.gather import RankFailure
    from ..distributed.run import report_failure, run_rank

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
