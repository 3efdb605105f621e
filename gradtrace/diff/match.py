"""Which node of trace A is which node of trace B.

Node keys are assigned in capture order, so they say nothing across traces: ``op7`` of one run
is another op after a layer is inserted. Nodes are matched by what they are instead:

1. **Scopes** (a module call: ``blocks.3.attn``, ``pool#2``) of one kind, the same module class
   and path with list indices left out (``blocks.#.attn``), are aligned in the order the
   forward first entered them, so a layer inserted into an ``nn.Sequential`` shifts no other
   pair. Among equally good alignments, the same parameter shapes win, then the same path.
2. **Ops** are aligned within each pair of scopes by their label, in forward order: the k-th
   ``linear`` inside ``blocks.3.attn`` is the k-th one in B too, and a cast that autocast
   inserts, or an op added to a module, is reported alone without shifting the rest. Among
   equally good alignments, the op fed by the same kind of node wins, then the same shape.
3. **Parameters** follow their module's pair and keep their local name (``weight``); what is
   left is matched by full name. Other leaves and inputs match by label.

A model wrapped in one trace only (``DistributedDataParallel``'s ``module.``, a container
around it) has every module path prefixed there; paths are then also compared without the
prefix, and the pairing that matches more ops is kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from .align import align

if TYPE_CHECKING:
    from ..records import TraceNode
    from ..steptrace import Trace

__all__ = ["Matching", "match"]

_CALL = re.compile(r"#\d+$")
_INDEX = re.compile(r"^\d+$")


@dataclass(frozen=True)
class Matching:
    """Pairs of node keys ``(a, b)`` in B's forward order, the keys left over on each side, and
    the module paths paired (``(a_path, b_path)``) or present in one trace only."""

    pairs: tuple[tuple[str, str], ...]
    only_a: tuple[str, ...]
    only_b: tuple[str, ...]
    module_pairs: tuple[tuple[str, str], ...]
    modules_only_a: tuple[str, ...]
    modules_only_b: tuple[str, ...]


def _module_of(scope: str) -> str:
    return ".".join(_CALL.sub("", part) for part in scope.split("."))


def _general(scope: str) -> str:
    """The scope with list indices left out: ``blocks.3.attn#2`` -> ``blocks.#.attn#2``."""
    return ".".join("#" if _INDEX.match(part) else part for part in scope.split("."))


@dataclass
class _Scopes:
    """A trace's op scopes in the order the forward first entered them, as matching sees them."""

    names: list[str]  # scope paths, the wrapper's prefix (if stripped) left out
    ops: list[list[str]]  # each scope's op keys, in forward order
    modules: list[str]  # each scope's module path as recorded (for classes, parameters, module pairs)


def _scopes(trace: Trace, prefix: str = "") -> _Scopes:
    groups: dict[str, list[str]] = {}
    modules: dict[str, str] = {}
    for key in trace.forward_order():
        n = trace.node(key)
        if n.kind == "op":
            scope = n.scope or n.module
            name = _strip(scope, prefix)
            groups.setdefault(name, []).append(key)
            modules.setdefault(name, _module_of(scope))
    return _Scopes(list(groups), list(groups.values()), [modules[s] for s in groups])


def _strip(scope: str, prefix: str) -> str:
    """``scope`` without the wrapper path ``prefix``: ``module.fc1`` -> ``fc1``, ``module`` -> ``""``."""
    if not prefix:
        return scope
    if scope == prefix:
        return ""
    if scope.startswith(prefix + "."):
        return scope[len(prefix) + 1:]
    return scope


def _wrapper(trace: Trace) -> str:
    """The module path every module of the trace lies in (``module`` under DDP's wrapper), or ``""``."""
    paths = [p.split(".") for p in trace.modules if p]
    if not paths:
        return ""
    common = paths[0]
    for p in paths[1:]:
        k = 0
        while k < min(len(common), len(p)) and common[k] == p[k]:
            k += 1
        common = common[:k]
    return ".".join(common)


