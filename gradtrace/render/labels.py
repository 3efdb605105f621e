"""HTML-like labels and tooltips for Graphviz nodes: what each node says, escaped.

Every string that came from user code (module and parameter names, class
names) goes through :func:`h` before it reaches an HTML-like label, and
through :func:`escape_tooltip` before it reaches a tooltip.
"""

from __future__ import annotations

import html

import graphviz
from typing import TYPE_CHECKING, Sequence

from .._argnames import either
from ..collapse import Block, fmt_norms
from ..diagnose import Finding
from ..records import ReducedGrad, TraceNode
from . import fmt
from .flow import scope_title
from .options import RenderOptions
from .style import ALARM, BANDS, MASKED_INF, NO_GRAD, SEVERITY_COLORS, ZERO_GRAD, band_for, text_color

if TYPE_CHECKING:
    from ..steptrace import Trace

__all__ = ["HtmlLabel", "block_label", "block_tooltip", "boundary_label", "cap_text", "caption", "escape_text", "escape_tooltip", "h", "legend", "mark",
           "node_label", "node_tooltip", "nonfinite", "placements_text", "reduced_titles"]

MAX_LEGEND_FINDINGS = 8
#: Graphviz's lexer refuses any string longer than 16,384 characters (a syntax error), so every
#: label and tooltip is kept well under it, whatever the trace holds:
#: a tooltip's text is cut at MAX_TOOLTIP characters before escaping (escaping at most doubles it),
MAX_TOOLTIP = 7000
#: each piece of user text in an HTML label at MAX_LABEL_TEXT (escaping makes a ``"`` six characters),
MAX_LABEL_TEXT = 300
#: a node lists at most MAX_OUTPUTS outputs of a multi-output op (``split`` into 6,000 pieces) and
#: MAX_SUM_LINES of its gradient sums, then says how many more there are,
MAX_OUTPUTS = 4
MAX_SUM_LINES = 4
#: and the legend stops listing findings before it reaches LEGEND_BUDGET characters.
LEGEND_BUDGET = 12000


class HtmlLabel(str):
    """A label gradtrace built as Graphviz HTML (``<<TABLE>…>``), user text escaped inside with
    :func:`h`. Only these reach DOT as HTML: every other value is quoted as a string, whatever
    it looks like (see ``dot._Digraph``)."""

    __slots__ = ()


def cap_text(text: str, limit: int = MAX_TOOLTIP) -> str:
    """``text`` cut to at most ``limit`` characters, saying how much was left out. Cut before any
    escaping, so no escape sequence is ever cut in half (a quoted DOT string ending in a lone
    backslash is a syntax error).

    >>> cap_text("abcdef", 5)
    'a… (5 more characters)'
    """
    if len(text) <= limit:
        return text
    tail_room = 40  # "… (N more characters)" is never longer
    kept = max(limit - tail_room, 1)
    return text[:kept] + f"… ({len(text) - kept:,} more characters)"


def h(text: str, limit: int = MAX_LABEL_TEXT) -> str:
    """Escape text for an HTML-like Graphviz label, cut to ``limit`` characters first (see
    :func:`cap_text`); empty text becomes a no-break space, because Graphviz rejects an empty
    ``<B></B>`` or ``<FONT></FONT>`` as a syntax error. Backslashes are doubled: Graphviz expands
    ``\\N``, ``\\G``, ``\\L``... inside HTML labels too (a label ``\\N`` showed the node's DOT id),
    even when written as ``&#92;``; ``\\\\`` is one backslash."""
    out = html.escape(cap_text(text, limit), quote=True).replace("\\", "\\\\")
    if out.strip("]") == "" and out:  # Graphviz 2.43's HTML lexer fails on text that is only "]"s
        return out.replace("]", "&#93;")
    return out or "&#160;"


