"""One rank's part of a distributed trace: record the step, then meet the other ranks (torch imported lazily).

The command line runs the script as for one process, with a
:class:`~gradtrace.distributed.collective.CollectiveRecorder` attached to
the session; then every rank posts its trace (or why it has none) and rank 0
receives them all (see :mod:`.gather`).
"""

from __future__ import annotations

import json
from typing import Any, Callable

from ..steptrace import Trace
from .env import RankInfo
from .multitrace import MULTI_FORMAT, MULTI_VERSION, MultiTrace, RankTrace

__all__ = ["report_ended", "report_failure", "run_rank"]


def run_rank(info: RankInfo, run: Callable[[Callable[[Any], None]], Trace], step: int, timeout: float) -> MultiTrace | None:
    """Run this rank's step with ``run(on_session)`` and gather: the MultiTrace on rank 0, None elsewhere.

    Whatever ``run`` raises (the script failed before its step) propagates
    after the other ranks were told; a :class:`~.gather.RankFailure` says
    another rank failed or never arrived.
    """
    from .collective import CollectiveRecorder
    from .gather import exchange

    recorder = CollectiveRecorder(info.world_size)
    trace = run(recorder.attach)
    trace, collective = recorder.records(trace)
    payload = json.dumps(RankTrace(info.rank, trace, collective, info.local_rank).to_dict(), allow_nan=False)
    return _multi(info, exchange(info, payload, None, timeout), step)


def _multi(info: RankInfo, payloads: list[str] | None, step: int) -> MultiTrace | None:
    if payloads is None:
        return None
    from .launch import all_ranks_done

    all_ranks_done()  # (rank 0 may now exit 0 under --nproc-per-node: no rank is left waiting)
    ended = {r: p.split(":", 1)[1] for r, p in enumerate(payloads) if p.startswith("ended:")}
    doc = {"format": MULTI_FORMAT, "version": MULTI_VERSION, "world_size": info.world_size, "step": step,
           "ranks": [json.loads(p) for p in payloads if not p.startswith("ended:")]}
    if ended:
        doc["ended"] = {str(r): why for r, why in ended.items()}
    return MultiTrace.from_dict(doc)


def report_ended(info: RankInfo, why: str, step: int, timeout: float) -> MultiTrace | None:
    """This rank's script ended before the step (``why``: one line), as one rank of uneven step counts does: the
    others' traces are still gathered. Rank 0 gets the MultiTrace of the ranks that recorded it, None elsewhere; a
    :class:`~.gather.RankFailure` when another rank failed, or no rank recorded the step."""
    from .gather import exchange

    return _multi(info, exchange(info, None, None, timeout, ended=why), step)


def report_failure(info: RankInfo, why: str, timeout: float) -> str | None:
    """Tell the other ranks this one has no step (``why``: one line); rank 0's summary, or None elsewhere."""
    from ..errors import GradtraceError
    from .gather import RankFailure, exchange

    try:
        exchange(info, None, why, timeout)
    except RankFailure as e:
        return str(e) if info.is_main else None
    except GradtraceError as e:  # the store is unreachable: this rank's own failure is what to report
        return str(e) if info.is_main else None
    return None
