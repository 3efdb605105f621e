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

__all__ = ["report_failure", "run_rank"]


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
    payloads = exchange(info, payload, None, timeout)
    if payloads is None:
        return None
    from .launch import all_ranks_done

    all_ranks_done()  # (rank 0 may now exit 0 under --nproc-per-node: no rank is left waiting)
    doc = {"format": MULTI_FORMAT, "version": MULTI_VERSION, "world_size": info.world_size, "step": step,
           "ranks": [json.loads(p) for p in payloads]}
    return MultiTrace.from_dict(doc)


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
