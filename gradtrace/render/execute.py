"""The only place gradtrace runs a program: Graphviz's ``dot``."""

from __future__ import annotations

import shutil
import subprocess

from .._argnames import arg, bare
from ..errors import DotNotFoundError, RenderError, RenderTimeoutError

__all__ = ["INSTALL_HINT", "run_dot"]

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
