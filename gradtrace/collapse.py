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
from ._fold import call_number, find_runs, module_of, output_of as _output_of
from .records import TensorStats

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
        if module_of(first) == module_of(last):  # the calls of one module, or the steps of a loop ("cell + head")
            # (the last part's call number goes into the range; a parent's stays: enc#2.cell -> enc (call 2).cell)
            name = " + ".join(re.sub(r"#\d+$", "", part) for part in first.split(" + "))
            return f"{name} (calls {call_number(first.split(' + ')[0])}–{call_number(last.split(' + ')[0])})"
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


def _fold_runs(trace: Trace, order: list[str], blocks: dict[str, Block], owner: dict[str, str]) -> None:
    """One block per run of repeats (see :func:`gradtrace._fold.find_runs`): identical layers,
    the calls of a module in a loop, or the steps of a loop."""
    for run in find_runs(trace, order):
        first = run.units[0]
        cls = " + ".join(trace.modules.get(module_of(s), "") for s in first) if len(first) > 1 else trace.modules.get(module_of(first[0]), "")
        blk = Block(_block_key(trace, "fold", first[0]), [" + ".join(u) for u in run.units], cls, run.members, run.outputs[-1],
                    [_norm(trace.node(o).grad) for o in run.outputs], parent=run.parent, shared=run.shared)
        blocks[blk.key] = blk
        for k in run.members:
            owner[k] = blk.key


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
