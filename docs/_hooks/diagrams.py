"""MkDocs hook: gradtrace's diagrams inline, legible where they stand, and a usable API page.

1. Every ``<img>`` of an SVG under ``images/`` becomes the SVG itself, inline, so
   hovering a node shows its tooltip (an ``<img>`` never shows an SVG's
   tooltips), drawn at its natural size (11 pt text reads as the page's text)
   inside a frame that pans (scroll or drag) and a button that toggles
   "fit to width" / "actual size". ``{ width="600" }`` after the image
   (attr_list) sets a figure's initial width. The SVG is ours (rendered by
   scripts/docs_images.py from the examples) and is sanitized anyway: no
   script, no event handler, no external reference survives, and its ids are
   prefixed so that several diagrams on one page do not collide.
2. On the API page, the doctest markers (``# doctest: +SKIP``) are dropped from
   examples, and Sphinx roles (``:func:`gradtrace.trace```), which
   mkdocstrings shows literally, become links to the object's heading on the
   page (or plain code where it has none).
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

_IMG = re.compile(r'<img\b(?P<attrs>[^>]*?\bsrc="(?P<src>(?:\.\./)*images/(?P<name>[\w-]+)\.svg)"[^>]*)/?>')
_ATTR = re.compile(r'([\w:-]+)="([^"]*)"')
_PROLOGUE = re.compile(r"\A.*?(?=<svg\b)", re.S)
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_SCRIPT = re.compile(r"<(script|foreignObject)\b.*?</\1\s*>", re.S | re.I)
_HANDLER = re.compile(r'\s+on\w+\s*=\s*("[^"]*"|\'[^\']*\')', re.I)
_EXTERNAL = re.compile(r'\s+(?:xlink:)?href\s*=\s*"(?!#)[^"]*"', re.I)
_ID = re.compile(r'\bid="([^"]+)"')
_TOOLTIP = re.compile(r'<a xlink:title="([^"]*)">')
_SIZE = re.compile(r'<svg width="([\d.]+)pt" height="([\d.]+)pt"')


def sanitize_svg(svg: str, prefix: str) -> str:
    """``svg`` (a Graphviz SVG file) as an element to inline in HTML: prologue, comments, scripts,
    handlers and external references removed, ids prefixed, each tooltip also a ``<title>``
    (the element browsers show on hover inside an HTML page)."""
    svg = _PROLOGUE.sub("", svg, count=1)
    svg = _COMMENT.sub("", svg)
    svg = _SCRIPT.sub("", svg)
    svg = _HANDLER.sub("", svg)
    svg = _EXTERNAL.sub("", svg)
    svg = _ID.sub(lambda m: f'id="{prefix}-{m[1]}"', svg)
    # Graphviz gives each node a <title> with its DOT name (op3); the tooltip is what a reader wants.
    svg = re.sub(r"<title>[^<]*</title>\n(<g id=\"[^\"]*\"><a xlink:title=)", r"\1", svg)
    svg = _TOOLTIP.sub(lambda m: f'<a xlink:title="{m[1]}"><title>{m[1]}</title>', svg)
    return svg.strip()


def _figure(match: re.Match[str], docs_dir: Path, seen: dict[str, int]) -> str:
    name = match["name"]
    path = docs_dir / "images" / f"{name}.svg"
    if not path.is_file():
        return match[0]  # mkdocs's own link validation reports a missing image
    attrs = {k: html.unescape(v) for k, v in _ATTR.findall(match["attrs"])}
    seen[name] = seen.get(name, 0) + 1
    prefix = f"{name}-{seen[name]}"
    svg = sanitize_svg(path.read_text(encoding="utf-8"), prefix)
    size = _SIZE.search(svg)
    natural = round(float(size[1]) * 4 / 3) if size else None  # pt -> CSS px: text at its designed size
    width = attrs.get("width")
    start = int(width) if width and width.isdigit() else natural
    style = f' style="width: {start}px; height: auto"' if start else ""
    svg = _SIZE.sub(lambda m: f'<svg class="gt-svg"{style} data-natural="{natural}" role="img" aria-label="{html.escape(attrs.get("alt", name))}"', svg, count=1)
    alt = html.escape(attrs.get("alt", ""))
    return (f'<figure class="gt-diagram" id="fig-{prefix}">'
            f'<div class="gt-view" tabindex="0" aria-label="diagram: scroll or drag to pan">{svg}</div>'
            f'<figcaption>{alt}{" · " if alt else ""}hover a node for all its numbers · '
            f'<button type="button" class="gt-zoom">fit to width</button> · '
            f'<a href="{match["src"]}">open the SVG alone</a></figcaption></figure>')


_DOCTEST = re.compile(r'\s*<span class="c1"># doctest: \+[A-Z_, +]+</span>|\s*# doctest: \+[A-Z_, +]+')
_ROLE = re.compile(r":(?:func|class|meth|attr|mod|data|exc|obj):<code>(~?)([\w.]+)</code>")
_HEADING_ID = re.compile(r'<h\d id="([\w.]+)"')


def _api(output: str) -> str:
    output = _DOCTEST.sub("", output)
    ids = set(_HEADING_ID.findall(output))

    def link(m: re.Match[str]) -> str:
        target = m[2]
        shown = target.rpartition(".")[2] if m[1] else target
        # gradtrace.trace, a method named relative to its class, or an object documented by its public name.
        candidates = [target] + sorted(i for i in ids if i.endswith("." + target) or i == "gradtrace." + target.rpartition(".")[2])
        found = next((c for c in candidates if c in ids), None)
        return f'<a href="#{found}"><code>{shown}</code></a>' if found else f"<code>{shown}</code>"

    return _ROLE.sub(link, output)


def on_page_content(output: str, page: Any, config: Any, files: Any) -> str:
    """Inline the diagrams of every page; tidy the API reference."""
    docs_dir = Path(config["docs_dir"])
    seen: dict[str, int] = {}
    output = _IMG.sub(lambda m: _figure(m, docs_dir, seen), output)
    if page.file.src_uri == "api.md":
        output = _api(output)
    return output
