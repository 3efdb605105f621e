"""The replay page's groups: modules as nested groups, runs of identical siblings folded, big flat groups cut.

A trace node sits in the group of its scope (``enc#2.attn``: the second call of
``enc``, its ``attn``), nested one group per path part. Runs of identical
sibling modules (a transformer's layers) are folded into one ``×K`` group whose
members are those modules, found by :mod:`gradtrace.collapse`'s fold logic at
every level, so the page and the SVG agree on what a repeat is. A group with
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
            depth = blk.paths[0].count(".") + 1
            inside: dict[str, list[str]] = {p: [] for p in blk.paths}
            for k in blk.members:
                prefix = ".".join(trace.node(k).module.split(".")[:depth])
                if prefix in inside:
                    inside[prefix].append(k)
            todo.extend(inside.values())
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
    for blk in sorted(_folds(trace, order), key=lambda b: (b.paths[0].count("."), b.paths[0])):
        members = [by_scope.get(scope_of_module.get(p, ""), 0) for p in blk.paths]
        parents = {groups[m].parent for m in members}
        if 0 in members or len(set(members)) != len(members) or len(parents) != 1:
            continue  # a member that is no group of its own (or spread out): leave them unfolded
        first = groups[members[0]]
        fold = len(groups)
        groups.append(Group("fold", first.path, f"{first.title} … {groups[members[-1]].title}", first.parent, first.cls,
                            repeat=len(members), first=first.first, paths=list(blk.paths)))
        for m in members:
            groups[m].parent = fold

    _cut_runs(groups, node_group)
    return Hierarchy(groups, node_group)


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
