"""The replay page's groups: modules as nested groups, runs of identical siblings folded, big flat groups cut.

A trace node sits in the group of its scope (``enc#2.attn``: the second call of
``enc``, its ``attn``), nested one group per path part. Runs of identical
sibling modules (a transformer's layers) are folded into one ``×K`` group whose
members are those modules, found by :mod:`gradtrace.collapse`'s fold logic at
every level, so the page and the SVG agree on what a repeat is; a fold holds
the ops between its calls too (a loop's relu, a residual add). A group joined
to itself through its siblings (a ModuleList the parent loops over, a module
whose children the parent calls) is dissolved into its parent, its name kept
in its children's titles: as one box it would draw a chain as parallel
branches with edges running back up. A group with
more than :data:`RUN_MAX` direct children (a flat script of 30,000 ops) has
them cut into consecutive runs in forward order, so that no group the page lays
out at once is bigger than that. Plain data out; no torch, no drawing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..collapse import Block, _fold_runs

if TYPE_CHECKING:
    from ..steptrace import Trace

__all__ = ["RUN_MAX", "Group", "Hierarchy", "build_hierarchy"]

#: The most direct children a group keeps before they are cut into runs.
RUN_MAX = 120


@dataclass
class Group:
    """One group of the page: a module call (``module``), a fold of K of them (``fold``), a run of items (``run``) or the whole trace (``root``)."""

    kind: str
    path: str  # scope path for a module; the first member's for a fold; "" for the root
    title: str
    parent: int  # index of the parent group; -1 for the root
    cls: str = ""
    repeat: int = 1
    first: int = 0  # the smallest forward index of a node inside: children are ordered by it
    paths: list[str] = field(default_factory=list)  # a fold's member module paths


@dataclass
class Hierarchy:
    groups: list[Group]  # groups[0] is the root
    node_group: list[int]  # forward index of a node -> the group it sits in directly


def _scope_parts(scope: str) -> list[str]:
    return scope.split(".") if scope else []


def _folds(trace: Trace, order: list[str]) -> list[Block]:
    """Every fold, at every level: collapse's runs among ``order``, then inside each folded member."""
    found: list[Block] = []
    todo = [order]
    while todo:
        keys = todo.pop()
        blocks: dict[str, Block] = {}
        _fold_runs(trace, keys, blocks, {})
        for blk in blocks.values():
            found.append(blk)
            # A member may hold a run of its own (a stage of equal blocks): look inside each, in one pass.
            # Members are told apart by scope, not module: the calls of one RNN cell (cell, cell#2, ...)
            # are one module, and looking "inside" all of them at once found the same fold again, forever.
            depth = blk.paths[0].count(".") + 1
            inside: dict[str, list[str]] = {p: [] for p in blk.paths}
            for k in blk.members:
                n = trace.node(k)
                prefix = ".".join((n.scope or n.module).split(".")[:depth])
                if prefix in inside:
                    inside[prefix].append(k)
            todo.extend(sub for sub in inside.values() if len(sub) < len(keys))
    return found


def build_hierarchy(trace: Trace, order: list[str], title: str = "model") -> Hierarchy:
    """Groups of ``trace`` with ``order`` (the forward order) giving each node's index."""
    from .flow import scope_title

    groups: list[Group] = [Group("root", "", title, -1)]
    by_scope: dict[str, int] = {"": 0}
    node_group: list[int] = []
    for i, key in enumerate(order):
        n = trace.node(key)
        parts = _scope_parts(n.scope or n.module)
        parent = 0
        for d in range(1, len(parts) + 1):
            path = ".".join(parts[:d])
            g = by_scope.get(path)
            if g is None:
                g = by_scope[path] = len(groups)
                module = ".".join(p.partition("#")[0] for p in parts[:d])
                groups.append(Group("module", path, scope_title(parts[d - 1]), parent, trace.modules.get(module, ""), first=i))
            parent = g
        node_group.append(parent)

    # Folds: the member modules' groups move under one ×K group (the scope of a member's first node names it).
    scope_of_module: dict[str, str] = {}
    for key in order:
        n = trace.node(key)
        mparts, sparts = _scope_parts(n.module), _scope_parts(n.scope or n.module)
        if len(mparts) == len(sparts):
            for d in range(1, len(mparts) + 1):
                scope_of_module.setdefault(".".join(mparts[:d]), ".".join(sparts[:d]))
    index = {k: i for i, k in enumerate(order)}
    edges = [(index[e.src], index[e.dst]) for e in trace.edges if e.src in index and e.dst in index]
    # A container the parent loops over (a ModuleList) or whose children the parent calls itself is
    # joined through the parent's own ops: drawn as one box, its members would sit side by side with
    # those ops beside them, a chain drawn as parallel branches. Such groups go before folding, so
    # that a loop's calls and the ops between them fold together under the parent.
    dead = _untangle(groups, node_group, edges)
    for blk in sorted(_folds(trace, order), key=lambda b: (b.paths[0].count("."), b.paths[0])):
        # A fold's paths are module paths (h.0, h.1) or, for the calls of one module, scopes (cell, cell#2).
        members = [by_scope.get(p) or by_scope.get(scope_of_module.get(p, ""), 0) for p in blk.paths]
        parents = {groups[m].parent for m in members}
        if 0 in members or dead & set(members) or len(set(members)) != len(members) or len(parents) != 1:
            continue  # a member that is no group of its own (or spread out): leave them unfolded
        first, up = groups[members[0]], groups[members[0]].parent
        fold = len(groups)
        groups.append(Group("fold", first.path, f"{first.title} … {groups[members[-1]].title}", first.parent, first.cls,
                            repeat=len(members), first=first.first, paths=list(blk.paths)))
        for m in members:
            groups[m].parent = fold
        # The ops the fold counts between its calls (a loop's relu, a residual add) fold with them:
        # left in the parent, they would join the fold to itself through the parent.
        for k in blk.members:
            if node_group[index[k]] == up:
                node_group[index[k]] = fold
    dead |= _untangle(groups, node_group, edges)  # (a fold still joined through its parent is undone)
    groups, node_group = _drop(groups, node_group, dead)
    _cut_runs(groups, node_group)
    return Hierarchy(groups, node_group)


