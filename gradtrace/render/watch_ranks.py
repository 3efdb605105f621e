"""The multi-rank watch page: each rank's watch page behind a rank selector, and the spread across ranks.

Each rank's page is the single-rank page (:func:`.watch_html.to_watch_html`)
unchanged, in its own ``<iframe srcdoc>`` (so the two pages never share a
script scope or element ids); this page adds the rank buttons, a chart of
every step's local loss as the band from the lowest to the highest rank, and
the modules whose output RMS differs most between ranks. The same policy as
every gradtrace page: inline script and style allowed by hash (the frames'
hashes join it: a srcdoc frame takes its parent's policy), no request, user
strings escaped.
"""

from __future__ import annotations

import html
import math
from typing import Any

from .inert import inert_text
from .page import asset, csp, csp_hash
from .watch_html import WatchFileError, _page_hashes, to_watch_html

__all__ = ["to_watch_ranks_html"]

_W, _H = 560, 140


def _num(x: Any) -> float | None:
    if x is None:
        return None
    if isinstance(x, str):
        return {"NaN": math.nan, "inf": math.inf, "-inf": -math.inf}.get(x)
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def _loss_svg(loss: dict[str, Any]) -> str:
    """Every step's lowest and highest local loss over the ranks, as two lines (SVG presentation attributes only)."""
    steps = [s for s in loss.get("steps", []) if isinstance(s, int)]
    lo = [_num(x) for x in loss.get("min", [])]
    hi = [_num(x) for x in loss.get("max", [])]
    points = [(s, a, b) for s, a, b in zip(steps, lo, hi) if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)]
    if len(points) < 2:
        return '<p class="muted">fewer than two steps with a finite loss on two ranks</p>'
    s0, s1 = points[0][0], points[-1][0]
    y0, y1 = min(p[1] for p in points), max(p[2] for p in points)
    sx = (_W - 10) / max(s1 - s0, 1)
    sy = (_H - 10) / (y1 - y0) if y1 > y0 else 1.0

    def line(i: int) -> str:
        return " ".join(f"{5 + (p[0] - s0) * sx:.1f},{_H - 5 - (p[i] - y0) * sy:.1f}" for p in points)

    return (f'<svg width="{_W}" height="{_H}" viewBox="0 0 {_W} {_H}" role="img" aria-label="local loss, lowest and highest rank">'
            f'<polyline points="{line(2)}" fill="none" stroke="#e07b11" stroke-width="1.5"/>'
            f'<polyline points="{line(1)}" fill="none" stroke="#3e4a89" stroke-width="1.5"/>'
            f'<text x="6" y="12" font-size="11" fill="#6b6b6b">{html.escape(f"{y1:.4g}")}</text>'
            f'<text x="6" y="{_H - 8}" font-size="11" fill="#6b6b6b">{html.escape(f"{y0:.4g}")}</text></svg>')


#: Module paths longer than this are cut in the table (the full, escaped path is the cell's title): one
#: 300-character name would otherwise widen the page past the window and squeeze the values column.
_MAX_NAME = 60


def _name_cell(path: str) -> str:
    """A table cell for a module path: escaped as every gradtrace page does (bidi overrides and controls
    spelled out, so ``a\u202eevil`` cannot read as another module), cut with the full path as its title."""
    shown = inert_text(path) if path else "(the model)"
    if len(shown) <= _MAX_NAME:
        return f"<td>{html.escape(shown)}</td>"
    return f'<td title="{html.escape(shown, quote=True)}">{html.escape(shown[:_MAX_NAME - 1])}…</td>'


def _first_nonfinite(steps: list[Any], values: list[Any]) -> int | None:
    """The first step whose value is NaN or infinite (``None``: none is)."""
    for s, v in zip(steps, values):
        x = _num(v)
        if x is not None and not math.isfinite(x) and isinstance(s, int):
            return s
    return None


def _module_table(out_rms: dict[str, Any]) -> str:
    """The modules whose output RMS differs most between ranks, ranked by their largest FINITE spread: one
    NaN step (a rank's output went non-finite) makes that step's spread NaN, and ranking by it would put
    every module first; the step where the spread first went non-finite has its own column."""
    steps = out_rms.get("steps") if isinstance(out_rms.get("steps"), list) else []
    rows: list[tuple[float | None, int | None, str]] = []
    for path, values in (out_rms.get("module") or {}).items():
        if not isinstance(values, list):
            continue
        nums = [v for v in (_num(x) for x in values) if v is not None]
        if nums:
            finite = [v for v in nums if math.isfinite(v)]
            rows.append((max(finite) if finite else None, _first_nonfinite(steps, values), str(path)))
    if not rows:
        return '<p class="muted">no sampled step shared by two ranks</p>'
    rows.sort(key=lambda r: -1.0 if r[0] is None else -r[0])  # (stable: modules with no finite spread last, in path order)
    body = "".join(f"<tr>{_name_cell(p)}<td>{'none finite' if v is None else f'{v:.3g}'}</td>"
                   f"<td>{'-' if bad is None else f'step {bad}'}</td></tr>" for v, bad, p in rows[:8])
    return ("<table><tr><th>module</th><th>largest finite (max − min) / mean over ranks</th>"
            f"<th>first step not finite on a rank</th></tr>{body}</table>")