def _param_shapes(trace: Trace) -> dict[str, tuple]:
    """Module path -> the (local name, shape) of its parameters, a fingerprint of a layer's size."""
    out: dict[str, list] = {}
    for n in trace.nodes:
        if n.kind == "param":
            shape = n.value.shape if n.value is not None else None
            out.setdefault(n.module, []).append((_local(n), shape))
    return {k: tuple(sorted(v, key=repr)) for k, v in out.items()}


def _local(n: TraceNode) -> str:
    """A parameter's name within its module: ``fc1.weight`` in ``fc1`` -> ``weight``."""
    if n.module and n.label.startswith(n.module + "."):
        return n.label[len(n.module) + 1:]
    return n.label


def _feeds(trace: Trace) -> dict[str, tuple]:
    """Node key -> what feeds it: the sorted (kind, label, module kind) of its inputs in the graph."""
    g = trace.graph
    out = {}
    for key in g.nodes:
        parents = (trace.node(p) for p in g.predecessors(key))
        out[key] = tuple(sorted((p.kind, p.label, _general(p.scope or p.module)) for p in parents))
    return out


def _shape(n: TraceNode) -> tuple | None:
    return n.value.shape if n.value is not None else None


def match(a: Trace, b: Trace) -> Matching:
    """Pair the nodes of ``a`` and ``b`` (see the module's docstring for how)."""
    # A model wrapped in one trace only (DDP's ``module.``, an nn.Sequential around it) has every path
    # prefixed there: its paths are also compared without the prefix, and the better pairing is kept.
    pairs, module_map = _match_ops(a, b, _scopes(a), _scopes(b))
    wa, wb = _wrapper(a), _wrapper(b)
    if wa != wb:
        unwrapped = _match_ops(a, b, _scopes(a, wa), _scopes(b, wb))
        if len(unwrapped[0]) > len(pairs):
            pairs, module_map = unwrapped
    _match_params(a, b, module_map, pairs)
    _match_by_label(a, b, pairs, kinds=("leaf", "input", "param"))

    taken = set(pairs.values())
    b_order = b.forward_order()
    back = {v: k for k, v in pairs.items()}
    ordered = tuple((back[k], k) for k in b_order if k in back)
    only_a = tuple(k for k in a.forward_order() if k not in pairs)
    only_b = tuple(k for k in b_order if k not in taken)
    return Matching(ordered, only_a, only_b, *_modules(a, b, module_map))


def _match_ops(a: Trace, b: Trace, sa: _Scopes, sb: _Scopes) -> tuple[dict[str, str], dict[str, str]]:
    """Op pairs (A key -> B key) by aligning the scopes, then the ops within each pair of scopes;
    and the module pairs (A path -> B path) that the scope pairs imply."""
    pairs: dict[str, str] = {}
    shapes_a, shapes_b = _param_shapes(a), _param_shapes(b)
    feeds_a, feeds_b = _feeds(a), _feeds(b)
    tok_a = [(_general(s), a.modules.get(m, "") if s else "") for s, m in zip(sa.names, sa.modules)]
    tok_b = [(_general(s), b.modules.get(m, "") if s else "") for s, m in zip(sb.names, sb.modules)]

    def scope_bonus(i: int, j: int) -> int:
        # The layer's size outweighs its path: after a layer is inserted into a Sequential, the old
        # last layer (6 -> 3) is the new last layer, not the inserted one (6 -> 6) now at its index.
        return 2 * (shapes_a.get(sa.modules[i]) == shapes_b.get(sb.modules[j])) + (sa.names[i] == sb.names[j])

    module_map: dict[str, str] = {}
    for i, j in _align_scopes(tok_a, tok_b, scope_bonus):
        ops_a, ops_b = sa.ops[i], sb.ops[j]
        if sa.modules[i] and sb.modules[j]:
            module_map.setdefault(sa.modules[i], sb.modules[j])
        na, nb = [a.node(k) for k in ops_a], [b.node(k) for k in ops_b]

        def op_bonus(x: int, y: int, na: list = na, nb: list = nb) -> int:
            # Among ops with one label, the one fed by the same kind of node wins: of two relus in B,
            # A's relu after fc1 is the one after fc1, not the one after an inserted layer.
            return (int(feeds_a[na[x].key] == feeds_b[nb[y].key]) + int(_shape(na[x]) == _shape(nb[y]))
                    + int(na[x].grad_fn == nb[y].grad_fn))

        for x, y in align([n.label for n in na], [n.label for n in nb], op_bonus, full=3):
            pairs[ops_a[x]] = ops_b[y]
    return pairs, module_map


