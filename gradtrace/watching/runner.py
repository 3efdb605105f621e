"""Run a user's unmodified script under a :class:`~gradtrace.watching.engine.Watcher`, as ``python SCRIPT ARGS`` would.

The same process set-up as ``gradtrace render`` (:mod:`gradtrace._script_process`):
``__name__ == "__main__"``, the script's ``sys.argv``, its folder on ``sys.path``,
what gradtrace depends on put back after. The script runs to its end unless
the watcher asks it to stop (the sentinel found a broken step): then it is
stopped at its next optimizer step or ``backward()`` by an exception it cannot
catch by accident.

Before the script, torch, ``random`` and numpy are seeded with :data:`SEED`
(a script's own seed replaces it): two runs of a script that does not seed
itself draw the same numbers, which is what replaying a step needs.
"""

from __future__ import annotations

import os
import random
import runpy
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from .. import _script_process
from ..errors import ScriptError
from ..script import INTERRUPTED, _user_traceback, exit_status
from .engine import Watcher

__all__ = ["SEED", "Outcome", "run_watched", "seed_everything"]

SEED = 0


class StopScript(BaseException):
    """Raised inside the script to end it once the sentinel has found its step."""


@dataclass
class Outcome:
    """How the script ended: ``status`` as Python would report it (0 for a stop by gradtrace), ``report`` what to
    print (its traceback or exit message, '' when none), ``stopped`` whether gradtrace stopped it."""

    status: int
    report: str
    stopped: bool
    interrupted: bool = False
    raised: bool = False
    #: Ended by SIGTERM (timeout, kill, Slurm, docker stop, torchrun): status TERMINATED, the history kept as Ctrl-C's.
    terminated: bool = False
    #: Child processes the script started (DataLoader workers excepted): where its training ran when it made no step.
    children: int = 0


def seed_everything(seed: int = SEED) -> None:
    """Seed torch, ``random`` and numpy (when installed) as a script that seeds nothing would find them in both runs."""
    import torch

    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy
    except ImportError:
        return
    numpy.random.seed(seed)


class _Hooks:
    """What a child process forked by the script (a DataLoader worker) drops: the watcher's hooks, nothing read."""

    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher

    def close(self) -> None:
        self.watcher.drop_hooks()


def run_watched(script: str | os.PathLike[str], args: Sequence[str], watcher: Watcher, *, stdout_to_stderr: bool = False,
                seed: bool = True, keep_alive: bool = False,
                on_hard_exit: Callable[[Outcome], None] | None = None) -> Outcome:
    """Run ``script`` with ``watcher`` installed, to its end or until ``watcher.stop_requested``.

    ``keep_alive``: as :func:`gradtrace.script.run_script`'s; it also makes SIGTERM end the script as Ctrl-C does
    (:func:`gradtrace._script_process.catch_sigterm`: an Outcome with ``terminated``, status 143). ``on_hard_exit``: called when the script calls
    ``os._exit(N)``, with the watcher closed (everything read) and the Outcome of status N, before the process
    ends: the last chance to write what was recorded. Errors raised by gradtrace's own code in a hook are raised again here (they are not the script's).
    """
    path = Path(script)
    if not path.is_file():
        raise ScriptError(f"{str(path)!r} is not a file")
    runner_pid = os.getpid()
    runner_thread = threading.current_thread()

    def maybe_stop(step: int) -> None:
        if watcher.stop_requested and os.getpid() == runner_pid and threading.current_thread() is runner_thread:
            raise StopScript()

    watcher.on_step_end = maybe_stop
    ended: BaseException | None = None
    stopped = False
    def hard_exit(status: int) -> None:
        watcher.close()  # (idempotent: hooks off, the device batches read)
        if on_hard_exit is not None:
            message = exit_status(status)[1]
            on_hard_exit(Outcome(status & 0xFF, message + "\n" if message else "", False))

    with _script_process.ScriptProcess(path, args, _Hooks(watcher), stdout_to_stderr=stdout_to_stderr,
                                       on_hard_exit=hard_exit if on_hard_exit is not None else None,
                                       sigterm=keep_alive) as proc:
        with watcher:
            if seed:
                seed_everything()
            try:
                proc.kept = runpy.run_path(str(path), run_name="__main__")
            except StopScript as e:
                stopped, proc.kept = True, e
            except (SystemExit, KeyboardInterrupt, Exception) as e:
                ended = proc.kept = e
            proc.script_ended()
        if keep_alive:  # (the command line: the process then ends like `python SCRIPT`, see run_script)
            proc.keep()
    children = proc.children
    del proc
    outcome = _outcome(ended, stopped, path)
    outcome.children = children
    return outcome


def _outcome(ended: BaseException | None, stopped: bool, path: Path) -> Outcome:
    """How the script ended, as an Outcome (an error raised by gradtrace's own code in a hook is raised again)."""
    from ..script import _raised_by_gradtrace

    if isinstance(ended, Exception) and _raised_by_gradtrace(ended):
        raise ended
    if isinstance(ended, _script_process.Terminated):
        return Outcome(_script_process.TERMINATED, f"gradtrace: {path.name} was terminated (SIGTERM)\n", False,
                       terminated=True)
    if isinstance(ended, SystemExit):
        status, message = exit_status(ended.code)
        return Outcome(status, message + "\n" if message else "", False)
    if isinstance(ended, KeyboardInterrupt):
        return Outcome(INTERRUPTED, _user_traceback(ended), False, interrupted=True)
    if ended is not None:
        return Outcome(1, _user_traceback(ended), False, raised=True)
    return Outcome(0, "", stopped)


def no_step_hint(outcome: Outcome) -> str:
    """What to add to "made no training step" when the script started child processes (its training ran there)."""
    n = outcome.children
    if not n:
        return ""
    return (f". The script started {n} child process{'es' if n != 1 else ''} (torch.multiprocessing.spawn, "
            "multiprocessing): its training ran there, and gradtrace watches the process it runs in. Launch the ranks "
            "with torchrun instead (`torchrun --nproc-per-node N -m gradtrace ...`, or `gradtrace ... --nproc-per-node N`)"
            ", each rank calling its training function itself")


def describe(outcome: Outcome, name: str) -> str:
    """One line about how the script ended, for a message."""
    if outcome.interrupted:
        return f"{name} was interrupted"
    if outcome.terminated:
        return f"{name} was terminated (SIGTERM)"
    if outcome.raised:
        return f"{name} raised an exception"
    return f"{name} exited with status {outcome.status}"



def why_ended(outcome: Outcome, name: str) -> str:
    """:func:`describe`, with the last line of the script's traceback or exit message when it has one."""
    lines = outcome.report.strip().splitlines()
    return describe(outcome, name) + (f" ({lines[-1].strip()})" if lines else "")
