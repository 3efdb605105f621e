"""Griffe extension for the API page: doctest examples read as code, without doctest's markers.

The docstrings hold ``>>>`` examples that the test suite runs; Markdown would
read their ``>>>`` as nested quotes. Each run of example lines (from a ``>>>``
line to the next blank line) becomes a fenced ``pycon`` block, and the
``# doctest: +SKIP`` markers, which are for the test runner, are dropped.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_MARKER = re.compile(r"\s*# doctest: \+[A-Z_, +]+")


def doctest_as_code(text: str) -> str:
    """``text`` with every doctest run fenced as ``pycon`` and its markers removed."""
    out: list[str] = []
    block: list[str] = []
    indent = ""

    def flush() -> None:
        if block:
            out.extend([f"{indent}```pycon", *block, f"{indent}```"])
            block.clear()

    for line in text.splitlines():
        stripped = line.lstrip()
        if stripped.startswith(">>>") or (block and stripped):
            if not block:
                indent = line[: len(line) - len(stripped)]
            block.append(_MARKER.sub("", line).rstrip())
            continue
        flush()
        out.append(line)
    flush()
    return "\n".join(out)


class DoctestAsCode(griffe.Extension):
    """Fence the doctest examples of every docstring griffe loads."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None and ">>>" in obj.docstring.value:
            obj.docstring.value = doctest_as_code(obj.docstring.value)