def escape_text(text: str) -> str:
    """Escape text for a quoted Graphviz string read once for escapes (a plain label): backslashes are
    escapes there, and a value that looks like ``<...>`` must stay a quoted string, never become an HTML
    label (``graphviz.escape`` marks it so: ``<x> [URL="javascript:..."] <y>`` stays one string).
    Graphviz also decodes HTML entities in quoted strings (``&lt;`` shows ``<``), so every ``&`` is
    written ``&amp;``: the text reads as the user wrote it. Cut to :data:`MAX_TOOLTIP` characters first
    (less when escaping makes it long), so the quoted string stays under Graphviz's limit.

    >>> str(escape_text("a&lt;b"))
    'a&amp;lt;b'
    """
    return _escaped(text, 1)


def escape_tooltip(text: str) -> str:
    """:func:`escape_text` for a tooltip, which dot 2.43 reads for escapes TWICE (every tooltip: node,
    cluster, edge, graph; a label once): its backslashes are doubled once more there, or ``\\N`` in a
    module name shows the node's id and ``\\G`` the graph's
    (:func:`~gradtrace.render.execute.tooltip_passes` asks the installed dot).

    >>> str(escape_tooltip("a&lt;b"))
    'a&amp;lt;b'
    """
    if "\\" not in text:
        return _escaped(text, 1)
    from .execute import tooltip_passes

    return _escaped(text, tooltip_passes())


def _escaped(text: str, passes: int) -> str:
    limit = MAX_TOOLTIP
    while True:
        out = cap_text(text, limit).replace("&", "&amp;")
        for _ in range(passes - 1):
            out = out.replace("\\", "\\\\")
        out = graphviz.escape(out)
        if len(out) <= 2 * MAX_TOOLTIP or limit <= 100:
            return out
        limit //= 2


def _more(items: Sequence[str], limit: int, what: str) -> list[str]:
    """The first ``limit`` of ``items``, and a line saying how many more there are."""
    return list(items[:limit]) + ([f"… {len(items) - limit} more {what}"] if len(items) > limit else [])


def _outputs_lines(prefix: str, items: tuple, limit: int = 3) -> list[str]:
    present = [(i, s) for i, s in enumerate(items) if s is not None]
    if len(items) <= 1:
        return [f"{prefix} {fmt.summary(items[0] if items else None)}"]
    lines = [f"{prefix}[{i}] {fmt.summary(s)}" for i, s in present[:limit]]
    if len(present) > limit:
        lines.append(f"… {len(present) - limit} more outputs")
    return lines or [f"{prefix} -"]


_BADGES = {
    "nan_forward": "NaN starts here", "inf_forward": "inf starts here", "nan_backward": "NaN gradient starts here",
    "inf_backward": "inf gradient starts here", "vanishing": "vanishing gradient", "exploding": "exploding gradient",
    "dead": "dead: all zero", "update_ratio": "update size off", "nan_data": "NaN in the data", "inf_data": "inf in the data",
    "zero_grad": "gradient stops here", "structural_zero": "zero gradient by structure", "masked_inf": "-inf mask (intended)",
    "absorbed_backward": "non-finite gradient made here, absorbed later", "loss_scale": "loss scaled",
}


def nonfinite(n: TraceNode) -> bool:
    """The node holds NaN or inf: in a value, its gradient, or its gradient after the collective
    (an all-reduce spreads one rank's NaN to every rank)."""
    stats = n.values + n.grads + ((n.reduced.stats,) if n.reduced is not None else ())
    return any(s is not None and not s.finite for s in stats)


def placements_text(placements: str) -> str:
    """``(Shard(dim=0),)`` -> ``Shard(dim=0)``: DTensor placements as a label reads them.

    >>> placements_text("(Replicate(), Shard(dim=0))")
    'Replicate(), Shard(dim=0)'
    """
    text = placements.strip()
    if text.startswith("(") and text.endswith(")"):
        text = text[1:-1].rstrip().removesuffix(",")
    return text


