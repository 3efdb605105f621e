"""The optimizer step's size next to each parameter's: one grouped warning when it overshoots."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .finding import Finding, make
from .thresholds import UPDATE_HIGH, UPDATE_MIN_WEIGHT_RMS

if TYPE_CHECKING:
    from ..steptrace import Trace

__all__ = ["update_sizes"]


#: Ops a weight passes through on its way to a normalisation without mixing with another path.
_LINEAR_PATH = frozenset({"t", "view", "reshape", "_unsafe_view", "permute", "transpose", "convolution", "addmm", "mm", "bmm",
                          "matmul", "linear", "expand", "unsqueeze", "squeeze"})
_NORMS = frozenset({"native_batch_norm", "batch_norm", "native_layer_norm", "layer_norm", "native_group_norm", "group_norm",
                    "instance_norm", "_native_batch_norm_legit", "_native_batch_norm_legit_functional", "cudnn_batch_norm",
                    "miopen_batch_norm", "rms_norm", "_fused_rms_norm"})


def _normalised(trace: Trace, key: str) -> bool:
    """True when the parameter feeds a normalisation through linear ops only: its scale does not matter.

    A conv or linear weight followed by BatchNorm/LayerNorm gives the same output at any scale, so
    a step larger than the weight changes its norm, not what the model computes (the norm then
    grows and the effective step shrinks by itself). Its update size is no sign of a bad rate.
    """
    g = trace.graph
    todo, seen = list(g.successors(key)), set()
    while todo:
        k = todo.pop()
        if k in seen:
            continue
        seen.add(k)
        label = trace.node(k).label
        if label in _NORMS:
            return True
        if label in _LINEAR_PATH and len(seen) < 8:
            todo.extend(g.successors(k))
    return False


def update_sizes(trace: Trace, order: list[str]) -> list[Finding]:
    """Parameters the step moved by more than ``UPDATE_HIGH`` × their own norm, as one finding.

    The finding sits on the parameter moved most and names the others, so a folded ×12 block
    gives one line that says which parameter, not twelve that do not.
    """
    over = []
    for key in order:
        n = trace.node(key)
        r, u = n.update_ratio, n.update
        if r is None or u is None or u.norm is None or not u.finite or r <= 0:
            continue
        w_norm = u.norm / r
        w_rms = w_norm / max(u.numel, 1) ** 0.5
        if r > UPDATE_HIGH and w_rms >= UPDATE_MIN_WEIGHT_RMS and not _normalised(trace, key):
            over.append((r, key))
    if not over:
        return []
    over.sort(key=lambda x: -x[0])
    r, key = over[0]
    rest = [k for _, k in over[1:]]
    names = ", ".join(f"'{trace.node(k).label}'" for k in rest[:3]) + (f" and {len(rest) - 3} more" if len(rest) > 3 else "")
    opt = trace.optimizer
    lr = f" (lr {opt.lr:g})" if opt is not None and opt.lr is not None else ""
    also = f"; {len(rest)} more parameter(s) moved by over {UPDATE_HIGH:g}× their own size: {names}" if rest else ""
    return [make(trace, "update_ratio", key,
                 f"the optimizer step{lr} changed '{trace.node(key).label}' by ‖Δw‖/‖w‖ = {r:.2g}: over {UPDATE_HIGH:g}× the weight itself{also}",
                 {"update_ratio": r, "count": float(len(over))}, nodes=tuple(rest))]
