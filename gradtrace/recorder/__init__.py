"""The capture side, everything that touches torch: recording a step into plain records."""

from .api import Capture, capture, trace

__all__ = ["Capture", "capture", "trace"]