def reduced_titles(r: ReducedGrad) -> dict[str, str]:
    """What a parameter's two gradients are called, compact (``local``, ``reduced``, ``shard``, for a
    label) and in full (``local_long``, ``reduced_long``, for a tooltip or the page's panel).

    >>> reduced_titles(ReducedGrad("all_reduce", 1, 2, (3,), None))["reduced"]
    '∇ reduced (all_reduce, avg of 2 ranks)'
    """
    before = "all-reduce" if r.op == "all_reduce" else "reduce-scatter"
    ranks = f"{r.world_size} rank{'s' if r.world_size != 1 else ''}"
    out = {"local": f"∇ local (rank {r.rank})",
           "local_long": f"gradient, local (rank {r.rank}'s own, before the {before})",
           "reduced": f"∇ reduced ({r.op}, avg of {ranks})", "shard": ""}
    if not r.sharded:
        out["reduced_long"] = (f"gradient, reduced (after the {before}: the average over {ranks}, the whole tensor, "
                               "the same on every rank; what the optimizer used)")
        return out
    which = "this rank's shard" if r.shards is None else f"shard {r.shard}/{r.shards}"
    places = placements_text(r.placements)
    out["shard"] = f"{which} of {fmt.shape_of(r.shape)}" + (f", placements {places}" if places else "")
    of = "this rank's shard" if r.shards is None else f"shard {r.shard} of {r.shards} (numbered from 0)"
    out["reduced_long"] = (f"gradient, reduced (after the {before}: the average over {ranks}; rank {r.rank} holds "
                           f"{of} of the full {fmt.shape_of(r.shape)}" + (f", placements {r.placements}" if r.placements else "")
                           + ", what the optimizer used for it; the statistics are of that shard only, no full tensor was gathered)")
    return out


def mark(f: Finding) -> str:
    """⚠ for an alarm or a warning, ⓘ for a note."""
    return "ⓘ" if f.severity == "note" else "⚠"


def node_label(n: TraceNode, options: RenderOptions, is_loss: bool, findings: Sequence[Finding] = (),
               sums: Sequence[str] = (), quiet: bool = False) -> str:
    """One node: header (label, args, backprop step) coloured by gradient magnitude, shape, value, gradient, update.

    ``sums`` are lines saying how the gradient adds up over the node's consumers
    (:func:`~gradtrace.render.flow.grad_sum_lines`), shown under the gradient.
    ``quiet``: the node's infinities are an intended mask (diagnose's ``masked_inf``): a quiet colour, not alarm red.
    """
    color, _ = band_for(n.grad)
    if nonfinite(n):
        color = MASKED_INF if quiet else ALARM
    title = f"<B>{h(n.label)}{' · loss' if is_loss else ''}</B>"
    if n.args:  # the op's constants, in plain type beside its bold name
        title = f"<B>{h(n.label)}</B> {h(n.args)}" + ("<B> · loss</B>" if is_loss else "")
    rows = [_header(color, title, n.backward_step)]
    first = n.value
    if first is not None:
        present = [s for s in n.values if s is not None]
        shapes = fmt.shape(first) if len(n.values) <= 1 else " ".join(fmt.shape(s) for s in present[:MAX_OUTPUTS])
        if len(present) > MAX_OUTPUTS:
            shapes += f" … {len(n.values)} outputs"
        rows.append(_row(f"{shapes} {first.dtype}", 9))
    lines: list[str] = []
    if options.show_values:
        lines += _outputs_lines("value", n.values)
    if options.show_grads and n.kind != "input" and n.reduced is not None:
        # A parameter of a data-parallel run: the rank's own gradient and, beside it, the one after the collective.
        titles = reduced_titles(n.reduced)
        lines.append(f"{titles['local']} {fmt.summary(n.grad)}")
        if titles["shard"]:
            lines += [titles["reduced"], f"{titles['shard']}: {fmt.summary(n.reduced.stats)}"]
        else:
            lines.append(f"{titles['reduced']} {fmt.summary(n.reduced.stats)}")
        lines += _more(sums, MAX_SUM_LINES, "gradient sums (in the tooltip)")
    elif options.show_grads and n.kind != "input":
        lines += _outputs_lines("grad", n.grads)
        lines += _more(sums, MAX_SUM_LINES, "gradient sums (in the tooltip)")
    if n.update is not None:
        lines.append(f"Δw applied {fmt.summary(n.update)}" if n.sgd_update is not None else f"Δw {fmt.summary(n.update)}")
        if n.sgd_update is not None:
            lines.append(f"−lr·grad {fmt.summary(n.sgd_update)}")
        if n.update_ratio is not None:
            lines.append(f"‖Δw‖/‖w‖ {fmt.num(n.update_ratio, 3)}")
    rows += [_row(line) for line in lines]
    rows.append(_badges(findings))
    return _table(rows)