def _nonfinite_ranks(ranks: list[Any]) -> str:
    """A line per rank whose local loss went NaN or infinite: the first such step (the spread chart stops
    there, as it draws finite losses only)."""
    lines = []
    for r in ranks:
        hist = r.get("history") if isinstance(r, dict) else None
        pairs = hist.get("loss_all") if isinstance(hist, dict) else None
        if not isinstance(pairs, list):
            continue
        ok = [p for p in pairs if isinstance(p, (list, tuple)) and len(p) == 2]
        bad = _first_nonfinite([p[0] for p in ok], [p[1] for p in ok])
        if bad is not None:
            lines.append(f'<li class="bad">rank {r["rank"]}: local loss not finite from step {bad}</li>')
    return f'<ul id="nonfinite">{"".join(lines)}</ul>' if lines else ""


def to_watch_ranks_html(doc: dict[str, Any]) -> str:
    """The page of a ``gradtrace-watch-ranks`` document (``RankHistories.to_dict()``)."""
    if not isinstance(doc, dict) or doc.get("format") != "gradtrace-watch-ranks":
        raise WatchFileError("not a multi-rank watch history (format 'gradtrace-watch-ranks')")
    ranks = doc.get("ranks")
    if not isinstance(ranks, list) or not ranks:
        raise WatchFileError("multi-rank watch history: ranks should be a non-empty JSON array")
    script_src, style_src = {csp_hash(asset("watch_ranks.js"))}, {csp_hash(asset("watch_ranks.css"))}
    buttons, frames, notes = [], [], []
    for r in ranks:
        rank = r.get("rank") if isinstance(r, dict) else None
        if not isinstance(rank, int) or isinstance(rank, bool):
            raise WatchFileError(f"multi-rank watch history: each rank should be an object with an integer rank, found {r!r}")
        status = str(r.get("status", "ok"))
        label = f"rank {rank}" + ("" if status == "ok" else f" ({status})")
        buttons.append(f'<button data-rank="{rank}" class="{html.escape(status)}" aria-pressed="false">{html.escape(label)}</button>')
        if r.get("why"):
            notes.append(f"<li>rank {rank}: {html.escape(inert_text(str(r['why'])))}</li>")  # (an exception's words: user text)
        if r.get("history") is not None:
            page = to_watch_html(r["history"])
            scripts, styles = _page_hashes(page)
            script_src |= scripts
            style_src |= styles
            frames.append(f'<iframe data-rank="{rank}" hidden sandbox="allow-scripts" title="rank {rank}" '
                          f'srcdoc="{html.escape(page, quote=True)}"></iframe>')
        else:
            frames.append(f'<iframe data-rank="{rank}" hidden sandbox="" title="rank {rank}" '
                          f'srcdoc="{html.escape("<p>nothing came from this rank</p>", quote=True)}"></iframe>')
    spread = doc.get("spread") if isinstance(doc.get("spread"), dict) else {}
    name = html.escape(inert_text(str(doc.get("script") or "run")))
    world = html.escape(str(doc.get("world_size", len(ranks))))
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp(sorted(script_src), sorted(style_src))}">
<title>gradtrace watch · {name} · {world} ranks</title>
<style>{asset("watch_ranks.css")}</style>
</head>
<body>
<header><strong>{name}</strong><span class="info">{world} ranks · {html.escape(str(doc.get("every_rule") or ""))}</span>
<span id="ranks">{"".join(buttons)}</span></header>
<section id="spread">
<div><h3>local loss across ranks: <span class="lo">lowest</span> and <span class="hi">highest</span> rank, every step</h3>{_loss_svg(spread.get("loss") or {})}{_nonfinite_ranks(ranks)}</div>
<div><h3>module outputs that differ most between ranks (output RMS, sampled steps)</h3>{_module_table(spread.get("out_rms") or {})}</div>
</section>
{f'<ul id="notes">{"".join(notes)}</ul>' if notes else ""}
{"".join(frames)}
<script>{asset("watch_ranks.js")}</script>
</body>
</html>
"""
