"""What flowed along each edge in backprop, and module scopes, as a person reads them.

Shared by every renderer (DOT, text, HTML) so that the gradient-descent
lesson reads the same everywhere: the gradient ``y`` receives is the sum of
what each consumer sent back along its edge, ``grad = -400 + -400 = -800``.
No torch, no Graphviz: plain strings from records.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from ..records import TensorStats
from . import fmt

if TYPE_CHECKING:
    from ..steptrace import Trace

__all__ = ["EDGE_GRADS_MAX_ITEMS", "edge_grad_label", "edge_grad_text", "grad_sum_lines", "scope_module", "scope_title", "sent_back", "show_edge_grads"]

#: With ``RenderOptions.edge_grads=None`` (the default), diagrams with at most this many
#: items label their edges with the gradient sent back along them; bigger ones only in tooltips.
EDGE_GRADS_MAX_ITEMS = 60

#: Tensors with at most this many elements show their exact values on an edge and in a sum.
_EXACT_MAX = 4
#: Terms of a sum shown before "…".
_TERMS_MAX = 4

_CALL = re.compile(r"#(\d+)$")


def scope_title(scope: str) -> str:
    """A scope as a reader sees it: the second call of ``pool`` is ``pool (call 2)``.

    >>> scope_title("pool#2"), scope_title("blocks.0.attn"), scope_title("enc#3.norm")
    ('pool (call 2)', 'blocks.0.attn', 'enc (call 3).norm')
    """
    return ".".join(_CALL.sub(r" (call \1)", part) for part in scope.split("."))


def scope_module(scope: str) -> str:
    """The module path of a scope, call numbers dropped: ``pool#2`` -> ``pool``."""
    return ".".join(_CALL.sub("", part) for part in scope.split("."))


def show_edge_grads(setting: bool | None, items: int) -> bool:
    """Whether edges carry a gradient label: as set, or (``None``) when the diagram is small."""
    return items <= EDGE_GRADS_MAX_ITEMS if setting is None else setting


def _value_text(s: TensorStats) -> str:
    """Exact values for a small tensor, else its norm (what adds up along a chain of edges)."""
    if s.values is not None and s.numel <= _EXACT_MAX:
        return fmt.summary(s)
    bad = " ".join(p for p in (f"NaN×{s.nan}" if s.nan else "", f"inf×{s.inf}" if s.inf else "") if p)
    return (bad + " " if bad else "") + f"‖grad‖ {fmt.num(s.norm, 3)}"


def edge_grad_text(grad: TensorStats | None, uses: int = 1) -> str:
    """The gradient a consumer sent back along one edge; ``""`` where none was recorded.

    ``uses`` > 1 (the same tensor fed several inputs of the consumer, as in ``x * x``)
    says the edge's gradient is already their sum.

    >>> from gradtrace.records import TensorStats
    >>> g = TensorStats((), "float32", "cpu", 1, -400.0, -400.0, -400.0, 0.0, 400.0, 0, 0, (-400.0,))
    >>> edge_grad_text(g), edge_grad_text(g, uses=2)
    ('-400', '-400 ×2 (summed)')
    """
    if grad is None:
        return ""
    return _value_text(grad) + (f" ×{uses} (summed)" if uses > 1 else "")


def edge_grad_label(grad: TensorStats | None, uses: int = 1) -> str:
    """An edge's label: ``grad -400``, ``grad 600 ×2 (summed)``, or ``‖grad‖ 0.0851`` for a big tensor."""
    text = edge_grad_text(grad, uses)
    return text if not text or "‖grad‖" in text else f"grad {text}"


def sent_back(trace: Trace, key: str) -> list[tuple[str, int, TensorStats | None, int]]:
    """The out-edges of ``key`` as (consumer key, output index, gradient sent back, uses), consumers in forward order."""
    g = trace.graph
    out = [(dst, d["output"], d["grad"], d["uses"]) for _, dst, d in g.out_edges(key, data=True)]
    step = {dst: g.nodes[dst]["forward_step"] for dst, *_ in out}
    return sorted(out, key=lambda r: (r[1], step[r[0]] if step[r[0]] is not None else 1 << 60, r[0]))


def grad_sum_lines(trace: Trace, key: str) -> list[str]:
    """At a node with several consumers, its gradient as the sum of what each sent back.

    ``grad = -400 + -400 = -800`` when the terms are small enough to show
    exactly, else their norms: ``grad = Σ 3 edges (‖grad‖ 1.2, 0.5, 0.1) → ‖grad‖ 1.4``.
    One line per output that has at least two consumers with a recorded gradient.
    """
    node = trace.node(key)
    by_output: dict[int, list[tuple[TensorStats, int]]] = {}
    for _, output, grad, uses in sent_back(trace, key):
        if grad is not None:
            by_output.setdefault(output, []).append((grad, uses))
    lines = []
    for output, terms in sorted(by_output.items()):
        if len(terms) < 2:
            continue
        total = node.grads[output] if output < len(node.grads) else None
        prefix = "grad" if len(node.grads) <= 1 else f"grad[{output}]"
        exact = all(s.values is not None and s.numel <= _EXACT_MAX for s, _ in terms)
        if exact and total is not None and total.values is not None:
            shown = [fmt.summary(s) for s, _ in terms[:_TERMS_MAX]] + (["…"] if len(terms) > _TERMS_MAX else [])
            lines.append(f"{prefix} = " + " + ".join(shown) + f" = {fmt.summary(total)}")
        else:
            norms = [fmt.num(s.norm, 3) for s, _ in terms[:_TERMS_MAX]] + (["…"] if len(terms) > _TERMS_MAX else [])
            result = f"‖grad‖ {fmt.num(total.norm, 3)}" if total is not None else "-"
            lines.append(f"{prefix} = Σ {len(terms)} edges (‖grad‖ {', '.join(norms)}) → {result}")
    return lines
