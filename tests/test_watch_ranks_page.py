"""The multi-rank watch page's spread table (tryout5 09): module names escaped and cut as on the single-rank page,
modules ranked by their largest finite spread after one rank went NaN, and the first non-finite step shown."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

import gradtrace
from gradtrace.watching.rankhistory import RankHistories

_RLO = "\u202eevil\u202c"
_LONG = "x" * 300


def _history(rank: int, nan_step: int | None, steps: int = 8) -> dict[str, Any]:
    """A real history of a model whose modules have hostile names; rank ``nan_step`` gets a NaN input there."""
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module(_RLO, nn.Linear(3, 5))
    model.add_module(_LONG, nn.Tanh())
    model.add_module("out", nn.Linear(5, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(rank)
    with gradtrace.watch(model, every=1) as w:
        for step in range(1, steps + 1):
            x, y = torch.randn(4, 3, generator=g), torch.randn(4, 1, generator=g)
            if step == nan_step:
                x[0, 0] = math.nan
            opt.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            opt.step()
    return w.history.to_dict()


def _rms_by_step(h: dict[str, Any], path: str) -> dict[int, float]:
    """Each sampled step's output RMS of ``path``, from the history, computed here independently of the page."""
    values = h["series"]["module"][path]["out_rms"]
    return {s: (math.nan if isinstance(v, str) else float(v)) for s, v in zip(h["steps"], values)}


def test_spread_table_escapes_cuts_and_ranks_by_the_largest_finite_spread(tmp_path) -> None:
    from tests.browser import chromium_page

    h0, h1 = _history(0, None), _history(1, 5)
    doc = RankHistories.build(f"{_RLO}.py", 2, [{"rank": 0, "status": "ok", "why": None, "history": h0},
                                                {"rank": 1, "status": "failed", "why": f"raised ({_RLO})", "history": h1}],
                              "every 1")
    # The expected ranking, from the two ranks' own output RMS: the largest spread over the steps where both are finite.
    expected = {}
    for path in h0["series"]["module"]:
        a, b = _rms_by_step(h0, path), _rms_by_step(h1, path)
        spreads = [abs(a[s] - b[s]) / ((abs(a[s]) + abs(b[s])) / 2) for s in a
                   if math.isfinite(a[s]) and math.isfinite(b[s]) and (a[s] or b[s])]
        if spreads:
            expected[path] = max(spreads)
    assert len(expected) >= 3
    path = doc.save(tmp_path / "run.html")
    with chromium_page(1400, 900) as page:
        page.goto(path.as_uri())
        rows = page.evaluate("Array.from(document.querySelectorAll('#spread table tr')).slice(1)"
                             ".map(r => Array.from(r.cells).map(c => [c.textContent, c.title]))")
        assert page.evaluate("document.documentElement.scrollWidth") <= 1400  # the long name does not widen the page
        nonfinite = page.evaluate("document.getElementById('nonfinite').textContent")
        words = page.evaluate("document.querySelector('header').textContent + document.getElementById('notes').textContent"
                              " + document.title")
    names = [r[0][0] for r in rows]
    assert "\u202e" not in "".join(names) and any("\\u202eevil\\u202c" in n for n in names)
    long_row = next(r for r in rows if r[0][0].startswith("xxx"))
    assert len(long_row[0][0]) < 100 and long_row[0][1] == _LONG
    values = [float(r[1][0]) for r in rows]
    assert values == sorted(values, reverse=True)  # ranked, not NaN in path order
    by_name = {r[0][1] or r[0][0]: float(r[1][0]) for r in rows}
    for p, v in expected.items():
        shown = by_name[p.replace(_RLO, "\\u202eevil\\u202c") if p else "(the model)"]
        assert shown == float(f"{v:.3g}")
    # The NaN entered at step 5 on rank 1: every module's spread is first not finite there.
    assert all(r[2][0] == "step 5" for r in rows)
    assert "\u202e" not in words and words.count("\\u202eevil\\u202c") == 3  # the script's name and the rank's why
    assert "rank 1" in nonfinite and "step 5" in nonfinite and "rank 0" not in nonfinite
