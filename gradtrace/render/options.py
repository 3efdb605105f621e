"""RenderOptions: every choice about how a trace is drawn, in one small object."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

from .._argnames import bare
from ..errors import RenderError

__all__ = ["MAX_TIMEOUT", "RANKDIRS", "THEMES", "RenderOptions", "resolve_options"]

RANKDIRS = ("TB", "LR", "BT", "RL")
#: The longest layout time one can ask for (11.6 days); longer cannot be waited on (the OS timer
#: overflows) and means "no limit", which is ``None``.
MAX_TIMEOUT = 1e6
THEMES = ("light", "dark")


@dataclass(frozen=True)
class RenderOptions:
    """How to draw a trace.

    >>> RenderOptions(rankdir="LR", show_values=False).rankdir
    'LR'

    rankdir: the direction data flows on the page (TB top to bottom, LR left to right, ...).
    show_values / show_grads: the forward-value and gradient lines inside each node.
    theme: ``light`` or ``dark``: page background and text colours; node colours read on both.
    timeout: seconds Graphviz may spend laying out (``None``: no limit).
    show_findings: mark what ``Trace.diagnose()`` found on its nodes and list it in the legend.
    depth: draw modules deeper than this many levels as one node each (``None``: every node).
    max_nodes: when ``depth`` is None and the diagram would have more items, collapse to the
        deepest depth that fits, and say so on the diagram (``None``: never collapse by itself).
    fold: draw consecutive identical sibling modules (a transformer's layers) as one ×K node.
    module: draw only this module (a path like ``encoder.layer.3``), with what feeds it and
        what reads it as boundary nodes.
    edge_grads: label each edge with the gradient its consumer sent back along it (``None``:
        only on small diagrams; every edge's tooltip says it regardless).
    """

    rankdir: str = "TB"
    show_values: bool = True
    show_grads: bool = True
    theme: str = "light"
    timeout: float | None = 120.0
    show_findings: bool = True
    depth: int | None = None
    max_nodes: int | None = 250
    fold: bool = True
    module: str | None = None
    edge_grads: bool | None = None

    def __post_init__(self) -> None:
        if self.rankdir not in RANKDIRS:
            raise RenderError(f"unknown rankdir {self.rankdir!r} (must be one of {list(RANKDIRS)})")
        if self.theme not in THEMES:
            raise RenderError(f"unknown theme {self.theme!r} (must be one of {list(THEMES)})")
        for name in ("show_values", "show_grads", "show_findings", "fold"):
            if not isinstance(getattr(self, name), bool):
                raise RenderError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.edge_grads is not None and not isinstance(self.edge_grads, bool):
            raise RenderError(f"{bare('edge_grads')} must be True, False or None (only small diagrams), got {self.edge_grads!r}")
        if self.depth is not None and (not isinstance(self.depth, int) or isinstance(self.depth, bool) or self.depth < 0):
            raise RenderError(f"{bare('depth')} must be a non-negative integer or None, got {self.depth!r}")
        if self.max_nodes is not None and (not isinstance(self.max_nodes, int) or isinstance(self.max_nodes, bool) or self.max_nodes < 1):
            raise RenderError(f"{bare('max_nodes')} must be a positive integer or None, got {self.max_nodes!r}")
        if self.module is not None and (not isinstance(self.module, str) or not self.module):
            raise RenderError(f"{bare('module')} must be a module path such as 'encoder.layer.3', got {self.module!r}")
        if isinstance(self.timeout, (int, float)) and not isinstance(self.timeout, bool) and self.timeout == math.inf:
            object.__setattr__(self, "timeout", None)  # infinity reads as "no limit", which is None
        if self.timeout is not None and not (isinstance(self.timeout, (int, float)) and not isinstance(self.timeout, bool)
                                             and 0 < self.timeout <= MAX_TIMEOUT):
            raise RenderError(f"{bare('timeout')} must be a number of seconds in (0, {MAX_TIMEOUT:.0f}], or None (or inf) for no limit, "
                              f"got {self.timeout!r}")


def resolve_options(options: RenderOptions | None, overrides: Mapping[str, Any]) -> RenderOptions:
    """``options`` (or the defaults) with ``overrides`` applied; unknown names are an error."""
    if options is not None and not isinstance(options, RenderOptions):
        raise RenderError(f"options must be a RenderOptions, got {type(options).__name__}")
    base = options or RenderOptions()
    if not overrides:
        return base
    valid = [f.name for f in dataclasses.fields(RenderOptions)]
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise RenderError(f"unknown render option(s) {unknown} (valid options: {valid})")
    return dataclasses.replace(base, **overrides)
