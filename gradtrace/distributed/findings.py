"""What comparing the ranks of one step shows (no torch here).

Kinds, each a :class:`~gradtrace.diagnose.Finding` about a node of the rank
paired with it (also ``numbers["rank"]``), whose trace holds that node:

- ``nonfinite_origin_rank`` (alarm): the first rank and op where NaN or inf
  appears, before the collective spread it to every rank; or, when no rank's
  local gradients hold any, the rank whose ``.grad`` already held NaN/inf
  before this backward (accumulated under ``no_sync()`` by an earlier
  micro-step: that went into the all-reduce); or, when none did either, the
  parameter whose reduced gradient does (the reduction itself made it).
- ``reduced_differs`` (alarm): a parameter's all-reduced gradient is not the
  same on every rank. DDP's all-reduce leaves every rank the same average;
  a difference means the ranks now train different models (a hook that
  writes ``.grad`` on one rank, a rank that skipped the reduction).
- ``graph_differs`` (warning): ranks whose autograd graphs differ in their
  node set or in backprop's order (a rank-dependent branch; FSDP2 and DDP
  without ``find_unused_parameters`` hang or mis-reduce on it).
- ``missing_grad_rank`` (warning): a parameter that got a gradient on some
  ranks and none on others.
- ``rank_imbalance`` (warning): one rank's local gradients, before the
  reduction, are :data:`IMBALANCE` times larger than another's (its data
  differ: an outlier batch, an unshuffled or padded shard).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import TYPE_CHECKING

from ..diagnose.finding import ALARM, WARNING, Finding
from ..records import TensorStats, TraceNode
from ..steptrace import Trace

if TYPE_CHECKING:
    from .multitrace import MultiTrace, RankTrace

__all__ = ["CROSS_RANK_KINDS", "IMBALANCE", "REDUCED_RTOL", "cross_rank_findings"]

#: A rank's total local gradient norm this many times another's is a warning: data-parallel ranks
#: see different batches of one distribution, whose gradients differ by a small factor (2-3×), not 10×.
IMBALANCE = 10.0
#: Reduced gradients are one tensor copied to every rank (bit-identical); this only absorbs the
#: printing of statistics, not a real difference.
REDUCED_RTOL = 1e-6

CROSS_RANK_KINDS = {"nonfinite_origin_rank": ALARM, "reduced_differs": ALARM, "graph_differs": WARNING,
                    "missing_grad_rank": WARNING, "rank_imbalance": WARNING}

_NUMERIC = ("nan_data", "inf_data", "nan_forward", "inf_forward", "nan_backward", "inf_backward")


def _finding(kind: str, rank: int, trace: Trace, key: str, message: str, hint: str, numbers: dict[str, float] | None = None,
             nodes: tuple[str, ...] = ()) -> tuple[int, Finding]:
    return rank, Finding(kind, key, message, {"rank": float(rank), **(numbers or {})}, CROSS_RANK_KINDS[kind],
                         trace.node(key).module, hint, nodes)


def _ranks(ranks: list[int]) -> str:
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(str(r) for r in ranks)


def cross_rank_findings(multi: MultiTrace) -> list[tuple[int, Finding]]:
    """Findings that only comparing the ranks shows: ``(rank, finding)``, alarms first.

    >>> cross_rank_findings(MultiTrace.from_json(text))      # doctest: +SKIP
    [(1, Finding(kind='nonfinite_origin_rank', ...))]
    """
    if len(multi.ranks) < 2:
        return _nonfinite_origin(multi)
    found = _nonfinite_origin(multi) + _reduced_differs(multi) + _graph_differs(multi) + _missing_grads(multi)
    if not any(f.alarm for _, f in found):  # (a NaN explains any imbalance: the norms are of what is left)
        found += _imbalance(multi)
    order = list(CROSS_RANK_KINDS)
    return sorted(found, key=lambda rf: (rf[1].severity != ALARM, order.index(rf[1].kind), rf[0]))


def _origin_position(trace: Trace, f: Finding) -> tuple[int, int]:
    """Where in the step a numeric alarm sits: data, then the forward in order, then the backward in order."""
    n = trace.node(f.node)
    if f.kind.endswith("_data"):
        return (0, 0)
    if f.kind.endswith("_forward"):
        return (1, trace.forward_order().index(f.node))
    return (2, n.backward_step if n.backward_step is not None else 1 << 30)


def _nonfinite_origin(multi: MultiTrace) -> list[tuple[int, Finding]]:
    candidates = []
    for r in multi.ranks:
        for f in r.trace.diagnose():
            if f.kind in _NUMERIC:
                candidates.append((_origin_position(r.trace, f), r.rank, r, f))
    if candidates:
        candidates.sort(key=lambda c: (c[0], c[1]))
        _, rank, r, f = candidates[0]
        bad = sorted({c[1] for c in candidates})
        clean = [x.rank for x in multi.ranks if x.rank not in bad]
        spread = _nonfinite_reduced_ranks(multi)
        said = f"first on rank {rank}: {f.message}"
        if clean:
            said += f". {_ranks(clean).capitalize()} computed finite values"
            said += (f", but the collective spread it: the reduced gradients on {_ranks(spread)} hold NaN/inf" if spread else "")
        return [_finding("nonfinite_origin_rank", rank, r.trace, f.node, said,
                         f"look at rank {rank}'s data and this op; " + (f.hint or "check its inputs"))]
    # No rank's own values in this backward hold any. A rank whose .grad already held NaN/inf before it (accumulated
    # under no_sync() by an earlier micro-step) sent that into the reduction, which spread it: that rank is the origin.
    for r in multi.ranks:
        for c in r.collective:
            if c.held is not None and not c.held.finite:
                n = r.trace.node(c.node)
                spread = _nonfinite_reduced_ranks(multi)
                said = (f"'{n.label}'.grad on rank {r.rank} already held {_bad_count(c.held)} before this backward() "
                        "(accumulated under no_sync() by an earlier backward() of this step, a micro-step): that is "
                        "what went into the all-reduce, although every rank's local gradient in this backward() was "
                        "finite")
                if spread:
                    said += f"; the all-reduce spread it to {_ranks(spread)}"
                earlier = (f"gradtrace check --step {multi.step - 1}, or an earlier call" if multi.step > 1
                           else "gradtrace check --step N with an earlier backward() call")
                return [_finding("nonfinite_origin_rank", r.rank, r.trace, c.node, said,
                                 f"trace rank {r.rank}'s earlier micro-steps of this optimizer step ({earlier}) to find "
                                 "the op where the NaN/inf appeared; check --every-step finds that call by itself",
                                 {"held_nan": float(c.held.nan), "held_inf": float(c.held.inf)})]
    # Nor did any rank hold one: the reduction itself made it (an overflow of the sum, a bad hook).
    for r in multi.ranks:
        for c in r.collective:
            if c.reduced is not None and not c.reduced.finite:
                n = r.trace.node(c.node)
                return [_finding("nonfinite_origin_rank", r.rank, r.trace, c.node,
                                 f"the {c.op.replace('_', '-')}d gradient of '{n.label}' holds {_bad_count(c.reduced)} on rank {r.rank} "
                                 "while every rank's local gradient was finite: the reduction made it (an overflow in the "
                                 "sum, or a communication hook)", "reduce in float32 (FSDP2 MixedPrecisionPolicy reduce_dtype) "
                                 "or scale the gradients down before the reduction")]
    return []


def _bad_count(s: TensorStats) -> str:
    return " and ".join(([f"{s.nan} NaN"] if s.nan else []) + ([f"{s.inf} inf"] if s.inf else []))


def _nonfinite_reduced_ranks(multi: MultiTrace) -> list[int]:
    return [r.rank for r in multi.ranks if any(c.reduced is not None and not c.reduced.finite for c in r.collective)]


def _params(r: RankTrace) -> dict[str, TraceNode]:
    return {n.label: n for n in r.trace.nodes if n.kind == "param"}


def _same(a: TensorStats, b: TensorStats) -> bool:
    if (a.shape, a.nan, a.inf) != (b.shape, b.nan, b.inf):
        return False
    for x, y in ((a.norm, b.norm), (a.mean, b.mean), (a.min, b.min), (a.max, b.max)):
        if (x is None) != (y is None):
            return False
        if x is not None and y is not None and not math.isclose(x, y, rel_tol=REDUCED_RTOL, abs_tol=1e-30):
            return False
    return True


def _reduced_differs(multi: MultiTrace) -> list[tuple[int, Finding]]:
    """All-reduced gradients must be equal on every rank (reduce-scattered shards differ by design)."""
    by_label: dict[str, list[tuple[RankTrace, TensorStats, str]]] = {}
    for r in multi.ranks:
        for c in r.collective:
            if c.op == "all_reduce" and c.reduced is not None:
                by_label.setdefault(r.trace.node(c.node).label, []).append((r, c.reduced, c.node))
    out = []
    for label, seen in by_label.items():
        ref_rank, ref, _ = seen[0]
        odd = [(r, s, key) for r, s, key in seen[1:] if not _same(ref, s)]
        if not odd:
            continue
        r, s, key = odd[0]
        out.append(_finding(
            "reduced_differs", r.rank, r.trace, key,
            f"the all-reduced gradient of '{label}' differs across ranks: ‖grad‖ {_num(ref.norm)} on rank {ref_rank.rank}, "
            f"{_num(s.norm)} on rank {r.rank}" + (f" (and {len(odd) - 1} more rank(s))" if len(odd) > 1 else "")
            + ": the ranks now hold different weights",
            "look for code that writes .grad on some ranks only (a hook, clipping per rank, no_sync() on one rank)",
            {"norm_reference": ref.norm or 0.0, "norm": s.norm or 0.0}))
    return out


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.6g}"


def _signature(n: TraceNode) -> tuple[str, str, str, str]:
    return (n.kind, n.label, n.module, n.grad_fn or "")


def _graph_differs(multi: MultiTrace) -> list[tuple[int, Finding]]:
    ref = multi.ranks[0]
    ref_nodes = Counter(_signature(n) for n in ref.trace.nodes if n.kind != "input")
    ref_order = [_signature(ref.trace.node(k)) for k in ref.trace.backward_order()]
    out = []
    for r in multi.ranks[1:]:
        nodes = Counter(_signature(n) for n in r.trace.nodes if n.kind != "input")
        if nodes != ref_nodes:
            extra, lacking = nodes - ref_nodes, ref_nodes - nodes
            first = _first_node(r.trace, extra) or _first_node(ref.trace, lacking)
            trace, key = first if first is not None else (r.trace, r.trace.loss)
            out.append(_finding(
                "graph_differs", r.rank, trace, key,
                f"rank {r.rank}'s autograd graph differs from rank {ref.rank}'s: {_describe(extra)} only on rank {r.rank}, "
                f"{_describe(lacking)} only on rank {ref.rank}",
                "make the forward take the same path on every rank (a branch on the rank, on data, or on a random "
                "draw); DDP needs find_unused_parameters=True for parameters some ranks skip, and FSDP2 needs every "
                "rank to run the same modules",
                {"only_here": float(sum(extra.values())), "only_reference": float(sum(lacking.values()))}))
            continue
        order = [_signature(r.trace.node(k)) for k in r.trace.backward_order()]
        if order != ref_order:
            i = next(i for i, (a, b) in enumerate(zip(order, ref_order)) if a != b)
            key = r.trace.backward_order()[i]
            out.append(_finding(
                "graph_differs", r.rank, r.trace, key,
                f"rank {r.rank}'s backward visited the same nodes as rank {ref.rank}'s in another order, from step {i} "
                f"('{r.trace.node(key).label}'): the collective's buckets become ready in another order",
                "make the forward identical on every rank; a data-dependent order of ops breaks DDP's bucket order"))
    return out


def _first_node(trace: Trace, wanted: Counter[tuple[str, str, str, str]]) -> tuple[Trace, str] | None:
    if not wanted:
        return None
    for k in trace.forward_order():
        if _signature(trace.node(k)) in wanted:
            return trace, k
    return None


def _describe(c: Counter[tuple[str, str, str, str]]) -> str:
    if not c:
        return "no node"
    names = [f"'{label}'" + (f" in '{module}'" if module else "") for (_, label, module, _), _n in c.most_common(3)]
    total = sum(c.values())
    return f"{total} node{'s' if total != 1 else ''} (" + ", ".join(names) + (", …" if len(c) > 3 else "") + ")"


def _missing_grads(multi: MultiTrace) -> list[tuple[int, Finding]]:
    params = {r.rank: _params(r) for r in multi.ranks}
    with_grad: dict[str, list[int]] = {}
    for r in multi.ranks:
        for label, n in params[r.rank].items():
            if n.grads and n.grads[0] is not None:
                with_grad.setdefault(label, []).append(r.rank)
    out = []
    for label, ranks in with_grad.items():
        lacking = [r.rank for r in multi.ranks if r.rank not in ranks]
        if not lacking:
            continue
        holder = next(r for r in multi.ranks if r.rank == ranks[0])  # (the finding's node is in a trace that has it)
        out.append(_finding(
            "missing_grad_rank", holder.rank, holder.trace, params[holder.rank][label].key,
            f"'{label}' got no gradient on {_ranks(lacking)} (its graph there does not reach it) but did on {_ranks(ranks)}: "
            "the reduced gradient averages the ranks that used it with zeros from the others",
            "if the skip is meant (a rank-dependent branch, a mixture of experts), DDP needs find_unused_parameters=True; "
            "otherwise make every rank use it",
            {"ranks_without": float(len(lacking)), "first_rank_without": float(lacking[0])}))
    return out


def _total_norm(trace: Trace) -> float | None:
    norms = []
    for n in trace.nodes:
        if n.kind == "param" and n.grads and n.grads[0] is not None:
            s = n.grads[0]
            if not s.finite or s.norm is None:
                return None
            norms.append(s.norm)
    return math.sqrt(sum(x * x for x in norms)) if norms else None


def _imbalance(multi: MultiTrace) -> list[tuple[int, Finding]]:
    totals = [(r, _total_norm(r.trace)) for r in multi.ranks]
    known = [(r, t) for r, t in totals if t is not None and t > 0]
    if len(known) < 2:
        return []
    lo = min(known, key=lambda rt: rt[1])
    hi = max(known, key=lambda rt: rt[1])
    ratio = hi[1] / lo[1]
    if ratio < IMBALANCE:
        return []
    r = hi[0]
    key = r.trace.loss
    return [_finding(
        "rank_imbalance", r.rank, r.trace, key,
        f"rank {r.rank}'s local gradients are {ratio:.3g}× larger than rank {lo[0].rank}'s before the reduction "
        f"(total ‖grad‖ {hi[1]:.4g} vs {lo[1]:.4g}): the average is dominated by rank {r.rank}'s data",
        "check each rank's data: a DistributedSampler with shuffle, equal shard sizes, no outlier or padded batch",
        {"ratio": ratio, "norm_high": hi[1], "norm_low": lo[1]})]
