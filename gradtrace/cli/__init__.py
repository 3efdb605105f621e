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

import os
import sys
import traceback
from typing import Any

import click

from .. import __version__
from ..errors import GradtraceError
from ._common import INTERNAL_ERROR, INTERRUPTED, _Interrupted, _interrupted, _report_late_failure
from ._check import EXIT_ALARM, EXIT_HEALTHY, EXIT_NO_STEP, EXIT_USAGE, EXIT_WARNING, check
from ._render import render
from ._watch import watch
from ..diff.cli import diff

__all__ = ["EXIT_ALARM", "EXIT_HEALTHY", "EXIT_NO_STEP", "EXIT_USAGE", "EXIT_WARNING", "INTERNAL_ERROR", "INTERRUPTED", "main"]


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
                from ..distributed.launch import record_status

                if record_status(e.code):
                    # Rank 0's status goes to the launcher, which ends with it: torchrun, which would turn it
                    # into 1 with a page of its own traceback, sees a clean exit.
                    e = SystemExit(0)
            if "gradtrace._script_process" in sys.modules:
                from .._script_process import finish

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


for _command in (render, check, watch, diff):
    main.add_command(_command)
