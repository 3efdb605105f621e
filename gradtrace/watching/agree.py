"""Under torchrun: every rank stops at the same step once any rank's sentinel found a broken one.

The ranks of a DDP or FSDP run must stop together: a rank that stopped alone
would leave the others waiting in their next all-reduce. So a rank that finds
a broken step does not stop by itself; the ranks meet in the rendezvous store
(:class:`gradtrace.distributed.board.Board`) at the sentinel's reads of steps
:data:`MEET_EVERY`, 2 x :data:`MEET_EVERY`, ... (every rank reads at the same
step counts: :data:`~.sentinel.BATCH` steps on a GPU, every step on the CPU),
each posts its first broken step so far, and all stop at the end of that
same step when any has one. Nothing goes over NCCL and nothing waits on the
GPU: a meeting is a few store round trips every :data:`MEET_EVERY` steps.

A broken step in the last steps before the script's end (after the last
meeting) is not missed: every rank posts its first broken step with its
``end`` record too, and rank 0 takes the earliest over all of them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..distributed.board import Board
from ..distributed.gather import RankFailure
from .sentinel import BATCH, Alarm

__all__ = ["MEET_EVERY", "RankAlarm", "StepAgreement", "earliest"]

#: The ranks meet at the sentinel's first read at or after every MEET_EVERY-th step.
MEET_EVERY = BATCH


@dataclass
class RankAlarm(Alarm):
    """An :class:`Alarm` and the rank whose sentinel raised it."""

    rank: int = 0


def alarm_to_dict(a: Alarm | None, rank: int) -> dict[str, Any] | None:
    if a is None:
        return None
    return {"step": a.step, "text": a.text, "backward_call": a.backward_call, "optimizer": a.optimizer,
            "rank": getattr(a, "rank", rank)}


def alarm_from_dict(d: dict[str, Any] | None) -> RankAlarm | None:
    if not d:
        return None
    return RankAlarm(int(d["step"]), str(d["text"]), int(d["backward_call"]), d.get("optimizer"), int(d["rank"]))


def earliest(alarms: list[RankAlarm | None]) -> RankAlarm | None:
    """The first broken step over the ranks and, within it, the first backward() call that went wrong (the lowest
    rank among those broken at it): the single-process rule (the micro-step whose loss was first non-finite) over
    all ranks. With accumulation under no_sync(), a NaN born on rank 1 in micro-step 1 reaches rank 0 only at the
    last micro-step's all-reduce: rank 0's alarm is at a later call, and rank 1's call is the one to re-trace.

    >>> earliest([RankAlarm(8, "gradients are not finite", 16, None, 0), RankAlarm(8, "loss is NaN", 15, None, 1)]).rank
    1
    """
    found = [a for a in alarms if a is not None]
    return min(found, key=lambda a: (a.step, a.backward_call, a.rank)) if found else None


class StepAgreement:
    """The sentinel's ``agree`` callback on one rank (see the module's doc)."""

    def __init__(self, board: Board) -> None:
        self.board = board
        self.local: RankAlarm | None = None  # this rank's own first broken step
        self.agreed: RankAlarm | None = None
        self.at_step: dict[int, list[RankAlarm]] = {}  # the agreed step -> every rank's alarm at it
        self._next_meeting = MEET_EVERY

    def __call__(self, alarm: Alarm | None, last_step: int) -> Alarm | None:
        if alarm is not None and self.local is None:
            self.local = RankAlarm(alarm.step, alarm.text, alarm.backward_call, alarm.optimizer, self.board.info.rank)
        if self.agreed is not None:
            return self.agreed
        if last_step < self._next_meeting:
            return None
        self._next_meeting = (last_step // MEET_EVERY + 1) * MEET_EVERY
        info = self.board.info
        what = f"meet{last_step}"
        self.board.post(what, json.dumps(alarm_to_dict(self.local, info.rank)))
        others = [r for r in range(info.world_size) if r != info.rank]
        posted = self.board.wait(what, others)
        missing = [r for r, v in posted.items() if v is None and self.board.read("end", r) is None]
        if missing:  # (a rank that ended is not waited for: its script finished, or failed and said so)
            raise RankFailure(f"rank {', '.join(map(str, missing))} did not reach step {last_step} within "
                              f"{self.board.timeout:g} s (it crashed, hangs, or waits on a rank that failed; "
                              "--rank-timeout sets the wait)", missing)
        alarms = [self.local] + [alarm_from_dict(json.loads(v)) for v in posted.values() if v is not None]
        self.agreed = earliest(alarms)
        if self.agreed is not None:
            self.at_step = {self.agreed.step: [a for a in alarms if a is not None and a.step == self.agreed.step]}
        return self.agreed