def node_tooltip(n: TraceNode, sums: Sequence[str] = (), sent: Sequence[str] = (), extra: Sequence[str] = ()) -> str:
    """Everything known about a node, one fact per line (hover text in the SVG), escaped.

    ``sums``: how its gradient adds up over its consumers; ``sent``: one line
    per consumer, the gradient sent back along that edge; ``extra``: lines
    added at the end (the findings on the node). A multi-output op lists its
    first outputs and says how many more there are; the whole is cut to
    :data:`MAX_TOOLTIP` characters.
    """
    lines = [f"{n.label}{' ' + n.args if n.args else ''} ({n.kind})"]
    if n.source:
        lines.append(f"source {n.source}")
    if n.grad_fn:
        lines.append(f"grad_fn {n.grad_fn}")
    lines.append(f"module {scope_title(n.scope) if n.scope else (n.module or '(top level)')}")
    lines.append(f"forward step {n.forward_step if n.forward_step is not None else '-'}, backward step {n.backward_step if n.backward_step is not None else '-'}")
    for i, s in enumerate(n.values[:MAX_OUTPUTS]):
        lines.append(f"value{'' if len(n.values) == 1 else f'[{i}]'}:")
        lines += ["  " + x for x in fmt.stats_lines(s)]
    if len(n.values) > MAX_OUTPUTS:
        lines.append(f"… {len(n.values) - MAX_OUTPUTS} more outputs ({len(n.values)} in all)")
    if n.kind != "input":
        titles = reduced_titles(n.reduced) if n.reduced is not None else None
        for i, s in enumerate(n.grads[:MAX_OUTPUTS]):
            lines.append(f"{titles['local_long']}:" if titles else f"grad{'' if len(n.grads) == 1 else f'[{i}]'}:")
            lines += ["  " + x for x in fmt.stats_lines(s)]
        if len(n.grads) > MAX_OUTPUTS:
            lines.append(f"… {len(n.grads) - MAX_OUTPUTS} more output gradients")
        if titles and n.reduced is not None:
            lines.append(f"{titles['reduced_long']}:")
            lines += ["  " + x for x in fmt.stats_lines(n.reduced.stats)]
        lines += _more(sums, 2 * MAX_SUM_LINES, "gradient sums")
        if sent:
            lines.append("gradient sent back along each edge:")
            lines += ["  " + x for x in _more(sent, 2 * MAX_SUM_LINES, "edges")]
    if n.update is not None:
        lines.append("update Δw (applied):")
        lines += ["  " + x for x in fmt.stats_lines(n.update)]
        if n.update_ratio is not None:
            lines.append(f"  ‖Δw‖/‖w‖ {fmt.num(n.update_ratio, 6)}")
    if n.sgd_update is not None:
        lines.append("−lr·grad (plain SGD's step):")
        lines += ["  " + x for x in fmt.stats_lines(n.sgd_update)]
    lines += list(extra)
    return escape_tooltip("\n".join(lines))


