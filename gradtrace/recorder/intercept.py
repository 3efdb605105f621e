"""Which ``backward()`` calls are a user's step, and one capture at a time.

gradtrace replaces ``torch.autograd.backward`` and ``torch.autograd.grad`` while
a session is open. Those are process-wide names, so two sessions at once (two
threads each in ``capture()``) would patch over each other and the last to
close would leave the other's dead wrapper installed: a second session is
refused while one is open, and a patch is undone only while it is still the
installed one (a wrapper someone installed over it stays theirs; ours, if they
still call it, then passes straight through).

A call made while autograd is already running a backward (the engine running a
reentrant ``torch.utils.checkpoint`` block, which calls ``backward`` on its
recomputed graph, or a hook that calls ``grad``) or under a ``torch.func``
transform is part of something else, never a step of the user's own.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

from ..errors import CaptureError

__all__ = ["ThreadFollower", "claim", "inside_autograd", "install"]

_lock = threading.Lock()
_active: list[str] = []  # the thread name of the session that is open, if any


def claim() -> Callable[[], None]:
    """Register a session as the one open; returns the function that releases it.

    Raises :class:`CaptureError` while another session is open, in this thread or another.
    """
    with _lock:
        if _active:
            here = threading.current_thread().name
            where = "this thread" if _active[0] == here else f"thread {_active[0]!r}"
            raise CaptureError(
                f"another gradtrace capture is already running (in {where}): gradtrace records one step at a time "
                "(its hooks and its torch.autograd.backward wrapper are process-wide); end that capture first"
            )
        _active.append(threading.current_thread().name)

    def release() -> None:
        with _lock:
            _active.clear()

    return release


def inside_autograd() -> bool:
    """Whether a call now comes from inside a running backward or a ``torch.func`` transform."""
    return torch._C._current_graph_task_id() != -1 or torch._C._are_functorch_transforms_active()


def install(owner: Any, name: str, replacement: Callable[..., Any]) -> Callable[[], None]:
    """Set ``owner.name`` to ``replacement``; returns the function that puts the original back,
    if ``replacement`` is still the one installed."""
    original = getattr(owner, name)
    setattr(owner, name, replacement)

    def restore() -> None:
        if getattr(owner, name) is replacement:
            setattr(owner, name, original)

    return restore


class ThreadFollower:
    """Puts a dispatch mode on the threads where the model runs, besides the one that entered it.

    Dispatch modes are per thread: a capture entered on one thread sees nothing of a training loop
    run on another. The session calls :meth:`follow` when a model's outermost call starts on another
    thread, and :meth:`leave` on that thread's next ``backward()`` (the forward is over), so the mode
    is on that thread's stack for exactly the forward of each step.
    """

    def __init__(self, mode: Any) -> None:
        self.mode = mode
        self.home = threading.get_ident()
        self.followed: set[int] = set()  # threads the mode was pushed on and not yet taken off

    def away(self) -> bool:
        """Whether this thread is another than the one that entered the capture."""
        return threading.get_ident() != self.home

    def follow(self) -> None:
        ident = threading.get_ident()
        if ident not in self.followed:
            torch._C._push_on_torch_dispatch_stack(self.mode)
            self.followed.add(ident)

    def leave(self) -> None:
        """Take the mode off this thread's dispatch stack, if :meth:`follow` put it there."""
        ident = threading.get_ident()
        if ident in self.followed and _get_current_dispatch_mode() is self.mode:
            torch._C._pop_torch_dispatch_stack(None)
            self.followed.discard(ident)