def _untangle(groups: list[Group], node_group: list[int], edges: list[tuple[int, int]]) -> set[int]:
    """Dissolve every group that an edge path leaves and re-enters through its siblings; return them.

    Each group is laid out as one box among its siblings, so its siblings' edges must form no cycle
    through it. In a cycle, the groups that hold no node of their own (a container never called
    itself: ModuleList, ModuleDict, a module whose children the parent calls) go first; where there
    are none, every group of the cycle does. Their children move up one level, and the check is
    repeated (the move can close a cycle one level up). Titles keep the dissolved group's name.
    """
    dead: set[int] = set()
    n = len(node_group)
    while True:
        parent = [g.parent for g in groups]
        depth = [0] * len(groups)
        for j in range(1, len(groups)):
            p, d = parent[j], 0
            while p > 0:
                d, p = d + 1, parent[p]
            depth[j] = d + 1
        # items: node i is i, group j is n + j; each edge seen from the group that holds both ends
        succ: dict[int, set[int]] = {}
        for a, b in edges:
            x, y = n + node_group[a], n + node_group[b]
            xa, yb = a, b
            while depth[x - n] > depth[y - n]:
                xa, x = x, n + parent[x - n]
            while depth[y - n] > depth[x - n]:
                yb, y = y, n + parent[y - n]
            while x != y:
                xa, x, yb, y = x, n + parent[x - n], y, n + parent[y - n]
            if xa != yb:
                succ.setdefault(xa, set()).add(yb)
        cut: set[int] = set()
        direct = set(node_group)  # groups that hold a node of their own
        for comp in _cycles(succ):
            inside = [c - n for c in comp if c >= n]
            hollow = [j for j in inside if j not in direct] if len(inside) > 1 else []
            cut.update(hollow or inside)
        if not cut:
            return dead

        def live(p: int) -> int:
            while p in cut:
                p = groups[p].parent
            return p

        for c in groups:  # children of a dissolved group move to the nearest live group around it
            if c.parent in cut:
                p = c.parent
                while p in cut:
                    if groups[p].kind == "module" and c.kind == "module":
                        c.title = f"{groups[p].title}.{c.title}"
                    p = groups[p].parent
                c.parent = p
        for i, g in enumerate(node_group):
            if g in cut:
                node_group[i] = live(g)
        for j in cut:
            groups[j].parent = -2  # (no longer anyone's parent or child)
        dead |= cut


def _cycles(succ: dict[int, set[int]]) -> list[list[int]]:
    """The strongly connected components of more than one item (Tarjan's, without recursion)."""
    index: dict[int, int] = {}
    low: dict[int, int] = {}
    stack: list[int] = []
    on: set[int] = set()
    found: list[list[int]] = []
    for root in list(succ):
        if root in index:
            continue
        work = [(root, iter(succ.get(root, ())))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(succ.get(w, ()))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(comp)
    return found


def _drop(groups: list[Group], node_group: list[int], dead: set[int]) -> tuple[list[Group], list[int]]:
    """``groups`` without the dissolved ones, every index renumbered."""
    if not dead:
        return groups, node_group
    new = {}
    for j in range(len(groups)):
        if j not in dead:
            new[j] = len(new)
    kept = [groups[j] for j in new]
    for g in kept:
        g.parent = new[g.parent] if g.parent >= 0 else -1
    return kept, [new[g] for g in node_group]


def _cut_runs(groups: list[Group], node_group: list[int]) -> None:
    """Cut every group with more than RUN_MAX direct children into runs of consecutive children."""
    children: dict[int, list[tuple[int, int, int]]] = {}  # group -> (first forward index, 0 node / 1 group, id)
    for i, g in enumerate(node_group):
        children.setdefault(g, []).append((i, 0, i))
    for j, grp in enumerate(groups):
        if grp.parent >= 0:
            children.setdefault(grp.parent, []).append((grp.first, 1, j))
    for g in list(children):
        items = sorted(children[g])
        while len(items) > RUN_MAX:
            count = -(-len(items) // RUN_MAX)  # runs of equal size, none over RUN_MAX; too many runs: cut again
            size = -(-len(items) // count)
            runs = []
            for start in range(0, len(items), size):
                chunk = items[start : start + size]
                r = len(groups)
                groups.append(Group("run", groups[g].path, f"items {start + 1}–{start + len(chunk)} of {len(items)}", g,
                                    first=chunk[0][0]))
                for _, is_group, ident in chunk:
                    if is_group:
                        groups[ident].parent = r
                    else:
                        node_group[ident] = r
                runs.append((chunk[0][0], 1, r))
            items = runs
