"""``gradtrace render --nproc-per-node N SCRIPT``: start N ranks through ``torch.distributed.run`` (no torch here).

For people without a torchrun command line: this process starts
``python -m torch.distributed.run --standalone --nproc-per-node N -m gradtrace
...`` with the same command and options (less ``--nproc-per-node``), waits,
and ends with rank 0's exit status (torchrun itself reports 1 for any
failure: a ``check`` that found only warnings, status 3 on rank 0, would read
as 1). Rank 0 leaves its status in the file named by
:data:`STATUS_FILE_VAR`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from typing import Sequence

from ..errors import GradtraceError

__all__ = ["STATUS_FILE_VAR", "all_ranks_done", "launch", "record_status", "without_option"]

#: The environment variable naming the file where rank 0 writes its exit status for the launcher.
STATUS_FILE_VAR = "GRADTRACE_STATUS_FILE"


def without_option(argv: Sequence[str], option: str) -> list[str]:
    """``argv`` without ``option`` and its value (``--opt N`` or ``--opt=N``), up to a ``--``.

    >>> without_option(["render", "--nproc-per-node", "2", "t.py", "--", "--nproc-per-node", "9"], "--nproc-per-node")
    ['render', 't.py', '--', '--nproc-per-node', '9']
    """
    out: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            return out + list(argv[i:])
        if a == option:
            i += 2
            continue
        if a.startswith(option + "="):
            i += 1
            continue
        out.append(a)
        i += 1
    return out


def launch(nproc: int, gradtrace_argv: Sequence[str]) -> int:
    """Run ``gradtrace`` with ``gradtrace_argv`` on ``nproc`` local ranks; return rank 0's exit status."""
    with tempfile.TemporaryDirectory(prefix="gradtrace-ranks-") as folder:
        status_file = os.path.join(folder, "status")
        env = dict(os.environ, **{STATUS_FILE_VAR: status_file})
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "gradtrace", *gradtrace_argv]
        try:
            proc = subprocess.run(cmd, env=env)
        except OSError as e:
            raise GradtraceError(f"cannot start torch.distributed.run: {e}") from None
        try:
            with open(status_file, encoding="ascii") as f:
                return int(f.read().strip())
        except (OSError, ValueError):  # rank 0 ended before writing it (killed, crashed): torchrun's own status
            return proc.returncode if proc.returncode >= 0 else 128 - proc.returncode


_ALL_RANKS_DONE = False


def all_ranks_done() -> None:
    """Say that every rank sent its trace (rank 0 has them all): no rank is left running its step.

    Until then rank 0 ends with its real status: when a rank failed, hangs, or waits in a collective
    for a rank that failed, a non-zero exit of rank 0 is the one signal on which torchrun stops them."""
    global _ALL_RANKS_DONE
    _ALL_RANKS_DONE = True


def record_status(code: object) -> bool:
    """On rank 0 of a launched run, leave the exit status for :func:`launch`; True when it was left and
    rank 0 may exit 0 (torchrun then prints no failure page of its own for a verdict such as check's 3).
    False unless every rank sent its trace (:func:`all_ranks_done`): a clean exit of rank 0 would leave
    torchrun waiting on a rank that hangs."""
    path = os.environ.get(STATUS_FILE_VAR)
    if not path or os.environ.get("RANK", "0") != "0":
        return False
    from ..script import exit_status

    status, _ = exit_status(code)
    try:
        with open(path, "w", encoding="ascii") as f:
            f.write(str(status))
    except OSError:
        return False
    return _ALL_RANKS_DONE
