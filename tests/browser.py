"""Debian's Chromium driven by Playwright for Python (never Playwright's own browser download)."""

from __future__ import annotations

import contextlib
import shutil
from typing import Iterator

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]


@contextlib.contextmanager
def chromium_page(width: int = 1400, height: int = 900) -> Iterator:
    from playwright.sync_api import sync_playwright

    exe = shutil.which("chromium") or CHROMIUM
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            yield page
        finally:
            browser.close()
