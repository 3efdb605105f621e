"""Formats, and writing a trace to a file whole or not at all."""

from __future__ import annotations

import os
import stat
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from .._argnames import bare
from ..errors import RenderError
from .execute import run_dot
from .options import RenderOptions

if TYPE_CHECKING:
    from ..steptrace import Trace

__all__ = ["FORMATS", "SUFFIXES", "encode", "format_for", "to_bytes", "write", "write_bytes", "write_counted"]

#: Every output format; the first three need Graphviz's ``dot`` binary. ``model-explorer`` writes
#: several files: ``NAME.graph.json`` and its overlays beside it (see :mod:`.model_explorer`).
FORMATS = ("svg", "png", "pdf", "dot", "json", "text", "html", "model-explorer")
GRAPHVIZ_FORMATS = ("svg", "png", "pdf")
SUFFIXES = {".svg": "svg", ".png": "png", ".pdf": "pdf", ".dot": "dot", ".gv": "dot", ".json": "json", ".txt": "text", ".html": "html", ".htm": "html"}


def format_for(path: Path, fmt: str | None, option: str | None = None) -> str:
    """The format to write ``path`` in: ``fmt`` if given (it must agree with a known suffix), else the suffix's.

    ``option`` is how the message names the way to give a format (default: as the caller spells
    it, ``format=`` in Python, ``--format`` in the CLI; see :mod:`gradtrace._argnames`).
    """
    option = option or bare("format") + ("=" if not bare("format").startswith("-") else "")
    suffix = path.suffix.lower()
    if fmt == "model-explorer" or (fmt is None and path.name.lower().endswith(".graph.json")):
        from .model_explorer import check_graph_path

        check_graph_path(path)  # several files: the name must say where they go
        return "model-explorer"
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
            f"(use one of {sorted(SUFFIXES)} or pass {option} one of {list(FORMATS)})"
        )
    return SUFFIXES[suffix]


def to_bytes(trace: Trace, fmt: str, options: RenderOptions) -> bytes:
    """The file contents of ``trace`` in ``fmt``."""
    return encode(trace, fmt, options)[0]


def encode(trace: Trace, fmt: str, options: RenderOptions) -> tuple[bytes, int]:
    """The file contents of ``trace`` in ``fmt``, and how many items the drawing shows (every
    node, except in a Graphviz drawing that collapses modules or folds runs)."""
    if fmt == "json":
        return (trace.to_json(indent=1) + "\n").encode("utf-8"), len(trace.nodes)
    if fmt == "html":
        from .html import to_html

        return to_html(trace, options).encode("utf-8"), len(trace.nodes)
    if fmt == "text":
        from .text import to_text

        return to_text(trace, options).encode("utf-8"), len(trace.nodes)
    if fmt == "model-explorer":  # the graph file; write() puts the overlays beside it
        from .model_explorer import encode_graph

        return encode_graph(trace), len(trace.nodes)
    from .dot import dot_and_view

    graph, view = dot_and_view(trace, options)
    source = graph.source
    if fmt == "dot":
        return source.encode("utf-8"), len(view)
    if fmt in GRAPHVIZ_FORMATS:
        return run_dot(source, fmt, options.timeout), len(view)
    raise RenderError(f"unknown format {fmt!r} (must be one of {list(FORMATS)})")


def write(trace: Trace, path: Path, fmt: str | None, options: RenderOptions) -> Path:
    """Write ``trace`` to ``path`` (see :func:`write_counted`); returns ``path``."""
    return write_counted(trace, path, fmt, options)[0]


