"""What a diagram shows of a big trace: module collapse, folded repeats, focus on one module.

These are drawing choices, never changes to the recorded graph: a
:class:`View` maps every node of the trace to exactly one displayed item (a
node of its own, or the collapsed module that holds it), so nothing is ever
dropped, only grouped. No torch here.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ._argnames import arg, bare as _bare
from .errors import RenderError
from .records import TensorStats, TraceNode

if TYPE_CHECKING:
    from .steptrace import Trace

__all__ = ["Block", "View", "build_view", "choose_view", "module_nodes", "unknown_module_message"]


@dataclass
class Block:
    """A collapsed module, or a run of K identical sibling modules folded into one item."""

    key: str
    paths: list[str]  # one module path, or K for a fold
    cls: str
    members: list[str]  # node keys inside, forward order
    output: str | None  # the member whose output leaves the block (the last one in forward order)
    block_grad_norms: list[float | None] = field(default_factory=list)  # per folded block, forward order
    parent: str | None = None  # the module cluster it is drawn in; None: the one above its path
    shared: int = 0  # members that are parameters every folded call reads (an unrolled RNN cell's weights)

    @property
    def path(self) -> str:
        """What a reader calls it: ``h.3``, ``h.0 … h.11`` (a fold of layers), ``cell (calls 1–200)``."""
        if len(self.paths) == 1:
            return self.paths[0]
        first, last = self.paths[0], self.paths[-1]
        if _module_of(first) == _module_of(last):  # the calls of one module (an RNN cell over time steps)
            head, _, leaf = first.rpartition(".")
            return f"{head + '.' if head else ''}{_CALL.sub('', leaf)} (calls {_call_number(first)}–{_call_number(last)})"
        return f"{first} … {last}"

    @property
    def repeat(self) -> int:
        return len(self.paths)


@dataclass
class View:
    """Displayed items and the edges between them."""

    items: list[str]  # node keys and block keys, in forward order
    blocks: dict[str, Block]
    owner: dict[str, str]  # every trace node key -> the item that shows it
    edges: list[tuple[str, str, tuple[int, ...] | None]]  # (src item, dst item, shape of the tensor)
    boundary: set[str] = field(default_factory=set)  # items outside a focused module, drawn as context
    depth: int | None = None
    note: str = ""

    def __len__(self) -> int:
        return len(self.items)


def _prefix(module: str, depth: int) -> str | None:
    """The module path a node at ``module`` collapses into at ``depth``, or None when it stays a node."""
    if not module:
        return None
    parts = module.split(".")
    if len(parts) <= depth:
        return None
    return ".".join(parts[: depth + 1])


def max_module_depth(trace: Trace) -> int:
    return max((len(n.module.split(".")) for n in trace.nodes if n.module), default=0)


def _signature(trace: Trace, members: list[str]) -> tuple:
    """What makes two blocks 'the same structure': the sequence of their ops and parameter shapes."""
    sig = []
    for k in members:
        n = trace.node(k)
        shape = n.value.shape if n.value is not None else None
        sig.append((n.kind, n.label.rpartition(".")[2] if n.kind == "param" else n.label, shape))
    return tuple(sig)


def module_nodes(trace: Trace, module: str) -> set[str]:
    """The keys of the nodes inside ``module`` (a path such as ``encoder.layer.3``), at any depth.

    Raises RenderError when there are none, naming the nearest module paths and those at the
    same depth (``transformer.h.9`` in a 4-layer model: ``transformer.h.0`` … ``transformer.h.3``).
    """
    inside = {n.key for n in trace.nodes if n.module == module or n.module.startswith(module + ".")}
    if not inside:
        raise RenderError(unknown_module_message(trace, module))
    return inside


def _sort_key(path: str) -> list[tuple[int, int | str]]:
    """``h.10`` after ``h.9``: numeric parts compare as numbers."""
    return [(0, int(p)) if p.isdigit() else (1, p) for p in path.split(".")]


def unknown_module_message(trace: Trace, module: str, limit: int = 12) -> str:
    """Why ``module`` selects nothing, and which module paths do exist: the nearest spellings
    (difflib) and the paths at the same depth, siblings first."""
    known: set[str] = set()
    for n in trace.nodes:
        parts = n.module.split(".") if n.module else []
        known.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    if not known:
        return f"no module {module!r} in this trace: it has no modules (a plain function or a flat script); leave the module out"
    close = difflib.get_close_matches(module, sorted(known), n=6, cutoff=0.5)
    depth = module.count(".")
    parent = module.rpartition(".")[0]
    level = sorted((m for m in known if m.count(".") == depth), key=lambda m: (m.rpartition(".")[0] != parent, _sort_key(m)))
    parts = [f"no module {module!r} in this trace"]
    if close:
        parts.append(f"nearest: {', '.join(close)}")
    if level:
        shown = ", ".join(level[:limit]) + (f", … ({len(level) - limit} more)" if len(level) > limit else "")
        parts.append(f"modules at that depth: {shown}")
    else:
        top = sorted((m for m in known if "." not in m), key=_sort_key)
        parts.append(f"modules nest only {max(m.count('.') for m in known) + 1} deep; top level: {', '.join(top[:limit])}")
    return "; ".join(parts)


def build_view(trace: Trace, depth: int | None = None, fold: bool = True, module: str | None = None) -> View:
    """Group ``trace`` for drawing: modules deeper than ``depth`` collapse, identical runs fold.

    ``depth=None`` draws every node; ``depth=0`` collapses every top-level
    module into one item; ``module`` keeps only that module's nodes, with the
    nodes that feed it or read from it as boundary context.
    """
    if depth is not None and (not isinstance(depth, int) or isinstance(depth, bool) or depth < 0):
        raise RenderError(f"depth must be a non-negative integer or None, got {depth!r}")
    order = trace.forward_order()
    g = trace.graph
    keep = set(order)
    boundary: set[str] = set()
    if module is not None:
        inside = module_nodes(trace, module)
        for k in inside:
            boundary |= {p for p in g.predecessors(k) if p not in inside}
            boundary |= {s for s in g.successors(k) if s not in inside}
        keep = inside | boundary
        order = [k for k in order if k in keep]

    owner: dict[str, str] = {}
    blocks: dict[str, Block] = {}
    # 1. fold runs of identical sibling modules (a transformer's layers), at the shallowest level they occur
    if fold:
        _fold_runs(trace, [k for k in order if k not in boundary], blocks, owner)
    # 2. collapse what lies deeper than depth
    for k in order:
        if k in owner:
            continue
        n = trace.node(k)
        path = None
        if depth is not None and k not in boundary:
            # With a focus, depth counts the levels below the focused module, which itself stays open.
            # By scope, not module: a module called twice (the course Net's pool) is two blocks,
            # pool and pool#2, else one block would both feed and read conv2: a cycle on the page.
            path = _prefix(n.scope or n.module, depth + (len(module.split(".")) if module is not None else 0))
        if path is None:
            owner[k] = k
            continue
        bkey = _block_key(trace, "module", path)
        blk = blocks.get(bkey)
        if blk is None:
            blk = blocks[bkey] = Block(bkey, [path], trace.modules.get(re.sub(r"#\d+(?=\.|$)", "", path), ""), [], None)
        blk.members.append(k)
        owner[k] = bkey
    for blk in blocks.values():
        if blk.output is None:
            blk.output = _output_of(trace, blk.members)
            blk.block_grad_norms = [_norm(trace.node(blk.output).grad)]

    items: list[str] = []
    for k in order:
        item = owner[k]
        if item not in items:
            items.append(item)
    seen: set[tuple[str, str]] = set()
    edges: list[tuple[str, str, tuple[int, ...] | None]] = []
    for e in trace.edges:
        if e.src not in owner or e.dst not in owner:
            continue
        a, b2 = owner[e.src], owner[e.dst]
        if a == b2 or (a, b2) in seen or (e.src in boundary and e.dst in boundary):
            continue
        seen.add((a, b2))
        edges.append((a, b2, g.edges[e.src, e.dst].get("shape")))
    return View(items, blocks, owner, edges, boundary, depth)


def _block_key(trace: Trace, kind: str, path: str) -> str:
    """``module:PATH`` or ``fold:PATH``, primed until no node of the trace has that key (a trace file
    may name a node ``module:fc1``: item keys must stay distinct)."""
    key = f"{kind}:{path}"
    while key in trace._by_key:
        key += "'"
    return key


def _norm(s: TensorStats | None) -> float | None:
    return None if s is None else s.norm


def _output_of(trace: Trace, members: list[str]) -> str:
    """The member whose output leaves the group (the last such op in forward order)."""
    inside = set(members)
    g = trace.graph
    leaving = [k for k in members if any(s not in inside for s in g.successors(k)) or k == trace.loss]
    ops = [k for k in leaving if trace.node(k).kind == "op"] or leaving or members
    return ops[-1]


def _fold_runs(trace: Trace, order: list[str], blocks: dict[str, Block], owner: dict[str, str]) -> None:
    """Fold runs of consecutive, identical sibling groups: modules (``h.0`` … ``h.11``) and calls of
    one module (``cell``, ``cell#2`` … ``cell#200``: an RNN cell unrolled over its time steps).

    A group is a scope (each call of a module reused is its own). Parameters belong to their
    module path, so the weights an unrolled cell shares sit in its first call: they are left out
    of the comparison (every call reads them, none owns them) and folded with the calls.
    """
    g = trace.graph
    members: dict[str, list[str]] = {}  # scope path -> node keys inside it (at any depth), forward order
    for k in order:
        scope = _group_path(trace.node(k))
        if not scope:
            continue
        parts = scope.split(".")
        for i in range(1, len(parts) + 1):
            members.setdefault(".".join(parts[:i]), []).append(k)
    shared = _shared_params(trace, members)
    children: dict[str, list[str]] = {}
    for path in members:  # insertion order is forward order of first appearance
        children.setdefault(path.rpartition(".")[0], []).append(path)
    signatures: dict[str, tuple] = {}

    def same(a: str, b: str) -> bool:
        for p in (a, b):
            if p not in signatures:
                signatures[p] = _signature(trace, [k for k in members[p] if k not in shared])
        return trace.modules.get(_module_of(a)) == trace.modules.get(_module_of(b)) and signatures[a] == signatures[b]

    folded: set[str] = set()
    for parent in sorted(children, key=lambda p: (p.count(".") if p else -1, p)):
        if any(parent == f or parent.startswith(f + ".") for f in folded):
            continue
        run: list[str] = []
        for path in children[parent] + [None]:  # type: ignore[list-item]
            if run and path is not None and same(run[-1], path) and _feeds(trace, g, members, run[-1], path):
                run.append(path)
                continue
            if len(run) >= 2:
                keys = [k for p in run for k in members[p]]
                outputs = [_output_of(trace, members[p]) for p in run]
                blk = Block(_block_key(trace, "fold", run[0]), list(run), trace.modules.get(_module_of(run[0]), ""), keys,
                            outputs[-1], [_norm(trace.node(o).grad) for o in outputs],
                            shared=sum(1 for k in keys if k in shared))
                blocks[blk.key] = blk
                for k in keys:
                    owner[k] = blk.key
                folded.update(run)
            run = [path] if path is not None else []


_CALL = re.compile(r"#\d+(?=\.|$)")


def _module_of(scope: str) -> str:
    """The module path of a scope, call numbers dropped: ``cell#2`` -> ``cell``."""
    return _CALL.sub("", scope)


def _call_number(scope: str) -> int:
    """Which call of its module a scope is: ``cell#7`` -> 7, ``cell`` -> 1."""
    number = scope.rpartition(".")[2].partition("#")[2]
    return int(number) if number.isdigit() else 1


def _group_path(n: TraceNode) -> str:
    """The group a node folds with: an op's scope (its call of a module), anything else's module path."""
    return (n.scope or n.module) if n.kind == "op" else n.module


def _shared_params(trace: Trace, members: dict[str, list[str]]) -> set[str]:
    """The parameters (and other leaves) of each module called more than once: all its calls share them."""
    calls: dict[str, int] = {}
    for path in members:
        module = _module_of(path)
        calls[module] = calls.get(module, 0) + 1
    return {k for module, c in calls.items() if c > 1 and module in members for k in members[module]
            if trace.node(k).kind in ("param", "leaf") and trace.node(k).module == module}


def _feeds(trace: Trace, g: object, members: dict[str, list[str]], a: str, b: str) -> bool:
    """Module a's output reaches module b directly: they are consecutive in the data flow."""
    inside_b = set(members[b])
    return any(s in inside_b for s in g.successors(_output_of(trace, members[a])))  # type: ignore[attr-defined]


def choose_view(trace: Trace, depth: int | None, max_nodes: int | None, fold: bool, module: str | None) -> View:
    """The view to draw: ``depth`` if given, else the deepest that fits ``max_nodes``; says so in ``note``."""
    if max_nodes is not None and (not isinstance(max_nodes, int) or isinstance(max_nodes, bool) or max_nodes < 1):
        raise RenderError(f"max_nodes must be a positive integer or None, got {max_nodes!r}")
    if depth is not None or max_nodes is None:
        view = build_view(trace, depth, fold, module)
        deepest = max_module_depth(trace)
        if depth is not None and deepest <= depth:
            view.note = (f"{arg('depth', depth)} collapses nothing: " + (
                f"the trace has no modules (a plain function or a flat script); without {_bare('depth')}, "
                f"{_bare('max_nodes')} folds runs of ops instead"
                if deepest == 0 else f"its modules nest only {deepest} level{'s' if deepest > 1 else ''} deep"))
        return view
    full = build_view(trace, None, fold, module)
    if len(full) <= max_nodes:
        return full
    deepest = max_module_depth(trace)
    view = full
    for d in range(deepest - 1, -1, -1):
        view = build_view(trace, d, fold, module)
        if len(view) <= max_nodes:
            view.note = f"modules collapsed below depth {d} to fit {arg('max_nodes', max_nodes)} ({len(full)} items in full)"
            return view
    collapsed = "modules collapsed to depth 0 and " if deepest else ""
    runs = fold_op_runs(trace, view, max_nodes)
    if len(runs) <= max_nodes:
        runs.note = (f"{collapsed}runs of top-level ops folded to fit {arg('max_nodes', max_nodes)} ({len(full)} items in full; "
                     + (f"draw one module with {arg('module')}, or " if deepest else "") + f"raise {_bare('max_nodes')} to see every node)")
        return runs
    view.note = (f"collapsed to depth 0 and still {len(view)} items > {arg('max_nodes', max_nodes)}; "
                 f"nothing is dropped: raise {_bare('max_nodes')}, or draw one module with {arg('module')}")
    return view


def fold_op_runs(trace: Trace, view: View, max_nodes: int) -> View:
    """``view`` with its loose top-level nodes grouped into consecutive runs (forward order) of
    equal length, so that the drawing has at most ``max_nodes`` items where it can.

    For a graph without modules (a hand-written function, a flat script) module collapse has
    nothing to group; runs of consecutive nodes are the next best unit. Runs follow forward order,
    so edges between them still point the way data flows.
    """
    loose = [i for i in view.items if i not in view.blocks and i not in view.boundary and not trace.node(i).module]
    room = max_nodes - (len(view) - len(loose))
    if room < 1 or len(loose) <= room:
        return view
    size = -(-len(loose) // room)  # ceil
    owner = dict(view.owner)
    blocks = dict(view.blocks)
    step_of = {k: trace.node(k).forward_step for k in loose}
    for start in range(0, len(loose), size):
        run = loose[start : start + size]
        first, last = trace.node(run[0]).label, trace.node(run[-1]).label
        steps = [s for s in (step_of[k] for k in run) if s is not None]
        span = f"steps {min(steps)}-{max(steps)}" if steps else f"nodes {start}-{start + len(run) - 1}"
        blk = Block(_block_key(trace, "run", run[0]), [f"{span}: {first} … {last}"], "", list(run), None, parent="")
        blk.output = _output_of(trace, blk.members)
        blk.block_grad_norms = [_norm(trace.node(blk.output).grad)]
        blocks[blk.key] = blk
        for k in run:
            owner[k] = blk.key
    items: list[str] = []
    seen_items: set[str] = set()
    for i in view.items:
        item = owner.get(i, i)
        if item not in seen_items:
            seen_items.add(item)
            items.append(item)
    seen: set[tuple[str, str]] = set()
    edges: list[tuple[str, str, tuple[int, ...] | None]] = []
    for a, b, shape in view.edges:
        a, b = owner.get(a, a), owner.get(b, b)
        if a != b and (a, b) not in seen:
            seen.add((a, b))
            edges.append((a, b, shape))
    return View(items, blocks, owner, edges, view.boundary, view.depth)


def fmt_norms(norms: list[float | None], limit: int = 12) -> str:
    shown = ["-" if x is None else ("NaN" if math.isnan(x) else f"{x:.2g}") for x in norms]
    if len(shown) > limit:
        shown = shown[: limit // 2] + ["…"] + shown[-limit // 2 :]
    return ", ".join(shown)
