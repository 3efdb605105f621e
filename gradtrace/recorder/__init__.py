"""The capture side, everything that touches torch: recording a step into plain records."""

import warnings

with warnings.catch_warnings():
    # torch warns at import when numpy is missing ("Failed to initialize NumPy"); gradtrace never
    # converts to numpy, so that one message, at that one import, says nothing to its users. The
    # filters are restored right after: every other warning, and this one later, still shows.
    warnings.filterwarnings("ignore", message=r"Failed to initialize NumPy", category=UserWarning)
    import torch  # noqa: F401

from .api import Capture, capture, trace

__all__ = ["Capture", "capture", "trace"]
