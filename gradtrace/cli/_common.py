"""What every ``gradtrace`` command shares: exit statuses, the script options, running the script."""

from __future__ import annotations

import math
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

import click

from ..errors import GradtraceError
from ..render.options import MAX_TIMEOUT
from ..render.output import GRAPHVIZ_FORMATS


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


#: The shortest --rank-timeout: a rendezvous store round trip and a rank's start-up take longer than a few ms.
MIN_RANK_TIMEOUT = 1.0


def _check_rank_timeout(ctx: click.Context, param: click.Parameter, value: float) -> float:
    # (checked here, before the script runs: NaN passes every range comparison, and inf or 1e-300 only fail in the
    # store's timedelta after the whole training)
    if not (MIN_RANK_TIMEOUT <= value <= MAX_TIMEOUT):
        raise click.BadParameter(f"{value:g} is not a number of seconds from {MIN_RANK_TIMEOUT:g} to {MAX_TIMEOUT:.0f} "
                                 "(how long a rank waits for the others)")
    return value


def _rank_options(f: Any) -> Any:
    f = click.option("--rank-timeout", type=float, callback=_check_rank_timeout, default=300.0, show_default=True,
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
    from ..script import ScriptFailed, run_script

    if fmt in GRAPHVIZ_FORMATS and shutil.which("dot") is None:
        from ..render.execute import INSTALL_HINT

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
