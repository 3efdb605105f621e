"""Bring every rank's trace to rank 0 once each has recorded its step, without hanging when one has not.

Two channels, both apart from the script's own communication (an NCCL run is
not disturbed):

- **Status**, through the rendezvous store (torchrun's ``env://`` store at
  ``MASTER_ADDR:MASTER_PORT``): each rank posts ``ok`` or why it failed, then
  waits, up to a timeout, for every rank's. A rank that failed, or that did
  not post in time, is named on rank 0 and every rank ends with an error:
  nobody waits forever on a rank that will never come.
- **Traces**, once every rank said ``ok``: gathered to rank 0 over a gloo
  side group (``dist.new_group(backend="gloo")``) of the script's process
  group; through the store itself when the script has no process group
  (left) any more.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from typing import Any

import torch.distributed as dist

from ..errors import GradtraceError
from .env import RankInfo

__all__ = ["DEFAULT_TIMEOUT", "RankFailure", "exchange"]

#: Seconds a rank waits for every other rank to finish its step before giving up on the run.
DEFAULT_TIMEOUT = 300.0
#: Seconds a failed rank waits for rank 0 to read its failure before it exits (torchrun then stops the others).
ACK_WAIT = 5.0
_POLL = 0.05


class RankFailure(GradtraceError):
    """Some rank failed before its step, or did not finish it in time; ``ranks`` names them."""

    def __init__(self, message: str, ranks: list[int]) -> None:
        super().__init__(message)
        self.ranks = ranks


def _store(info: RankInfo, timeout: float) -> Any:
    """The rendezvous store every rank can reach, even one whose script never set up a process group."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() != "true" and dist.is_available() and dist.is_initialized():
        # Launched without torchrun's agent: the script's own process group holds the store (rank 0 serves it).
        return dist.distributed_c10d._get_default_store()
    try:
        return dist.TCPStore(info.master_addr, info.master_port, is_master=False,
                             timeout=timedelta(seconds=timeout), wait_for_workers=False)
    except (RuntimeError, OSError) as e:  # DistStoreError is a RuntimeError
        raise GradtraceError(f"rank {info.rank}: cannot reach the rendezvous store at {info.master_addr}:{info.master_port} "
                             f"(MASTER_ADDR:MASTER_PORT) to meet the other ranks: {e}") from None


def _key(info: RankInfo, what: str, rank: int) -> str:
    return f"gradtrace/{info.run_id}/{what}/{rank}"


def exchange(info: RankInfo, payload: str | None, failure: str | None = None, timeout: float = DEFAULT_TIMEOUT, *,
             ended: str | None = None) -> list[str] | None:
    """Post this rank's outcome and bring every rank's ``payload`` to rank 0.

    Every rank calls it once, after its step: with its payload (the JSON of
    its trace), or with ``failure`` (one line: why it has none), or with
    ``ended`` (one line: its script finished before the step, as one rank of
    uneven step counts does; not a failure). Rank 0 gets the payloads of the
    ranks that recorded the step, in rank order, and each ended rank's line
    as ``"ended:" + line`` in its place; the others get None. When any rank
    failed, or did not call within ``timeout`` seconds, or every rank ended,
    every rank raises :class:`RankFailure` (rank 0's message names the ranks
    and why).
    """
    store = _store(info, timeout)
    me = info.rank
    status = "ok" if failure is None and ended is None else "failed:" + failure if failure is not None else "ended:" + str(ended)
    store.set(_key(info, "status", me), status)
    if failure is not None:
        # Not waiting for the others: they may be blocked in a collective of the script that waits for this
        # rank, and only end when it exits (torchrun then stops them). Rank 0, if it is waiting, names it first.
        if me != 0:
            _wait_for(store, [_key(info, "ack", me)], min(ACK_WAIT, timeout))
            raise RankFailure(_failure_message(info, {me: "failed:" + failure}), [me])
        # Rank 0 names the failures posted so far (its own and any other rank's), without waiting for the rest.
        seen = _wait_for_statuses(store, info, 0.0)
        failed = {r: st for r, st in seen.items() if st.startswith("failed:")}
        for r in failed:
            store.set(_key(info, "ack", r), "read")
        raise RankFailure(_failure_message(info, failed), sorted(failed))
    statuses = _wait_for_statuses(store, info, timeout)
    failed = {r: s for r, s in statuses.items() if s != "ok" and not s.startswith("ended:")}
    if not failed and all(s.startswith("ended:") for s in statuses.values()):
        failed = dict(statuses)  # (no rank recorded the step: nothing to write)
    if failed:
        if me == 0:
            for r in failed:
                store.set(_key(info, "ack", r), "read")
        raise RankFailure(_failure_message(info, failed), sorted(failed))
    ended_ranks = {r: s for r, s in statuses.items() if s.startswith("ended:")}
    if ended_ranks:
        # A rank that ended has left the script's collectives (it may have destroyed its process group): the
        # traces go through the store, from the ranks that have one.
        payloads = _gather_store(store, info, payload, timeout, [r for r in statuses if r not in ended_ranks])
        if payloads is None:
            return None
        by_rank = dict(zip([r for r in statuses if r not in ended_ranks], payloads))
        return [by_rank[r] if r in by_rank else ended_ranks[r] for r in range(info.world_size)]
    if dist.is_available() and dist.is_initialized():
        return _gather_gloo(info, payload or "", timeout)
    return _gather_store(store, info, payload or "", timeout)


