"""Formats of a comparison, and writing one to a file whole or not at all."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .._argnames import arg
from ..errors import DotNotFoundError, RenderError, RenderTimeoutError
from .execute import INSTALL_HINT, run_dot
from .output import SUFFIXES, write_bytes

if TYPE_CHECKING:
    from ..diff import TraceDiff

__all__ = ["DIFF_FORMATS", "diff_bytes", "diff_format_for", "write_diff"]

#: Every format a comparison is written in; svg, png and pdf need Graphviz's ``dot``.
DIFF_FORMATS = ("html", "svg", "png", "pdf", "dot", "json", "text")


def diff_format_for(path: Path, fmt: str | None) -> str:
    """The format to write ``path`` in: ``fmt`` if given (it must agree with a known suffix), else the suffix's."""
    implied = SUFFIXES.get(path.suffix.lower())
    if fmt is not None:
        if fmt not in DIFF_FORMATS:
            raise RenderError(f"unknown format {fmt!r} for a comparison (must be one of {list(DIFF_FORMATS)})")
        if implied is not None and implied != fmt:
            raise RenderError(f"format {fmt!r} does not match the file name {path.name!r}, which implies {implied!r}")
        return fmt
    if implied is None:
        raise RenderError(f"cannot tell the format from {path.name!r}: unknown suffix {path.suffix or '(none)'!r} "
                          f"(use one of .html, .svg, .png, .pdf, .dot, .json, .txt, or give a format: one of {list(DIFF_FORMATS)})")
    return implied


def diff_bytes(d: TraceDiff, fmt: str, *, by: str = "grad", timeout: float | None = 120.0, top: int = 20) -> bytes:
    """The file contents of comparison ``d`` in ``fmt``."""
    try:
        return _encode(d, fmt, by, timeout, top)
    except DotNotFoundError:
        raise DotNotFoundError(f"the Graphviz `dot` program is needed to draw the comparison ({fmt}) but was not found "
                               f"on PATH; {INSTALL_HINT}") from None
    except RenderTimeoutError:
        raise RenderTimeoutError(f"Graphviz layout of the comparison took longer than {timeout:g} s and was stopped; "
                                 f"write it as json or text (no drawing), or allow more time with {arg('timeout')}") from None


def _encode(d: TraceDiff, fmt: str, by: str, timeout: float | None, top: int) -> bytes:
    if fmt == "json":
        return (d.to_json(indent=1) + "\n").encode("utf-8")
    if fmt == "text":
        return d.to_text(top).encode("utf-8")
    from .diff_dot import diff_dot

    if fmt == "html":
        from .diff_html import to_html

        return to_html(d, by=by, timeout=timeout).encode("utf-8")
    source = diff_dot(d, by).source
    if fmt == "dot":
        return source.encode("utf-8")
    if fmt in ("svg", "png", "pdf"):
        return run_dot(source, fmt, timeout)
    raise RenderError(f"unknown format {fmt!r} for a comparison (must be one of {list(DIFF_FORMATS)})")


def write_diff(d: TraceDiff, path: Path, fmt: str | None = None, *, by: str = "grad", timeout: float | None = 120.0) -> Path:
    """Write ``d`` to ``path`` (a regular file appears whole or not at all; ``-`` is standard output)."""
    if str(path) == "-":
        if fmt is None:
            raise RenderError(f"writing to standard output ('-') needs a format: one of {list(DIFF_FORMATS)}")
        fmt = diff_format_for(Path("stdout"), fmt)
    else:
        fmt = diff_format_for(path, fmt)
        folder = path.parent if str(path.parent) else Path(".")
        if not folder.is_dir():
            raise RenderError(f"cannot write {str(path)!r}: the folder {str(folder)!r} does not exist")
        if path.is_dir():
            raise RenderError(f"cannot write {str(path)!r}: it is a directory (give a file name)")
    write_bytes(path, diff_bytes(d, fmt, by=by, timeout=timeout))
    return path
