"""How a message names an option: the Python argument (``max_nodes=250``) or the CLI's (``--max-nodes 250``).

The library's messages and diagram notes tell the user what to change; a CLI user has options,
not keyword arguments, so the ``render`` command switches the spelling with :func:`cli_names`
while it draws. One place spells every option, so no message can name the wrong one.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Any, Iterator

__all__ = ["arg", "bare", "cli_names", "either"]

_CLI: ContextVar[bool] = ContextVar("gradtrace_cli_names", default=False)
#: Python argument -> CLI option, where the CLI spells it otherwise than ``--name-with-dashes``.
_OPTIONS = {"format": "--format", "fold": "--no-fold"}


def arg(name: str, value: Any = ...) -> str:
    """``name`` as the caller spells it, with ``value`` (``...``: a placeholder to fill in).

    >>> arg("max_nodes", 250), arg("timeout")
    ('max_nodes=250', 'timeout=...')
    """
    if _CLI.get():
        option = _OPTIONS.get(name, "--" + name.replace("_", "-"))
        return option if value is ... or isinstance(value, bool) else f"{option} {value}"
    return f"{name}=..." if value is ... else f"{name}={value}"


def bare(name: str) -> str:
    """``name`` alone, as the caller spells it: ``max_nodes`` or ``--max-nodes``."""
    return _OPTIONS.get(name, "--" + name.replace("_", "-")) if _CLI.get() else name


def either(python: str, cli: str) -> str:
    """``python`` or ``cli``: how the caller does a thing (``Trace.diagnose()``, ``gradtrace check``)."""
    return cli if _CLI.get() else python


@contextlib.contextmanager
def cli_names() -> Iterator[None]:
    """Within the block, messages name the CLI's options (``--timeout``), not Python arguments."""
    token = _CLI.set(True)
    try:
        yield
    finally:
        _CLI.reset(token)