def _align_scopes(tok_a: list[tuple[str, str]], tok_b: list[tuple[str, str]],
                  bonus: Callable[[int, int], int]) -> list[tuple[int, int]]:
    """Scope index pairs: scopes of one kind (``layers.#`` Linear) aligned in forward order, each kind
    on its own. Kinds are not ordered among themselves: the top level and a parent module re-enter
    between their children, so when a child is added or removed (a ``detach()`` drops a whole
    branch from the graph) the order of first entry across kinds can change."""
    by_a: dict[tuple[str, str], list[int]] = {}
    by_b: dict[tuple[str, str], list[int]] = {}
    for i, t in enumerate(tok_a):
        by_a.setdefault(t, []).append(i)
    for j, t in enumerate(tok_b):
        by_b.setdefault(t, []).append(j)
    out = []
    for t, ia in by_a.items():
        jb = by_b.get(t)
        if jb:
            # Every item of the group has the same token: the alignment pairs as many as it can, in
            # order, and the bonus (same parameter shapes, same path) picks which ones.
            def here(x: int, y: int, ia: list[int] = ia, jb: list[int] = jb) -> int:
                return bonus(ia[x], jb[y])

            out += [(ia[x], jb[y]) for x, y in align([t] * len(ia), [t] * len(jb), here, full=3)]
    return out


def _match_params(a: Trace, b: Trace, module_map: dict[str, str], pairs: dict[str, str]) -> None:
    """A parameter follows its module's pair (``layers.1.weight`` -> ``layers.2.weight`` when a layer
    was inserted before it), keeping its local name."""
    b_params = {(n.module, _local(n)): n.key for n in b.nodes if n.kind == "param"}
    taken = set(pairs.values())
    for n in a.nodes:
        if n.kind != "param" or n.module not in module_map:
            continue
        key = b_params.get((module_map[n.module], _local(n)))
        if key is not None and key not in taken:
            pairs[n.key] = key
            taken.add(key)


def _match_by_label(a: Trace, b: Trace, pairs: dict[str, str], kinds: tuple[str, ...]) -> None:
    """The k-th unmatched node of a kind with a label in A is the k-th such node in B."""
    taken = set(pairs.values())
    left_b: dict[tuple[str, str], list[str]] = {}
    for key in b.forward_order():
        n = b.node(key)
        if n.kind in kinds and key not in taken:
            left_b.setdefault((n.kind, n.label), []).append(key)
    for key in a.forward_order():
        n = a.node(key)
        if n.kind in kinds and key not in pairs:
            queue = left_b.get((n.kind, n.label))
            if queue:
                pairs[key] = queue.pop(0)


def _all_modules(t: Trace) -> list[str]:
    """Every module path the trace knows (its module table and its nodes' modules), sorted."""
    paths = set(t.modules) | {n.module for n in t.nodes if n.module}
    paths.discard("")
    return sorted(paths)


def _modules(a: Trace, b: Trace, module_map: dict[str, str]) -> tuple[tuple, tuple, tuple]:
    """Module pairs: those the scope alignment paired, then the same path in both (a container
    that runs no op of its own); whatever is left is present in one trace only."""
    mods_a, mods_b = _all_modules(a), _all_modules(b)
    known_b = set(mods_b)
    mapping = {k: v for k, v in module_map.items() if k and v}
    used = set(mapping.values())
    for m in mods_a:
        if m not in mapping and m in known_b and m not in used:
            mapping[m] = m
            used.add(m)
    pairs = tuple(sorted(mapping.items()))
    only_a = tuple(m for m in mods_a if m not in mapping)
    only_b = tuple(m for m in mods_b if m not in used)
    return pairs, only_a, only_b
