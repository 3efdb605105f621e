"""The only place gradtrace runs a program: Graphviz's ``dot``."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess

from .._argnames import arg, bare
from ..errors import DotNotFoundError, RenderError, RenderTimeoutError

__all__ = ["INSTALL_HINT", "tooltip_passes", "run_dot"]

INSTALL_HINT = (
    "install Graphviz: `apt-get install graphviz` (Debian/Ubuntu), `brew install graphviz` (macOS), "
    "`conda install -c conda-forge graphviz`; DOT, JSON and text output work without it"
)


def run_dot(source: str, fmt: str, timeout: float | None) -> bytes:
    """Lay out ``source`` with ``dot -T<fmt>`` and return the output.

    Raises DotNotFoundError when ``dot`` is not installed, RenderTimeoutError
    when layout takes longer than ``timeout`` seconds (the process is killed).
    """
    exe = shutil.which("dot")
    if exe is None:
        raise DotNotFoundError(f"the Graphviz `dot` program is needed for {fmt} output but was not found on PATH; {INSTALL_HINT}")
    try:
        proc = subprocess.run([exe, f"-T{fmt}"], input=source.encode("utf-8"), capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise RenderTimeoutError(
            f"Graphviz layout took longer than {timeout:g} s and was stopped; draw less of the graph "
            f"(a smaller {bare('depth')} or {bare('max_nodes')}, or one module with {arg('module')}) "
            f"or allow more time with {arg('timeout')}"
        ) from None
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip()
        raise RenderError(f"Graphviz `dot -T{fmt}` failed (exit {proc.returncode}): {err}")
    return proc.stdout


@functools.lru_cache(maxsize=1)
def tooltip_passes() -> int:
    """How many times this Graphviz reads escape sequences in a tooltip: 2 for dot 2.43 (every tooltip — node,
    edge, cluster, graph — is substituted twice, a label once: ``"\\\\N"`` shows as the node's name), 1 if a version
    reads it once.
    Asked of the installed ``dot`` once per process; 2 when there is none (the DOT file is read elsewhere: the
    version the suite runs with decides)."""
    exe = shutil.which("dot")
    if exe is None:
        return 2
    try:
        proc = subprocess.run([exe, "-Tsvg"], input=b'digraph{probe [tooltip="\\\\N"]}', capture_output=True, timeout=20,
                              check=False)
    except (OSError, subprocess.SubprocessError):
        return 2
    found = re.search(rb'xlink:title="([^"]*)"', proc.stdout)
    return 1 if found is not None and found.group(1) == b"\\N" else 2
