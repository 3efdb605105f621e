"""Repeats a drawing can fold into one item: identical sibling layers, and the time steps of a loop.

A transformer's layers ``h.0`` … ``h.11`` repeat one structure, each feeding the next. So do
the calls of one module in a loop (an RNN cell unrolled over time: ``cell``, ``cell#2`` …), and
so do the *steps* of such a loop when a step is more than one call (``cell`` then ``head`` at
every time step) or has a few loose ops around the call (``x[t]``, ``h * 0.9``). This module
finds those runs; :mod:`gradtrace.collapse` turns each into one folded block. No torch here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .records import TraceNode

if TYPE_CHECKING:
    from .steptrace import Trace

__all__ = ["MAX_PERIOD", "Run", "call_number", "find_runs", "group_path", "module_of", "output_of", "signature"]

#: The longest step a loop may have, in sibling module calls (cell, then head: 2).
MAX_PERIOD = 4

_CALL = re.compile(r"#\d+(?=[. ]|$)")


@dataclass
class Run:
    """Consecutive repeats under one parent scope: each unit is one or more sibling scopes."""

    parent: str  # the scope they sit in ("" at top level)
    units: list[tuple[str, ...]]  # ("h.0",), ("h.1",) … or ("cell", "head"), ("cell#2", "head#2") …
    members: list[str]  # every node key folded, forward order
    outputs: list[str]  # per unit, the member whose output leaves it
    shared: int  # members that are parameters every unit reads (an unrolled cell's weights)


def module_of(scope: str) -> str:
    """The module path of a scope, call numbers dropped: ``cell#2`` -> ``cell``."""
    return _CALL.sub("", scope)


def call_number(scope: str) -> int:
    """Which call of its module a scope is: ``cell#7`` -> 7, ``cell`` -> 1."""
    number = scope.rpartition(".")[2].partition("#")[2]
    return int(number) if number.isdigit() else 1


def group_path(n: TraceNode) -> str:
    """The group a node folds with: an op's scope (its call of a module), anything else's module path."""
    return (n.scope or n.module) if n.kind == "op" else n.module


def output_of(trace: Trace, members: list[str]) -> str:
    """The member whose output leaves the group (the last such op in forward order)."""
    inside = set(members)
    g = trace.graph
    leaving = [k for k in members if any(s not in inside for s in g.successors(k)) or k == trace.loss]
    ops = [k for k in leaving if trace.node(k).kind == "op"] or leaving or members
    return ops[-1]


def signature(trace: Trace, members: list[str]) -> tuple:
    """What makes two groups 'the same structure': the sequence of their ops and parameter shapes."""
    sig = []
    for k in members:
        n = trace.node(k)
        shape = n.value.shape if n.value is not None else None
        sig.append((n.kind, n.label.rpartition(".")[2] if n.kind == "param" else n.label, shape))
    return tuple(sig)


def find_runs(trace: Trace, order: list[str]) -> list[Run]:
    """The runs of ``order``'s nodes to fold, shallowest first; no node is in two runs.

    Under each parent scope, its child scopes in forward order are cut into units of 1 to
    :data:`MAX_PERIOD` siblings; a run is two or more consecutive units that have the same
    modules, the same ops (loose ops that only feed a unit count as part of it) and the same
    parameter shapes, each unit feeding the next. Parameters a module's calls share are left
    out of the comparison (every call reads them, none owns them) and folded with the run.
    """
    g = trace.graph
    pos = {k: i for i, k in enumerate(order)}
    members: dict[str, list[str]] = {}  # scope path -> node keys inside it (at any depth), forward order
    loose: dict[str, list[str]] = {}  # scope path -> its own ops, in no child scope
    for k in order:
        n = trace.node(k)
        scope = group_path(n)
        if n.kind == "op":
            loose.setdefault(scope, []).append(k)
        if not scope:
            continue
        parts = scope.split(".")
        for i in range(1, len(parts) + 1):
            members.setdefault(".".join(parts[:i]), []).append(k)
    shared = _shared_params(trace, members)
    called = _called_again(members)
    children: dict[str, list[str]] = {}
    for path in members:  # insertion order is forward order of first appearance
        children.setdefault(path.rpartition(".")[0], []).append(path)

    runs: list[Run] = []
    folded: list[str] = []
    used: set[str] = set()
    for parent in sorted(children, key=lambda p: (p.count(".") if p else -1, p)):
        if any(parent == f or parent.startswith(f + ".") for f in folded):
            continue
        kids = children[parent]
        # The ops a parent runs itself between its children's calls; a container that is never
        # called (a ModuleList) has none, so its children's loop is in the nearest scope that has.
        above = parent
        while above and above not in loose:
            above = above.rpartition(".")[0]
        own = [k for k in loose.get(above, []) if k not in used]
        # Loose ops join the call they feed (x[t] before it) or the call they read (h * 0.9 after it):
        # whichever folds more (a step's first call has nothing before it to read).
        found = max((_scan(trace, g, pos, kids, members, shared, called, _attach_glue(g, own, kids, members, forward))
                     for forward in (False, True)), key=lambda rs: sum(len(r.members) for r in rs))
        for run in found:
            run.parent = parent
            runs.append(run)
            used.update(run.members)
            folded.extend(kid for u in run.units for kid in u)
    return runs


