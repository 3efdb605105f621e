"""Drawing a Trace: Graphviz (dot.py), text tables (text.py), files (output.py). No torch here."""

from .options import RenderOptions

__all__ = ["RenderOptions"]
