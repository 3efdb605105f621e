"""Run a user's unmodified script under capture, exactly as ``python SCRIPT ARGS`` would.

The script runs in this process with ``__name__ == "__main__"``, its own
``sys.argv``, its folder first on ``sys.path`` and the working directory
unchanged. A session intercepts its ``backward()`` calls; once the asked-for
step's backward (and the optimizer ``step()`` after it, if any) is recorded,
the script is stopped by an exception it cannot catch by accident (it is no
``Exception``), unless ``run_to_end`` is set.

What the run leaves behind is what Python would leave (see
:mod:`gradtrace._script_process`): process-wide settings gradtrace's own code
depends on (argv, ``sys.path[0]``, cwd, stdout/stderr, warnings filters,
signal handlers) are put back; the script's ``atexit`` handlers run when the
process exits, as they would after the script.
"""

from __future__ import annotations

import os
import runpy
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from . import _script_process
from .errors import ScriptError
from .steptrace import Trace

__all__ = ["INTERRUPTED", "ScriptFailed", "exit_status", "run_script"]

#: Exit status of a script ended by Ctrl-C (KeyboardInterrupt), as a shell reports ``python SCRIPT`` killed by SIGINT.
INTERRUPTED = 130

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


class _StopScript(BaseException):
    """Raised inside the user's script to end it once the step is recorded."""


@dataclass
class ScriptFailed(Exception):
    """The script raised, or exited with a non-zero status of its own.

    ``report`` is what to print (the traceback with gradtrace's own frames left
    out, or the exit message); ``status`` is the exit status Python would have
    ended the script with; ``trace`` is the recorded step when the failure came
    after it.
    """

    exc: BaseException
    report: str
    trace: Trace | None = None
    status: int = 1

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


def exit_status(code: Any) -> tuple[int, str | None]:
    """The status and message Python gives ``sys.exit(code)``: None is 0, an int is itself, anything else prints and is 1.

    >>> exit_status(None), exit_status(3), exit_status("bad config")
    ((0, None), (3, None), (1, 'bad config'))
    """
    if code is None:
        return 0, None
    if isinstance(code, int):  # bool included, as in Python: sys.exit(True) is status 1
        return int(code), None
    return 1, str(code)


def _calls(n: int) -> str:
    return f"{n} backward() call{'s' if n != 1 else ''}"


