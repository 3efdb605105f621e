"""The replay page of a multi-rank trace draws each parameter's reduced gradient in its box (tryout5 14b), as the SVG
does: a parameter whose REDUCED gradient is NaN has a red header, and its box showed only the finite local gradient.
In one process: two ranks traced here, the all-reduce records computed by torch (tests.test_distributed._multi)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from gradtrace.distributed.output import write_multi
from gradtrace.render.options import RenderOptions

from tests.test_distributed import _batch, _local_grads, _multi

BOX = """(label) => { const n = Array.from(document.querySelectorAll('#graph g.node')).find(g =>
  g.querySelector('text.title') && g.querySelector('text.title').textContent === label);
  return n ? [n.classList.contains('alarm'), Array.from(n.querySelectorAll('text')).map(t => t.textContent)] : null; }"""
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def _box(page, rank: int, label: str) -> tuple[bool, list[str]]:
    page.select_option("#traces", str(rank))
    page.wait_for_selector(f'body[data-ready="{rank}"]')
    page.fill("#search", label)
    page.press("#search", "Enter")  # selects and centres it, readable: its box is drawn as SVG text
    page.wait_for_function(f"(l) => ({BOX})(l) !== null", arg=label)
    return page.evaluate(BOX, label)


def _line(lines: list[str], start: str) -> str:
    found = [x for x in lines if x.startswith(start)]
    assert len(found) == 1, lines
    return found[0]


def test_replay_boxes_show_the_local_and_the_reduced_gradient(tmp_path: Path) -> None:
    from tests.browser import chromium_page

    nan = torch.full((1, 4), float("nan"))
    sick = _multi(reduced_edit={"fc2.weight": nan})  # rank 1's reduced fc2.weight is NaN, its local one finite
    page_path = write_multi(sick, tmp_path / "ranks.html", "html", RenderOptions())[0][0]
    local = [_local_grads(_batch(r)) for r in range(2)]  # torch, independently: each rank's own gradients
    mean_bias = float((local[0]["fc2.bias"] + local[1]["fc2.bias"]).item() / 2)
    with chromium_page() as page:
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(page_path.as_uri())
        page.wait_for_selector("body[data-ready]")
        alarm, lines = _box(page, 1, "fc2.weight")
        assert alarm  # red: the reduced gradient is NaN ...
        assert "NaN" in _line(lines, "∇ reduced")  # ... and the box now says so
        assert "NaN" not in _line(lines, "∇ local")
        for rank in (0, 1):
            alarm, lines = _box(page, rank, "fc2.bias")
            assert not alarm
            got_local = float(NUMBER.findall(_line(lines, "∇ local"))[0])
            got_reduced = float(NUMBER.findall(_line(lines, "∇ reduced"))[0])
            assert got_local == pytest.approx(float(local[rank]["fc2.bias"].item()), rel=1e-2)
            assert got_reduced == pytest.approx(mean_bias, rel=1e-2)
        assert errors == []
