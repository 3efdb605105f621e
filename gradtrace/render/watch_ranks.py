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


def _module_table(out_rms: dict[str, Any]) -> str:
    rows = []
    for path, values in (out_rms.get("module") or {}).items():
        nums = [v for v in (_num(x) for x in values) if v is not None]
        if nums:
            worst = max(nums, key=lambda v: math.inf if math.isnan(v) else v)
            rows.append((worst, str(path)))
    if not rows:
        return '<p class="muted">no sampled step shared by two ranks</p>'
    rows.sort(key=lambda r: -(math.inf if math.isnan(r[0]) else r[0]))
    body = "".join(f"<tr><td>{html.escape(p or '(the model)')}</td><td>{'NaN' if math.isnan(v) else f'{v:.3g}'}</td></tr>"
                   for v, p in rows[:8])
    return f"<table><tr><th>module</th><th>largest (max − min) / mean over ranks</th></tr>{body}</table>"


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
            notes.append(f"<li>rank {rank}: {html.escape(str(r['why']))}</li>")
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
    name = html.escape(str(doc.get("script") or "run"))
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
<div><h3>local loss across ranks: <span class="lo">lowest</span> and <span class="hi">highest</span> rank, every step</h3>{_loss_svg(spread.get("loss") or {})}</div>
<div><h3>module outputs that differ most between ranks (output RMS, sampled steps)</h3>{_module_table(spread.get("out_rms") or {})}</div>
</section>
{f'<ul id="notes">{"".join(notes)}</ul>' if notes else ""}
{"".join(frames)}
<script>{asset("watch_ranks.js")}</script>
</body>
</html>
"""
