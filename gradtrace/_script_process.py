"""The process around a user's script: set up as ``python SCRIPT`` would, put back after, and ended like Python.

A script changes process-wide state as it runs: it may ``chdir``, replace
``sys.stdout``, tighten ``warnings`` filters, install signal handlers, start
threads and child processes, register ``atexit`` handlers. gradtrace's own
code runs on after the script (it writes the diagram), so
:class:`ScriptProcess` puts back what that code depends on (argv,
``sys.path[0]``, cwd, stdout/stderr, warnings filters, signal handlers: an
``-o step.svg`` is written where the user ran gradtrace, and Ctrl-C while
rendering is not handled by the stopped script's handler). The script's
``atexit`` handlers stay registered and run when the process exits, as they
would after ``python SCRIPT``.

While the script runs, its standard output can be sent to standard error
(when gradtrace's own output goes to stdout), and ``os._exit()`` first hands
a recorded step to gradtrace (it ends the process, so the file is written
there or never).

When gradtrace stops a script after the traced step, the code at the
script's end never runs, and that code may be what stops its non-daemon
threads. Python waits for such threads at exit, so the process would hang
after writing its file. :func:`finish` is the chosen way out: it gives
those threads a short grace, then ends the process as Python would without
waiting for them (``atexit`` handlers, the script's objects released,
streams flushed), as if they had been daemon threads.
"""

from __future__ import annotations

import atexit
import gc
import multiprocessing.process
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

__all__ = ["GRACE_S", "TERMINATED", "ScriptProcess", "Terminated", "finish", "terminated_at"]

#: Exit status of a run ended by SIGTERM (timeout, kill, Slurm, docker stop, torchrun), as a shell reports a
#: process that SIGTERM killed (128 + 15).
TERMINATED = 128 + int(signal.SIGTERM)

#: Seconds a stopped script's non-daemon threads get to end by themselves before the process exits without them.
GRACE_S = 1.0

# What stopped scripts left, kept until the process exits (see run_script's keep_alive).
_KEPT: list[Any] = []
# Non-daemon threads started by a script that gradtrace stopped early.
_STOPPED_THREADS: list[threading.Thread] = []
# Sessions whose hooks a forked child must drop (a DataLoader worker, a Hogwild trainer).
_ACTIVE: list[Any] = []
# Running ScriptProcesses, whose children an os.fork() in the script adds to.
_RUNNING: list[ScriptProcess] = []
# Set once a script's standard output was sent to standard error: what it prints at exit (atexit) goes there too.
_STDOUT_IS_GRADTRACES = False


class Terminated(SystemExit):
    """SIGTERM arrived while the script ran: raised in its main thread, so the run ends as Ctrl-C ends it (what was
    recorded is written), and the process then ends with :data:`TERMINATED`."""

    def __init__(self) -> None:
        super().__init__(TERMINATED)


# The command line's SIGTERM handling (see catch_sigterm): whether it is installed, when SIGTERM first arrived,
# and the ScriptProcess whose script is running (the one a SIGTERM stops).
_SIGTERM: dict[str, Any] = {"installed": False, "at": None, "script": None}


def _on_sigterm(signum: int, frame: Any) -> None:
    if _SIGTERM["at"] is None:
        _SIGTERM["at"] = time.monotonic()
    proc = _SIGTERM["script"]
    if proc is not None and proc.running:
        proc.running = False  # (once: the script's own cleanup, its finally blocks, may run on)
        raise Terminated()
    # gradtrace's own code is writing what was recorded: it finishes (within a bounded time, see terminated_at),
    # then the process ends with TERMINATED (finish).


def catch_sigterm() -> None:
    """The command line's SIGTERM: end the script like Ctrl-C (:class:`Terminated` raised in it), write what was
    recorded, then end the process with :data:`TERMINATED`.

    Installed once for the process, from its main thread, and only over Python's default (a handler the caller
    set is left alone; one the script sets replaces this one while the script runs, and is in charge then).
    """
    if _SIGTERM["installed"] or threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return
    signal.signal(signal.SIGTERM, _on_sigterm)
    _SIGTERM["installed"] = True


def terminated_at() -> float | None:
    """When (``time.monotonic()``) this process got SIGTERM under :func:`catch_sigterm`; None if it did not."""
    return _SIGTERM["at"]


def _drop_hooks_in_child() -> None:
    # A child forked while a script runs inherits the session's hooks and its patched backward(); it
    # is not the process being traced, so it runs as it would without gradtrace.
    sessions = list(_ACTIVE)
    _ACTIVE.clear()
    if _SIGTERM["installed"]:  # (a DataLoader worker or the script's own child ends on SIGTERM as it would without us)
        _SIGTERM["installed"], _SIGTERM["script"] = False, None
        try:
            if signal.getsignal(signal.SIGTERM) is _on_sigterm:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
        except (OSError, ValueError):
            pass
    for session in sessions:
        try:
            session.close()
        except BaseException:  # the child must go on whatever state the fork caught the hooks in
            pass


