"""Writing a multi-rank trace: one file holding every rank, or rank 0's diagram and one per rank (no torch here).

- ``json``: the multi-rank document (:mod:`gradtrace.distributed.multitrace`).
- ``html``: one replay page with a rank selector.
- the diagram and table formats (svg, png, pdf, dot, text): rank 0's, at the
  path asked for; with ``every_rank``, also ``NAME.rankK.SUFFIX`` for each
  other rank K, beside it.
"""

from __future__ import annotations

from pathlib import Path

from ..render.options import RenderOptions
from ..render.output import encode, write_bytes, write_counted
from .multitrace import MultiTrace

__all__ = ["multi_html", "rank_path", "write_multi"]


def multi_html(multi: MultiTrace, options: RenderOptions) -> str:
    """The replay page of every rank, with a rank selector."""
    from ..render import html

    to_html_multi = getattr(html, "to_html_multi", None)
    if to_html_multi is None:  # (until the rank-selector page is merged: rank 0's page; the lead removes this)
        return html.to_html(multi.trace(multi.ranks[0].rank), options)
    return str(to_html_multi([(f"rank {r.rank}", r.trace) for r in multi.ranks], options))


def rank_path(path: Path, rank: int) -> Path:
    """``step.svg`` -> ``step.rank3.svg``: where rank ``rank``'s own diagram goes.

    >>> rank_path(Path("out/step.svg"), 3)
    PosixPath('out/step.rank3.svg')
    """
    return path.with_name(f"{path.stem}.rank{rank}{path.suffix}")


def write_multi(multi: MultiTrace, path: Path, fmt: str, options: RenderOptions, every_rank: bool = False) -> list[tuple[Path, int]]:
    """Write ``multi`` to ``path`` (``-``: standard output) as ``fmt``; returns each file written and the
    number of nodes its drawing shows (every node of every rank for json and html)."""
    if fmt in ("json", "html"):
        data = (multi.to_json() if fmt == "json" else multi_html(multi, options)).encode("utf-8")
        if str(path) != "-" and not Path(path).parent.is_dir():
            from ..errors import RenderError

            raise RenderError(f"cannot write {str(path)!r}: the folder {str(path.parent)!r} does not exist")
        write_bytes(path, data)
        return [(path, sum(len(r.trace.nodes) for r in multi.ranks))]
    first = multi.ranks[0]
    written = [write_counted(first.trace, path, fmt, options)]
    if every_rank:
        if str(path) == "-":
            from ..errors import RenderError

            raise RenderError("one file per rank needs a file name to number (step.svg -> step.rank1.svg), not '-'")
        for r in multi.ranks[1:]:
            data, drawn = encode(r.trace, fmt, options)
            target = rank_path(path, r.rank)
            write_bytes(target, data)
            written.append((target, drawn))
    return written
