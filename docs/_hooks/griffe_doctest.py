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


_FIELD = re.compile(r"^(\w+(?: / \w+)*): (.*)$")


def fields_as_list(text: str, names: set[str]) -> str:
    """Lines ``rankdir: the direction ...`` (a class describing its fields, continuation lines
    indented) as a Markdown list, when every name before the colon is one of the class's ``names``;
    Markdown would run them together into one paragraph."""
    out: list[str] = []
    in_list = False
    for line in text.splitlines():
        m = _FIELD.match(line)
        if m and all(n in names for n in m[1].split(" / ")):
            if not in_list and out and out[-1].strip():
                out.append("")
            in_list = True
            out.append("- " + " / ".join(f"`{n}`" for n in m[1].split(" / ")) + ": " + m[2])
        elif in_list and line.startswith("    ") and line.strip():
            out.append("  " + line.strip())
        else:
            in_list = False
            out.append(line)
    return "\n".join(out)


class DoctestAsCode(griffe.Extension):
    """Fence the doctest examples of every docstring griffe loads; list a class's described fields."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is None:
            return
        if ">>>" in obj.docstring.value:
            obj.docstring.value = doctest_as_code(obj.docstring.value)
        if obj.is_class:
            obj.docstring.value = fields_as_list(obj.docstring.value, set(obj.members))