def _scan(trace: Trace, g: object, pos: dict[str, int], kids: list[str], members: dict[str, list[str]],
          shared: set[str], called: set[str], glue: dict[str, list[str]]) -> list[Run]:
    """The runs among ``kids`` (sibling scopes in forward order), each unit with its glue.

    A unit of several siblings is a loop's step, so each of them must be a call of a module
    called again (``cell``, ``head``); distinct layers fold one by one (``Linear, Sigmoid``
    pairs in a Sequential stay apart: each layer is its own)."""
    unit_keys = {kid: sorted(members[kid] + glue.get(kid, []), key=pos.__getitem__) for kid in kids}
    sigs: dict[str, tuple] = {}

    def sig(kid: str) -> tuple:
        if kid not in sigs:
            sigs[kid] = (trace.modules.get(module_of(kid)), signature(trace, [k for k in unit_keys[kid] if k not in shared]))
        return sigs[kid]

    runs: list[Run] = []
    i = 0
    while i < len(kids):
        best: tuple[int, int] | None = None  # (period, units)
        for p in range(1, MAX_PERIOD + 1):
            if i + 2 * p > len(kids) or (p > 1 and not all(module_of(k) in called for k in kids[i : i + p])):
                break
            n = 1
            while i + (n + 1) * p <= len(kids):
                a, b = kids[i + (n - 1) * p : i + n * p], kids[i + n * p : i + (n + 1) * p]
                if not (all(sig(x) == sig(y) for x, y in zip(a, b)) and _feeds(g, unit_keys, a, b, shared)):
                    break
                n += 1
            if n >= 2 and (best is None or n * p > best[0] * best[1]):
                best = (p, n)
        if best is None:
            i += 1
            continue
        p, n = best
        units = [tuple(kids[i + u * p : i + (u + 1) * p]) for u in range(n)]
        keys = sorted((k for u in units for kid in u for k in unit_keys[kid]), key=pos.__getitem__)
        outputs = [output_of(trace, [k for kid in u for k in unit_keys[kid]]) for u in units]
        runs.append(Run("", units, keys, outputs, sum(1 for k in keys if k in shared)))
        i += p * n
    return runs


def _attach_glue(g: object, loose: list[str], kids: list[str], members: dict[str, list[str]], forward: bool) -> dict[str, list[str]]:
    """The parent's own ops attached to a child scope: the one child they feed (``x[t]``,
    ``cat([x, h])`` before a call), or with ``forward`` the latest child they read from (``h * 0.9``
    after a call; a residual stream's ``x + block(x)`` reads the previous step too). Walked against
    the data flow (with it for ``forward``), so a chain of them attaches whole."""
    index = {kid: i for i, kid in enumerate(kids)}
    owner = {k: kid for kid in kids for k in members[kid]}
    attached: dict[str, list[str]] = {}
    for k in (loose if forward else reversed(loose)):
        if forward:
            # (reading a parameter or an input as well does not tie an op to a group)
            groups = {owner.get(x) for x in g.predecessors(k) if g.nodes[x]["kind"] == "op"}  # type: ignore[attr-defined]
        else:
            groups = {owner.get(x) for x in g.successors(k)}  # type: ignore[attr-defined]
        if not groups or None in groups or (len(groups) > 1 and not forward):
            continue
        kid = max(groups, key=index.__getitem__)  # type: ignore[arg-type]
        owner[k] = kid
        attached.setdefault(kid, []).append(k)
    return attached


def _feeds(g: object, unit_keys: dict[str, list[str]], a: list[str], b: list[str], shared: set[str]) -> bool:
    """Unit a feeds unit b directly (consecutive in the data flow), and nothing outside both reads
    from a and feeds b (that would draw an edge out of the fold and back into it)."""
    inside_a = {k for kid in a for k in unit_keys[kid] if k not in shared}
    inside_b = {k for kid in b for k in unit_keys[kid]}
    fed = False
    for k in inside_a:
        for s in g.successors(k):  # type: ignore[attr-defined]
            if s in inside_b:
                fed = True
            elif s not in inside_a and any(t in inside_b for t in g.successors(s)):  # type: ignore[attr-defined]
                return False
    return fed


def _called_again(members: dict[str, list[str]]) -> set[str]:
    """The module paths called more than once (``cell`` with scopes ``cell``, ``cell#2`` …)."""
    return {module_of(path) for path in members if module_of(path) != path}


def _shared_params(trace: Trace, members: dict[str, list[str]]) -> set[str]:
    """The parameters (and other leaves) of each module called more than once: all its calls share them."""
    calls: dict[str, int] = {}
    for path in members:
        module = module_of(path)
        calls[module] = calls.get(module, 0) + 1
    return {k for module, c in calls.items() if c > 1 and module in members for k in members[module]
            if trace.node(k).kind in ("param", "leaf") and trace.node(k).module == module}
