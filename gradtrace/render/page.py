"""What every self-contained page gradtrace writes shares: its assets, its security policy, its data.

The replay page (:mod:`.html`), the watch page (:mod:`.watch_html`) and the diff page
(:mod:`.diff_html`) each hold their script and stylesheet inline, allowed by hash in a
Content-Security-Policy that forbids every request, and their data as JSON inside a
``<script>`` element that user strings must not be able to close. One copy of each of those
rules, here, so the three pages cannot drift apart.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from importlib import resources
from typing import Any, Iterable

__all__ = ["asset", "csp", "csp_hash", "joined_script", "script_json"]

_SCRIPT_UNSAFE = re.compile("[<>&\u2028\u2029\ud800-\udfff]")


def asset(name: str) -> str:
    """The text of ``gradtrace/render/assets/NAME``."""
    return resources.files("gradtrace.render").joinpath("assets", name).read_text(encoding="utf-8")


def csp_hash(text: str) -> str:
    """The CSP source that allows exactly this inline script or style: ``'sha256-…'``."""
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


def csp(script_src: Iterable[str], style_src: Iterable[str]) -> str:
    """The page's policy: only the inline scripts and styles these sources (:func:`csp_hash`) allow,
    data: images, no request at all."""
    return (f"default-src 'none'; script-src {' '.join(script_src)}; style-src {' '.join(style_src)}; img-src data:; "
            "connect-src 'none'; font-src 'none'; base-uri 'none'; form-action 'none'")


def joined_script(names: Iterable[str]) -> str:
    """Asset scripts joined in one function scope (each declares the few functions the others call), so a
    page still has one inline script, allowed by its hash."""
    return '(function () {\n"use strict";\n' + "\n".join(asset(name) for name in names) + "\n})();\n"


def script_json(obj: Any) -> str:
    """JSON that is safe inside <script>: no '<', '>' or '&' survive as such (so no ``</script>``
    or ``<!--``), U+2028/U+2029 are escaped, and so is a lone surrogate (a node key from a trace
    file may hold one; UTF-8 cannot, a ``\\u`` escape can)."""
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return _SCRIPT_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
