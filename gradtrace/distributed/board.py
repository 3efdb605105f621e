"""A notice board in the rendezvous store: what the ranks of a watched run tell each other, never waiting forever.

``watch`` and ``check --every-step`` run the whole script on every rank, so
the ranks meet more than once: at each read of the sentinel (to agree on the
first broken step) and at the end (to bring every rank's history to rank 0).
Both go through torchrun's rendezvous store (:func:`.gather._store`), apart
from the script's own process group: nothing is sent over NCCL, no GPU
synchronizes for it, and a rank that died is seen as missing after a timeout
instead of blocking a collective.

Keys are ``gradtrace/RUN/NAMESPACE/WHAT/RANK`` (``RUN``: torchrun's run id and
restart count), so two commands, or two restarts, never read each other's.
A rank that ended posts ``end``; the others stop waiting for it at once.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

from .env import RankInfo
from .gather import _POLL, _store

__all__ = ["Board", "TERM_GRACE", "stopping"]

#: Seconds torchrun waits between its SIGTERM to a rank and its SIGKILL (torch.distributed.elastic's
#: ``TORCH_ELASTIC_SHUTDOWN_TIMEOUT``, 30 s unless set; measured with torch 2.13). A rank that got SIGTERM
#: (a peer died, torchrun stops the group) has that long to write what it holds.
TERM_GRACE = 30.0


def _grace() -> float:
    try:
        return max(0.0, float(os.environ.get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", TERM_GRACE)))
    except ValueError:
        return TERM_GRACE


def stopping() -> bool:
    """Whether this rank got SIGTERM and half of torchrun's grace (:data:`TERM_GRACE`) is spent: it must stop
    waiting for the others now and write what it has, before torchrun's SIGKILL (the other half is for that)."""
    from .._script_process import terminated_at

    at = terminated_at()
    return at is not None and time.monotonic() >= at + _grace() / 2


class Board:
    """This rank's view of the store for one command (``namespace``: ``watch``, ``check``)."""

    def __init__(self, info: RankInfo, namespace: str, timeout: float) -> None:
        self.info = info
        self.namespace = namespace
        self.timeout = timeout
        self._store: Any = None

    @property
    def store(self) -> Any:
        if self._store is None:  # (lazily: a rank that never meets the others never connects)
            self._store = _store(self.info, self.timeout)
        return self._store

    def key(self, what: str, rank: int) -> str:
        return f"gradtrace/{self.info.run_id}/{self.namespace}/{what}/{rank}"

    def post(self, what: str, value: str, rank: int | None = None) -> None:
        """Post ``value`` as this rank's ``what`` (or as ``rank``'s: an acknowledgement rank 0 leaves for it)."""
        self.store.set(self.key(what, self.info.rank if rank is None else rank), value)

    def read(self, what: str, rank: int) -> str | None:
        k = self.key(what, rank)
        return self.store.get(k).decode("utf-8", "replace") if self.store.check([k]) else None

    def wait(self, what: str, ranks: list[int], timeout: float | None = None, *, or_ended: bool = True,
             give_up: Callable[[], bool] | None = None) -> dict[int, str | None]:
        """Each rank's ``what``, waiting up to ``timeout`` seconds (default: the board's) for all of them.

        A rank that posted ``end`` instead (it finished or failed) is not waited
        for when ``or_ended``: its value is None. So is one that posted nothing
        in time: the caller tells the two apart with :meth:`read` of ``end``.
        A rank that got SIGTERM stops waiting once half of torchrun's grace is
        spent (:func:`stopping`), whatever ``timeout`` says.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        found: dict[int, str | None] = {}
        waiting = list(ranks)
        while True:
            for r in list(waiting):
                value = self.read(what, r)
                if value is not None:
                    found[r] = value
                    waiting.remove(r)
                elif or_ended and what != "end" and self.read("end", r) is not None:
                    found[r] = None
                    waiting.remove(r)
            if not waiting or time.monotonic() >= deadline or stopping() or (give_up is not None and give_up()):
                for r in waiting:
                    found[r] = None
                return found
            time.sleep(_POLL)