def legend(theme: dict[str, str], findings: list[Finding]) -> HtmlLabel:
    cells = []
    for b in BANDS:
        cells.append(f'<TD BGCOLOR="{b.color}"><FONT COLOR="{text_color(b.color)}" POINT-SIZE="9">{h(b.label)}</FONT></TD>')
    extra = [
        (ALARM, "NaN / inf"),
        (ZERO_GRAD, "zero"),
        (NO_GRAD, "none"),
    ]
    for color, text in extra:
        cells.append(f'<TD BGCOLOR="{color}"><FONT COLOR="{text_color(color)}" POINT-SIZE="9">{h(text)}</FONT></TD>')
    n = len(cells)
    rows: list[str] = []
    for f in findings[:MAX_LEGEND_FINDINGS]:
        row = (f'<TR><TD COLSPAN="{n}" ALIGN="LEFT" BGCOLOR="{SEVERITY_COLORS[f.severity]}">'
               f'<FONT COLOR="{text_color(SEVERITY_COLORS[f.severity])}" POINT-SIZE="10">{mark(f)} {h(f.severity)} {h(f.kind)}: '
               f'{h(f.message, 4 * MAX_LABEL_TEXT)}</FONT></TD></TR>')
        if sum(map(len, rows)) + len(row) > LEGEND_BUDGET:  # huge messages (quoting huge names): the rest in the tooltips
            break
        rows.append(row)
    more = len(findings) - len(rows)
    return HtmlLabel(
        f'<<TABLE BORDER="0" CELLBORDER="1" CELLSPACING="0" CELLPADDING="3" COLOR="{theme["cluster"]}">'
        f'<TR><TD COLSPAN="{n}"><FONT COLOR="{theme["text"]}">gradient magnitude (RMS, log scale) · #n = order in backprop</FONT></TD></TR>'
        f"<TR>{''.join(cells)}</TR>"
        f'<TR><TD COLSPAN="{n}"><FONT COLOR="{theme["text"]}" POINT-SIZE="9">'
        "rounded box: op · tan box: parameter · blue box: other tensor requiring grad · dashed box: input"
        "</FONT></TD></TR>" + "".join(rows) + (
            f'<TR><TD COLSPAN="{n}" ALIGN="LEFT"><FONT COLOR="{theme["text"]}" POINT-SIZE="10">… and {more} more findings ({h(either("Trace.diagnose()", "gradtrace check"))})</FONT></TD></TR>'
            if more > 0 else ""
        ) + "</TABLE>>"
    )


def caption(trace: Trace, note: str = "") -> str:
    loss = trace.node(trace.loss)
    parts = [f"loss {loss.label} = {fmt.summary(loss.value)}"]
    if trace.optimizer is not None:
        o = trace.optimizer
        settings = " ".join(f"{k}={v}" for k, v in o.hyperparameters)
        parts.append(f"then {o.name}.step() with lr={fmt.num(o.lr, 6)}" + (f" {settings}" if settings else ""))
    if note:
        parts.append(note)
    return " · ".join(parts) + "".join(f"\nnote: {n}" for n in trace.notes)


def _header(color: str, title_html: str, step: int | None) -> str:
    ink = text_color(color)
    badge = "" if step is None else f'<FONT COLOR="{ink}">#{step}</FONT>'
    # The label cell's right border, in the header's colour, covers the anti-aliased seam that two
    # abutting filled cells show in a PNG (a light vertical line between label and #n).
    return (f'<TR><TD BGCOLOR="{color}" BORDER="1" COLOR="{color}" SIDES="R" ALIGN="LEFT"><FONT COLOR="{ink}">{title_html}</FONT></TD>'
            f'<TD BGCOLOR="{color}" ALIGN="RIGHT">{badge}</TD></TR>')


def _row(text: str, size: int = 10) -> str:
    return f'<TR><TD COLSPAN="2" ALIGN="LEFT"><FONT POINT-SIZE="{size}">{h(text)}</FONT></TD></TR>'


def _badges(findings: Sequence[Finding]) -> str:
    out = []
    for f in findings:
        badge = SEVERITY_COLORS[f.severity]
        out.append(f'<TR><TD COLSPAN="2" ALIGN="LEFT" BGCOLOR="{badge}"><FONT COLOR="{text_color(badge)}" POINT-SIZE="10"><B>{mark(f)} {h(_BADGES.get(f.kind, f.kind))}</B></FONT></TD></TR>')
    return "".join(out)


