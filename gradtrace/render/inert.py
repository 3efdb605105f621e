"""Making every string from a model or a trace file inert before it is drawn.

A trace file is untrusted input and a live model's names are user code, so
every string a renderer shows (labels, module paths, class names, sources,
notes, optimizer settings, dtypes) goes through :func:`printable` once, here,
in :func:`inert_trace`: control characters, ANSI escapes, bidi overrides, line
separators and lone surrogates become visible escapes (``\\x1b``, ``\\u202e``).
That keeps a terminal from obeying them, keeps SVG and HTML valid XML, and
keeps DOT free of the characters that break its syntax. What is left (quotes,
``<``, ``>``, ``&``, backslashes) each format escapes in its own way: DOT in
:mod:`.labels` and :func:`dot_id`, HTML in :mod:`.html`.

Every such string is also cut to :data:`MAX_TEXT` characters here (a hand-edited trace file may
hold a 50,000-character label): Graphviz refuses any string longer than 16,384 characters, a
terminal row or a page is no place for one, and nothing gradtrace records comes near the cap.

Node keys are not rewritten (they name nodes, two keys must stay two): DOT
uses :func:`dot_id`, an injective spelling that is always a plain identifier.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from typing import TYPE_CHECKING, Any

from ..records import OptimizerStep, TensorStats, TraceEdge, TraceNode

if TYPE_CHECKING:
    from ..steptrace import Trace

__all__ = ["MAX_TEXT", "dot_id", "inert_text", "inert_trace", "printable"]

#: The longest string from a trace that is shown; longer ones are cut and say by how much. A source
#: line, a module path or a note is far shorter; twelve such strings, escaped for DOT's HTML labels
#: (up to 6 characters each: ``&quot;``), still fit in Graphviz's 16,384-character strings.
MAX_TEXT = 1000
#: Keys longer than this get a hashed DOT name (Graphviz's identifiers share its string limit).
MAX_ID = 200

# C0 and C1 controls (ESC starts ANSI sequences; NUL and friends are not XML), DEL, line and paragraph
# separators (they end a JavaScript line and a terminal's), bidi embeddings/overrides/isolates (they
# reorder what a reader sees), lone surrogates (not encodable) and U+FFFE/U+FFFF (not XML characters).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff\ufffe\uffff]")
_PLAIN_ID = re.compile(r"[A-Za-z][A-Za-z0-9]*\Z")
#: Node names the DOT source uses for itself.
RESERVED_IDS = frozenset({"legend"})


def _escape(m: re.Match[str]) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def printable(text: str) -> str:
    r"""``text`` with every character a terminal, XML or DOT would act on spelled out as an escape.

    >>> printable("relu\x1b[31m\n")
    'relu\\x1b[31m\\x0a'
    """
    return _UNSAFE.sub(_escape, text)


def inert_text(text: str) -> str:
    """``text`` made :func:`printable` and cut to :data:`MAX_TEXT` characters (the cut says how many
    were left out). Cut after escaping, so the cap holds for what is shown; an escape such as
    ``\\x1b`` may be cut short, which leaves plain characters, never an escape for a format.

    >>> len(inert_text("x" * 5000)) <= MAX_TEXT
    True
    """
    text = printable(text)
    if len(text) <= MAX_TEXT:
        return text
    kept = MAX_TEXT - 40  # room for the tail, which is at most 40 characters
    return text[:kept] + f"… ({len(text) - kept:,} more characters)"


def dot_id(key: str) -> str:
    """The DOT node name of item ``key``: ``key`` itself when it is a plain identifier (``op3``,
    ``param0``), else ``_x`` and its UTF-8 bytes in hex, so every key gets its own name, never one
    that DOT reads as HTML, a port (``a:b``), a keyword or an escape.

    >>> dot_id("op3"), dot_id("a:b")
    ('op3', '_x613a62')
    """
    if len(key) > MAX_ID:  # _h and a SHA-256: a name Graphviz accepts, distinct from every other key's
        return "_h" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    if _PLAIN_ID.match(key) and key not in RESERVED_IDS:
        return key
    return "_x" + key.encode("utf-8", "surrogatepass").hex()


def _stats(s: TensorStats | None) -> TensorStats | None:
    if s is None or not (_needs(s.dtype) or _needs(s.device)):
        return s
    return dataclasses.replace(s, dtype=inert_text(s.dtype), device=inert_text(s.device))


def _value(v: Any) -> Any:
    """Any field's value, its strings made printable (stats' dtype and device too, tuples item by item)."""
    if isinstance(v, str):
        return inert_text(v)
    if isinstance(v, TensorStats):
        return _stats(v)
    if isinstance(v, tuple):
        return tuple(_value(x) for x in v)
    if dataclasses.is_dataclass(v) and not isinstance(v, type):  # a record inside a node (its reduced gradient)
        return dataclasses.replace(v, **{f.name: _value(getattr(v, f.name)) for f in dataclasses.fields(v)})
    return v


def _dirty(record: Any, fields: list[dataclasses.Field]) -> bool:
    out: list[str] = []
    for f in fields:
        _texts(getattr(record, f.name), out)
    return any(_needs(x) for x in out)


def _needs(text: str) -> bool:
    """``text`` would change in :func:`inert_text`."""
    return len(text) > MAX_TEXT or _UNSAFE.search(text) is not None


def _node(n: TraceNode) -> TraceNode:
    # Every field, not a list of names: a string field added to the records later is covered too.
    if not _dirty(n, _NODE_FIELDS):
        return n
    return dataclasses.replace(n, **{f.name: _value(getattr(n, f.name)) for f in _NODE_FIELDS})


def _edge(e: TraceEdge) -> TraceEdge:
    if not _dirty(e, _EDGE_FIELDS):
        return e
    return dataclasses.replace(e, **{f.name: _value(getattr(e, f.name)) for f in _EDGE_FIELDS})


#: The fields shown as text; keys name nodes and stay exact (DOT spells them with dot_id()).
_NODE_FIELDS = [f for f in dataclasses.fields(TraceNode) if f.name != "key"]
_EDGE_FIELDS = [f for f in dataclasses.fields(TraceEdge) if f.name not in ("src", "dst")]


def _texts(v: Any, out: list[str]) -> None:
    if isinstance(v, str):
        out.append(v)
    elif isinstance(v, TensorStats):
        out += (v.dtype, v.device)
    elif isinstance(v, tuple):
        for x in v:
            _texts(x, out)
    elif dataclasses.is_dataclass(v) and not isinstance(v, type):
        for f in dataclasses.fields(v):
            _texts(getattr(v, f.name), out)


def _strings(trace: Trace) -> list[str]:
    out: list[str] = [*trace.modules.keys(), *trace.modules.values(), *trace.notes]
    if trace.optimizer is not None:
        out.append(trace.optimizer.name)
        out += [x for kv in trace.optimizer.hyperparameters for x in kv]
    for n in trace.nodes:
        for f in _NODE_FIELDS:
            _texts(getattr(n, f.name), out)
    for e in trace.edges:
        for f in _EDGE_FIELDS:
            _texts(getattr(e, f.name), out)
    return out


def inert_trace(trace: Trace) -> Trace:
    """``trace`` with every displayed string passed through :func:`inert_text` (printable, capped); ``trace`` itself
    (no copy, so no second graph to build) when nothing needed it, as for every ordinary model."""
    if not any(_needs(x) for x in _strings(trace)):
        return trace
    from ..steptrace import Trace as TraceType

    opt = trace.optimizer
    return TraceType(
        nodes=tuple(_node(n) for n in trace.nodes),
        edges=tuple(_edge(e) for e in trace.edges),
        loss=trace.loss,
        modules={inert_text(k): inert_text(v) for k, v in trace.modules.items()},
        optimizer=None if opt is None else OptimizerStep(
            inert_text(opt.name), opt.lr, tuple((inert_text(k), inert_text(v)) for k, v in opt.hyperparameters)),
        notes=tuple(inert_text(x) for x in trace.notes),
    )