def _wait_for(store: Any, keys: list[str], timeout: float) -> list[str]:
    """The keys still missing after waiting up to ``timeout`` seconds for all of them."""
    deadline = time.monotonic() + timeout
    missing = list(keys)
    while True:
        missing = [k for k in missing if not store.check([k])]
        if not missing or time.monotonic() >= deadline:
            return missing
        time.sleep(_POLL)


def _wait_for_statuses(store: Any, info: RankInfo, timeout: float) -> dict[int, str]:
    keys = {r: _key(info, "status", r) for r in range(info.world_size)}
    missing = set(_wait_for(store, list(keys.values()), timeout))
    out = {}
    for r, k in keys.items():
        out[r] = f"missing:{timeout:g}" if k in missing else store.get(k).decode("utf-8", "replace")
    return out


def _failure_message(info: RankInfo, failed: dict[int, str]) -> str:
    parts = []
    for r, s in sorted(failed.items()):
        if s.startswith("ended:"):
            parts.append(f"rank {r} ended before the step: {s.split(':', 1)[1]}")
        elif s.startswith("missing:"):
            parts.append(f"rank {r} did not finish its step within {s.split(':', 1)[1]} s (it crashed, hangs, or waits "
                         "on a rank that failed; see its output; --rank-timeout sets the wait)")
        else:
            parts.append(f"rank {r} failed: {s.split(':', 1)[1]}")
    return f"no trace written: {len(failed)} of {info.world_size} ranks did not record the step: " + "; ".join(parts)


def _gather_gloo(info: RankInfo, payload: str, timeout: float) -> list[str] | None:
    group = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout))
    try:
        out: list[Any] | None = [None] * info.world_size if info.rank == 0 else None
        dist.gather_object(payload, out, dst=0, group=group)
        return None if out is None else [str(x) for x in out]
    finally:
        dist.destroy_process_group(group)


def _gather_store(store: Any, info: RankInfo, payload: str | None, timeout: float,
                  ranks: list[int] | None = None) -> list[str] | None:
    if payload is not None:
        store.set(_key(info, "trace", info.rank), payload)
    if info.rank != 0:
        return None
    keys = [_key(info, "trace", r) for r in (range(info.world_size) if ranks is None else ranks)]
    missing = _wait_for(store, keys, timeout)
    if missing:
        raise RankFailure(f"no trace written: {len(missing)} rank(s) did not send their trace within {timeout:g} s", [])
    return [store.get(k).decode("utf-8") for k in keys]