def _table(rows: list[str]) -> HtmlLabel:
    return HtmlLabel('<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="2">' + "".join(rows) + "</TABLE>>")


def block_first_step(trace: Trace, b: Block) -> int | None:
    steps = [s for s in (trace.node(k).backward_step for k in b.members) if s is not None]
    return min(steps) if steps else None


def block_label(trace: Trace, b: Block, options: RenderOptions, findings: list[Finding]) -> str:
    """A collapsed module: class, path, op count, output value and gradient, gradient norm entering it."""
    out = trace.node(b.output) if b.output else None
    grad = out.grad if out is not None else None
    color, _ = band_for(grad)
    if any(f.alarm for f in findings):
        color = ALARM  # (a -inf attention mask inside is no alarm: only diagnose()'s origins are)
    title = f"<B>{h(scope_title(b.path))}</B>" + (f" <I>{h(b.cls)}</I>" if b.cls else "") + (f" <B>×{b.repeat}</B>" if b.repeat > 1 else "")
    rows = [_header(color, title, block_first_step(trace, b))]
    ops = sum(1 for k in b.members if trace.node(k).kind == "op")
    params = sum(1 for k in b.members if trace.node(k).kind == "param")
    each = " each" if b.repeat > 1 else ""
    own = (params - b.shared) // b.repeat  # an unrolled cell's calls share its weights: not "0 parameters each"
    counts = f"{ops // b.repeat} ops, {own} parameters{each}" if own or not b.shared else f"{ops // b.repeat} ops{each}"
    rows.append(_row(counts + (f", {b.shared} parameters shared by all" if b.shared else ""), 9))
    if out is not None and out.value is not None:
        rows.append(_row(f"out {fmt.shape(out.value)} {out.value.dtype}", 9))
        if options.show_values:
            rows.append(_row(f"value {fmt.summary(out.value)}"))
    if options.show_grads and out is not None:
        rows.append(_row(f"grad {fmt.summary(grad)}"))
        rows.append(_row(f"‖grad‖ entering {fmt.num(grad.norm if grad else None, 3)}"))
    if b.repeat > 1:
        rows.append(_row(f"‖grad‖ per block: {fmt_norms(b.block_grad_norms)}"))
    rows.append(_badges(findings))
    return _table(rows)


def block_tooltip(trace: Trace, b: Block, findings: list[Finding]) -> str:
    lines = [f"{scope_title(b.path)} ({b.cls or 'module'})" + (f" ×{b.repeat}: " + ", ".join(b.paths) if b.repeat > 1 else ""),
             f"{len(b.members)} nodes collapsed; output from {trace.node(b.output).label if b.output else '-'}"]
    if b.repeat > 1:
        lines.append("gradient norm at each block's output, input side first: " + fmt_norms(b.block_grad_norms, limit=1000))
    if b.output:
        lines.append("output value:")
        lines += ["  " + x for x in fmt.stats_lines(trace.node(b.output).value)]
        lines.append("gradient at the output:")
        lines += ["  " + x for x in fmt.stats_lines(trace.node(b.output).grad)]
    lines += [f"{mark(f)} {f.severity} {f.kind}: {f.message}" for f in findings]
    return escape_tooltip("\n".join(lines))


def boundary_label(n: TraceNode, options: RenderOptions) -> str:
    """A node outside a focused module, drawn small: it feeds the module or reads from it."""
    rows = [_header(NO_GRAD, h(n.label), n.backward_step), _row(f"outside: {n.module or 'top level'}", 9)]
    if n.value is not None:
        rows.append(_row(f"{fmt.shape(n.value)} {n.value.dtype}", 9))
    if options.show_grads and n.kind != "input":
        rows.append(_row(f"grad {fmt.summary(n.grad)}"))
    return _table(rows)