def write_counted(trace: Trace, path: Path, fmt: str | None, options: RenderOptions) -> tuple[Path, int]:
    """Write ``trace`` to ``path``; a regular file appears complete or not at all.

    ``path`` may be ``-`` (standard output; give ``fmt``), a symlink (its target is written, the
    link stays), or a device or FIFO (written straight through, never replaced by a file).
    Returns the path and how many items the drawing shows.
    """
    if str(path) == "-":
        if fmt == "model-explorer":
            from .model_explorer import check_graph_path

            check_graph_path(path)
        if fmt is None:
            raise RenderError(f"writing to standard output ('-') needs a format: pass {bare('format')}"
                              f"{'' if bare('format').startswith('-') else '='} one of {list(FORMATS)}")
        fmt = format_for(Path("stdout"), fmt)
        data, drawn = encode(trace, fmt, options)
        write_bytes(path, data)
        return path, drawn
    fmt = format_for(path, fmt)
    if fmt == "model-explorer":
        from .model_explorer import write_files

        return write_files(trace, path)[0], len(trace.nodes)
    if _writes_through(path):  # /dev/stdout into a pipe: no folder to check, nothing to replace
        data, drawn = encode(trace, fmt, options)
        write_bytes(path, data)
        return path, drawn
    target = Path(os.path.realpath(path))  # through every symlink: the link stays, its target is written
    folder = target.parent
    if not folder.is_dir():
        shown = path.parent if str(path.parent) else Path(".")
        raise RenderError(f"cannot write {str(path)!r}: the folder {str(shown)!r} does not exist")
    if target.is_dir():
        raise RenderError(f"cannot write {str(path)!r}: it is a directory (give a file name)")
    data, drawn = encode(trace, fmt, options)
    write_bytes(path, data)
    return path, drawn


def write_bytes(path: Path, data: bytes) -> None:
    """Put ``data`` at ``path`` the way the user means it.

    ``-`` is standard output (binary-safe). A regular file, or a new one, is written atomically
    (a temporary file beside it, renamed over it) and keeps its mode, or gets the mode ``open()``
    would give a new file (0666 less the umask). Anything else that exists (``/dev/null``, a
    terminal, a FIFO) and every path into /dev or /proc (``/dev/stdout`` into a pipe) is opened as
    given and written through: renaming over it would replace the device.
    """
    if str(path) == "-":
        out = sys.stdout.buffer
        out.write(data)
        out.flush()
        return
    try:
        if _writes_through(path):
            # The path as given, not its realpath: /dev/stdout into a pipe resolves to "pipe:[n]",
            # which names nothing that can be opened (a FIFO waits for its reader).
            with open(path, "wb") as f:
                f.write(data)
            return
    except OSError as e:
        raise RenderError(f"cannot write {str(path)!r}: {e.strerror or e}") from None
    target = os.path.realpath(path)
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise RenderError(f"cannot write {str(path)!r}: {e.strerror or e}") from None
    try:
        mode = stat.S_IMODE(st.st_mode) if st is not None else 0o666 & ~_umask()
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=os.path.dirname(target))
    except OSError as e:
        raise RenderError(f"cannot write {str(path)!r}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        if st is not None and (st.st_uid, st.st_gid) != (os.getuid(), os.getgid()):
            try:  # the file keeps its owner too, where we may set it (as root)
                os.chown(tmp, st.st_uid, st.st_gid)
            except PermissionError:
                pass
        os.replace(tmp, target)
    except OSError as e:
        raise RenderError(f"cannot write {str(path)!r}: {e.strerror or e}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _writes_through(path: Path) -> bool:
    """``path`` is written by opening it, not replaced by a new file: anything that exists and is
    not a regular file (a device, a FIFO, a socket, a terminal, following links), and every path
    into /dev or /proc (``/dev/stdout``, ``/dev/fd/N``, a shell's ``>(...)``), which name a
    descriptor the caller opened, even when it is a regular file (``> out.svg``)."""
    given = os.path.abspath(path)
    if given.startswith(("/dev/", "/proc/")):
        return True
    try:
        st = os.stat(path)  # follows links, from the path as given
    except OSError:
        return False
    return not stat.S_ISREG(st.st_mode) and not stat.S_ISDIR(st.st_mode)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
