"""Run a user's unmodified script under capture, exactly as ``python SCRIPT ARGS`` would.

The script runs in this process with ``__name__ == "__main__"``, its own
``sys.argv``, its folder first on ``sys.path`` and the working directory
unchanged. A session intercepts its ``backward()`` calls; once the asked-for
step's backward (and the optimizer ``step()`` after it, if any) is recorded,
the script is stopped by an exception it cannot catch by accident (it is no
``Exception``), unless ``run_to_end`` is set.
"""

from __future__ import annotations

import os
import runpy
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .errors import ScriptError
from .steptrace import Trace

__all__ = ["ScriptFailed", "run_script"]

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


class _StopScript(BaseException):
    """Raised inside the user's script to end it once the step is recorded."""


@dataclass
class ScriptFailed(Exception):
    """The script raised; ``report`` is its traceback with gradtrace's own frames left out."""

    exc: BaseException
    report: str
    trace: Trace | None = None

    def __str__(self) -> str:
        return self.report


def click_file() -> str:
    try:
        import click
    except ImportError:  # running without the CLI
        return "<no click>"
    return click.__file__ or "<no click>"


def _user_traceback(exc: BaseException) -> str:
    """The traceback as Python would print it, without gradtrace's, runpy's or click's frames."""
    te = traceback.TracebackException.from_exception(exc)
    hidden = (_PACKAGE_DIR, runpy.__file__, "<frozen runpy>", os.path.dirname(click_file()))

    def prune(t: traceback.TracebackException) -> None:
        t.stack = traceback.StackSummary.from_list([f for f in t.stack if not f.filename.startswith(hidden)])
        if t.__cause__ is not None:
            prune(t.__cause__)
        if t.__context__ is not None:
            prune(t.__context__)

    prune(te)
    return "".join(te.format())


def run_script(script: str | os.PathLike[str], args: Sequence[str] = (), *, step: int = 1, run_to_end: bool = False) -> Trace:
    """Run ``script`` with ``args`` and return the trace of its ``step``-th backward().

    Raises ScriptError when the script ends before that backward, and
    ScriptFailed (carrying the script's own traceback) when it raises.

    >>> t = run_script("examples/gradient_descent.py")         # doctest: +SKIP
    """
    from .recorder.session import Session  # torch is imported here, not at CLI start-up

    path = Path(script)
    if not path.is_file():
        raise ScriptError(f"{str(path)!r} is not a file")
    session = Session(None, step=step, intercept_backward=True)

    def stop() -> None:
        if not run_to_end:
            raise _StopScript()

    session.on_optimizer_done = stop
    session.on_backward_after_recorded = stop
    saved_argv, saved_path0 = sys.argv, sys.path[0] if sys.path else None
    sys.argv = [str(path), *args]
    folder = os.path.dirname(os.path.abspath(path))
    if sys.path:
        sys.path[0] = folder
    else:
        sys.path.insert(0, folder)
    failure: BaseException | None = None
    try:
        with session:
            try:
                runpy.run_path(str(path), run_name="__main__")
            except _StopScript:
                pass
            except SystemExit as e:
                if not session.backward_recorded or (e.code not in (None, 0) and run_to_end):
                    if not session.backward_recorded:
                        raise _finished_early(path, session.backward_calls, step) from None
                    failure = e
            except Exception as e:  # the script's own error: report it as Python would
                failure = e
    finally:
        sys.argv = saved_argv
        if saved_path0 is not None:
            sys.path[0] = saved_path0
    trace = session.build_trace() if session.backward_recorded else None
    if failure is not None:
        report = _user_traceback(failure) if not isinstance(failure, SystemExit) else f"{path.name} exited with status {failure.code}\n"
        raise ScriptFailed(failure, report, trace)
    if trace is None:
        raise _finished_early(path, session.backward_calls, step)
    return trace


def _finished_early(path: Path, calls: int, step: int) -> ScriptError:
    return ScriptError(f"{path.name} finished after {calls} backward() call{'s' if calls != 1 else ''}; --step {step} asked for call {step}")