def run_script(script: str | os.PathLike[str], args: Sequence[str] = (), *, step: int = 1, run_to_end: bool = False,
               keep_alive: bool = False, stdout_to_stderr: bool = False,
               on_hard_exit: Callable[[Trace, int], None] | None = None,
               on_session: Callable[[Any], None] | None = None) -> Trace:
    """Run ``script`` with ``args`` and return the trace of its ``step``-th backward().

    Raises ScriptError when the script ends (status 0) before that backward,
    and ScriptFailed (the script's own traceback or exit status, and the trace
    when the step was recorded first) when it raises or exits non-zero.

    ``keep_alive`` keeps what a stopped script left (its objects, DataLoader
    workers) alive until the process exits, as Python keeps a script's
    objects until its end: the command line sets it so the process shuts
    down like ``python SCRIPT`` (collecting a stopped script's objects early,
    in an arbitrary order, makes persistent DataLoader workers stall 5 s
    each). A library caller running many scripts leaves it off. Either way
    the non-daemon threads a script leaves running are the caller's process's
    to wait for at exit, as Python would; only the ``gradtrace`` command
    stops waiting for those of a script it stopped (see
    :func:`gradtrace._script_process.finish`).

    ``stdout_to_stderr`` sends what the script prints to standard error while
    it runs (``sys.stdout`` and file descriptor 1), for a caller whose own
    output goes to standard output. A KeyboardInterrupt (Ctrl-C) ends the
    script like an error, with status :data:`INTERRUPTED`. ``on_session`` is
    called with the recording session before the script starts (the
    distributed side attaches its collective recorder there). ``on_hard_exit``
    is called with the trace and the status when the script calls
    ``os._exit()`` after the step was recorded, just before the process ends
    (it cannot return to the caller).

    Only the thread that runs the script is ever stopped: a step recorded in
    another thread of the script (a training thread) is recorded in full,
    and the script is stopped at its main thread's next ``backward()`` or
    optimizer ``step()``, or runs on.

    >>> t = run_script("examples/gradient_descent.py")         # doctest: +SKIP
    """
    from .recorder.session import Session  # torch is imported here, not at CLI start-up

    path = Path(script)
    if not path.is_file():
        raise ScriptError(f"{str(path)!r} is not a file")
    session = Session(None, step=step, intercept_backward=True)
    runner_pid = os.getpid()
    runner_thread = threading.current_thread()

    def stop() -> None:
        # A child process forked by the script inherits the hooks until its at-fork handler removes
        # them; it is never gradtrace's to stop. Nor is a thread of the script's: the stop exception
        # would end only that thread, with a traceback, so the runner thread stops at its own next hook.
        if not run_to_end and os.getpid() == runner_pid and threading.current_thread() is runner_thread:
            raise _StopScript()

    session.on_optimizer_done = stop
    session.on_backward_after_recorded = stop
    if on_session is not None:
        on_session(session)

    def hard_exit(status: int) -> None:
        if on_hard_exit is not None and session.backward_recorded:
            on_hard_exit(session.build_trace(), status)

    ended: BaseException | None = None
    with _script_process.ScriptProcess(path, args, session, stdout_to_stderr=stdout_to_stderr,
                                       on_hard_exit=hard_exit, sigterm=keep_alive) as proc:
        try:
            with session:
                try:
                    proc.kept = runpy.run_path(str(path), run_name="__main__")
                except _StopScript as e:
                    proc.stopped = True
                    proc.kept = e  # its traceback holds the stopped script's frames and objects
                except (SystemExit, KeyboardInterrupt, Exception) as e:  # the script's own end: report it as Python would
                    ended = proc.kept = e
                proc.script_ended()
        finally:
            if keep_alive:
                proc.keep()
    children = proc.children
    del proc
    if isinstance(ended, Exception) and _raised_by_gradtrace(ended):
        # Raised by gradtrace's own code in a hook, not by the script: a GradtraceError is a refusal with its
        # own message; anything else is a bug in gradtrace and must not pass for the script's error.
        raise ended
    trace = session.build_trace() if session.backward_recorded else None
    if isinstance(ended, SystemExit):
        status, message = exit_status(ended.code)
        if status != 0:
            calls = session.backward_calls
            if trace is not None:
                where = f" after the traced step (backward() call {step})"
            elif calls == 0:
                where = " before its first backward()"
            else:
                where = f" after {_calls(calls)}; --step {step} asked for call {step}"
            how = ("was terminated (SIGTERM)" if isinstance(ended, _script_process.Terminated)
                   else f"exited with status {status}")
            report = (message + "\n" if message is not None else "") + f"gradtrace: {path.name} {how}{where}\n"
            raise ScriptFailed(ended, report, trace, status)
    elif isinstance(ended, KeyboardInterrupt):
        raise ScriptFailed(ended, _user_traceback(ended), trace, INTERRUPTED)
    elif ended is not None:
        raise ScriptFailed(ended, _user_traceback(ended), trace, 1)
    if trace is None:
        raise _finished_early(path, session.backward_calls, step, children)
    return trace


def _raised_by_gradtrace(exc: BaseException) -> bool:
    """Whether the innermost frame of ``exc`` is gradtrace's own code.

    An error in the user's ops or backward surfaces in torch's frames
    (``OpOverload.__call__``, the autograd engine) even when gradtrace's hooks
    are on the stack, so the innermost frame tells gradtrace's own failures
    apart. Running out of memory is never counted as gradtrace's bug.
    """
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return False
    frames = [f for f, _ in traceback.walk_tb(exc.__traceback__)]
    return bool(frames) and frames[-1].f_code.co_filename.startswith(_PACKAGE_DIR)


def _finished_early(path: Path, calls: int, step: int, children: int) -> ScriptError:
    message = f"{path.name} finished after {_calls(calls)}; --step {step} asked for call {step}"
    if children:
        message += (f". The script started {children} child process{'es' if children != 1 else ''}: its backward() calls may "
                    "have run there (Hogwild, torch.multiprocessing.spawn), but gradtrace traces the process it runs in. "
                    "Run the training in the main process (one worker) to trace it")
    return ScriptError(message)