def _count_fork_in_parent() -> None:
    # A bare os.fork() in the script is a child process like mp.Process's (whose start() counts its own fork).
    for proc in _RUNNING:
        if not proc._in_process_start:
            proc.children += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_hooks_in_child, after_in_parent=_count_fork_in_parent)


def _is_dataloader_worker(proc: multiprocessing.process.BaseProcess) -> bool:
    target = getattr(proc, "_target", None)
    return getattr(target, "__module__", "") == "torch.utils.data._utils.worker"


class ScriptProcess:
    """Sets the process up for ``path`` with ``args`` and, on exit, puts back what gradtrace relies on.

    ``kept`` is what the script left (its globals, or the exception that
    ended it with the frames it holds); ``stopped`` says gradtrace stopped
    it; ``children`` counts the processes it started (DataLoader workers
    excepted).
    """

    def __init__(self, path: Path, args: Sequence[str], session: Any, *, stdout_to_stderr: bool = False,
                 on_hard_exit: Callable[[int], None] | None = None, sigterm: bool = False) -> None:
        self.path = path
        #: Whether SIGTERM ends the script like Ctrl-C (the command line: see catch_sigterm); ``running``: the
        #: script is running now (cleared by :meth:`script_ended`).
        self.sigterm = sigterm
        self.running = False
        self.stdout_to_stderr = stdout_to_stderr
        self.on_hard_exit = on_hard_exit
        self._in_process_start = False
        self.args = list(args)
        self.session = session
        self.kept: Any = None
        self.stopped = False
        self.children = 0
        self._restore: list[Callable[[], None]] = []
        self._threads_before: set[threading.Thread] = set()

    def __enter__(self) -> ScriptProcess:
        self._save_attr(sys, "argv")
        sys.argv = [str(self.path), *self.args]
        folder = os.path.dirname(os.path.abspath(self.path))
        if sys.path:
            saved0 = sys.path[0]
            sys.path[0] = folder
            self._restore.append(lambda: sys.path.__setitem__(0, saved0) if sys.path else sys.path.insert(0, saved0))
        else:
            sys.path.insert(0, folder)
        cwd = os.getcwd()
        self._restore.append(lambda: os.chdir(cwd) if os.getcwd() != cwd else None)
        self._save_stream("stdout")
        self._save_stream("stderr")
        if self.stdout_to_stderr:
            self._stdout_to_stderr()
        caught = warnings.catch_warnings()
        caught.__enter__()
        self._restore.append(lambda: caught.__exit__(None, None, None))
        if self.sigterm:
            catch_sigterm()  # (before the handlers are saved: it stays for gradtrace's own writing after the script)
        self._save_signals()
        start = multiprocessing.process.BaseProcess.start

        def counting_start(proc: multiprocessing.process.BaseProcess) -> None:
            if not _is_dataloader_worker(proc):
                self.children += 1
            self._in_process_start = True  # its fork (if forked) is this one child, or a DataLoader worker
            try:
                start(proc)
            finally:
                self._in_process_start = False

        multiprocessing.process.BaseProcess.start = counting_start  # type: ignore[method-assign]
        self._restore.append(lambda: setattr(multiprocessing.process.BaseProcess, "start", start))
        _ACTIVE.append(self.session)
        self._restore.append(lambda: _ACTIVE.remove(self.session) if self.session in _ACTIVE else None)
        _RUNNING.append(self)
        self._restore.append(lambda: _RUNNING.remove(self) if self in _RUNNING else None)
        self._wrap_os_exit()
        self._threads_before = set(threading.enumerate())
        if self.sigterm:
            _SIGTERM["script"] = self
            self.running = True
        return self

    def script_ended(self) -> None:
        """The script returned or raised: a SIGTERM from now on lets gradtrace finish writing (see catch_sigterm)."""
        self.running = False
        if _SIGTERM["script"] is self:
            _SIGTERM["script"] = None

    def __exit__(self, *exc: object) -> None:
        self.script_ended()
        for restore in reversed(self._restore):
            try:
                restore()
            except Exception:  # put back all the rest; an unrestorable cwd (deleted) is no reason to stop
                pass
        self._restore.clear()

    def keep(self) -> None:
        """Keep what the script left alive until the process exits; note its threads if it was stopped."""
        _KEPT.append(self.kept)
        if self.stopped:
            _STOPPED_THREADS.extend(t for t in threading.enumerate() if t not in self._threads_before and not t.daemon)

    def _save_attr(self, owner: Any, name: str) -> None:
        value = getattr(owner, name)
        self._restore.append(lambda: setattr(owner, name, value))

    def _save_stream(self, name: str) -> None:
        original = getattr(sys, name)

        def restore() -> None:
            current = getattr(sys, name)
            if current is not original:
                try:  # the script's replacement (a tee, a logger) may still buffer its output
                    current.flush()
                except Exception:
                    pass
                setattr(sys, name, original)

        self._restore.append(restore)

    def _stdout_to_stderr(self) -> None:
        """Send the script's standard output to standard error until restored: gradtrace's own output is on stdout.

        Both ``sys.stdout`` and file descriptor 1 are moved, so what the script
        writes through ``sys.__stdout__``, C code or a child process goes to
        stderr too.
        """
        global _STDOUT_IS_GRADTRACES
        _STDOUT_IS_GRADTRACES = True
        _flush(sys.stdout, sys.__stdout__)
        sys.stdout = sys.stderr
        try:
            saved_fd = os.dup(1)
            os.dup2(2, 1)
        except OSError:  # no descriptor 1 or 2 (a closed stdout): sys.stdout alone is moved
            return

        def restore() -> None:
            _flush(sys.stdout, sys.__stdout__, sys.stderr)
            os.dup2(saved_fd, 1)
            os.close(saved_fd)

        self._restore.append(restore)

    def _wrap_os_exit(self) -> None:
        """While the script runs, let ``os._exit()`` in this process hand the recorded step over before it ends."""
        real_exit = os._exit
        runner_pid = os.getpid()
        on_hard_exit = self.on_hard_exit

        def _exit(status: int) -> None:
            if on_hard_exit is not None and os.getpid() == runner_pid:
                self.__exit__(None, None, None)  # gradtrace's code runs next: cwd, stdout, ... put back first
                try:
                    on_hard_exit(status)
                except BaseException as e:  # the script asked to end now: its status stands, whatever happened here
                    print(f"gradtrace: could not write the step before os._exit({status}): {e}", file=sys.stderr)
                _flush(sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
            real_exit(status)

        os._exit = _exit
        self._restore.append(lambda: setattr(os, "_exit", real_exit))

    def _save_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # handlers can be set from the main thread only: the script could not have changed them
        saved = {s: signal.getsignal(s) for s in signal.valid_signals()}

        def restore() -> None:
            for s, handler in saved.items():
                if handler is not None and signal.getsignal(s) is not handler:
                    try:
                        signal.signal(s, handler)
                    except (OSError, ValueError):
                        pass

        self._restore.append(restore)


def _flush(*streams: Any) -> None:
    for stream in streams:
        try:
            if stream is not None:
                stream.flush()
        except Exception:  # a closed or broken stream: nothing more can be written to it anyway
            pass


def finish(code: Any) -> None:
    """End the process with ``code`` without hanging on a stopped script's non-daemon threads.

    Returns (and Python's own shutdown follows) unless such threads are
    still alive after :data:`GRACE_S`; then runs the ``atexit`` handlers,
    releases the script's objects, flushes the streams and exits at once.

    When a script's standard output was sent to standard error (gradtrace's
    own output is on stdout), it goes there again for the rest of the
    process: what the script's ``atexit`` handlers print must not follow
    gradtrace's output.

    A process that got SIGTERM under :func:`catch_sigterm` ends with
    :data:`TERMINATED` whatever ``code`` says: what was recorded is written
    by now, and the process ends as a SIGTERM-ed one is reported.
    """
    if _SIGTERM["at"] is not None:
        code = TERMINATED  # what was recorded is written: the process ends as a SIGTERM-ed one is reported
    if _STDOUT_IS_GRADTRACES:
        _flush(sys.stdout, sys.__stdout__)
        sys.stdout = sys.stderr
        try:
            os.dup2(2, 1)
        except OSError:
            pass
    lingering = [t for t in _STOPPED_THREADS if t.is_alive() and not t.daemon]
    deadline = time.monotonic() + GRACE_S
    for t in lingering:
        t.join(max(0.0, deadline - time.monotonic()))
    lingering = [t for t in lingering if t.is_alive()]
    if not lingering:
        if _SIGTERM["at"] is not None:
            raise SystemExit(TERMINATED)
        return
    names = ", ".join(repr(t.name) for t in lingering)
    print(f"gradtrace: not waiting for the script's thread{'s' if len(lingering) > 1 else ''} {names}: the script was "
          "stopped after the traced step, before the code that would end them", file=sys.stderr)
    from .script import exit_status

    status, message = exit_status(code)
    if message is not None:
        print(message, file=sys.stderr)
    atexit._run_exitfuncs()  # type: ignore[attr-defined]  # what Python runs at exit, before tearing objects down
    _KEPT.clear()
    gc.collect()  # the script's objects go now, as at interpreter exit: open files are flushed and closed
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except Exception:
            pass
    os._exit(status & 0xFF)
