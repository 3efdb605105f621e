"""Formats, and writing a trace to a file whole or not at all."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import RenderError
from .execute import run_dot
from .options import RenderOptions

if TYPE_CHECKING:
    from ..steptrace import Trace

__all__ = ["FORMATS", "SUFFIXES", "format_for", "to_bytes", "write"]

#: Every output format; the first three need Graphviz's ``dot`` binary.
FORMATS = ("svg", "png", "pdf", "dot", "json", "text", "html")
GRAPHVIZ_FORMATS = ("svg", "png", "pdf")
SUFFIXES = {".svg": "svg", ".png": "png", ".pdf": "pdf", ".dot": "dot", ".gv": "dot", ".json": "json", ".txt": "text", ".html": "html", ".htm": "html"}


def format_for(path: Path, fmt: str | None) -> str:
    """The format to write ``path`` in: ``fmt`` if given (it must agree with a known suffix), else the suffix's."""
    suffix = path.suffix.lower()
    if fmt is not None:
        if fmt not in FORMATS:
            raise RenderError(f"unknown format {fmt!r} (must be one of {list(FORMATS)})")
        implied = SUFFIXES.get(suffix)
        if implied is not None and implied != fmt:
            raise RenderError(f"format {fmt!r} does not match the file name {path.name!r}, which implies {implied!r}")
        return fmt
    if suffix not in SUFFIXES:
        raise RenderError(
            f"cannot tell the format from {path.name!r}: unknown suffix {suffix or '(none)'!r} "
            f"(use one of {sorted(SUFFIXES)} or pass format= one of {list(FORMATS)})"
        )
    return SUFFIXES[suffix]


def to_bytes(trace: Trace, fmt: str, options: RenderOptions) -> bytes:
    """The file contents of ``trace`` in ``fmt``."""
    if fmt == "json":
        return (trace.to_json(indent=1) + "\n").encode("utf-8")
    if fmt == "html":
        from .html import to_html

        return to_html(trace, options).encode("utf-8")
    if fmt == "text":
        from .text import to_text

        return to_text(trace, options).encode("utf-8")
    from .dot import to_dot

    source = to_dot(trace, options).source
    if fmt == "dot":
        return source.encode("utf-8")
    if fmt in GRAPHVIZ_FORMATS:
        return run_dot(source, fmt, options.timeout)
    raise RenderError(f"unknown format {fmt!r} (must be one of {list(FORMATS)})")


def write(trace: Trace, path: Path, fmt: str | None, options: RenderOptions) -> Path:
    """Write ``trace`` to ``path``; the file appears complete or not at all."""
    fmt = format_for(path, fmt)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise RenderError(f"cannot write {str(path)!r}: the folder {str(folder)!r} does not exist")
    data = to_bytes(trace, fmt, options)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as e:
        raise RenderError(f"cannot write {str(path)!r}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as e:
        raise RenderError(f"cannot write {str(path)!r}: {e.strerror or e}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
