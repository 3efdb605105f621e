"""Every rank of a distributed run (torchrun, DDP, FSDP2): one file holding all ranks, the collective, cross-rank findings.

Under ``torchrun --nproc-per-node N -m gradtrace render train.py -o step.json``
each rank runs the unmodified script and records the same step; the traces
are gathered to rank 0 (see :mod:`.gather`) and written as one
:class:`MultiTrace`. Each rank's trace shows its local gradients, before the
collective; :class:`CollectiveGrad` records give each parameter's gradient
after DDP's all-reduce or FSDP2's reduce-scatter. :func:`cross_rank_findings`
compares the ranks.

Modules that touch torch (:mod:`.collective`, :mod:`.gather`) are imported
only by the command line under torchrun; the records, their JSON, the
findings and the output here work without torch.
"""

from __future__ import annotations

from .env import RankInfo, rank_info
from .findings import cross_rank_findings
from .multitrace import COLLECTIVE_OPS, MULTI_FORMAT, CollectiveGrad, MultiTrace, RankTrace

__all__ = ["COLLECTIVE_OPS", "MULTI_FORMAT", "CollectiveGrad", "MultiTrace", "RankInfo", "RankTrace", "cross_rank_findings", "rank_info"]
