"""A dissolved container (a ModuleList never called, a module whose children the parent calls) shows on the replay page.

The hierarchy dissolves such a container into its parent (as one box it would draw a chain as
parallel branches), so it has no group and no frame: a user who knows the model has ``layers``
could not find it. The page draws a dashed frame named after it around its members (one per part
where other items sit between them), opening and closing nothing, and the search for its name
goes to it. torch is the oracle of which containers those are: modules whose forward never ran
while their children's did, found with forward hooks here.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradtrace

from .browser import chromium_page
from .test_html_layout import DirectCalls, ListMLP, Nested, Residual
from .test_html_replay import open_page

HOSTILE = '<img src=x onerror=alert(1)>&amp;'  # (no dot: torch refuses one in a module name)


class HostileDict(nn.Module):
    """A ModuleDict (never called) whose key is markup, holding a ModuleList the parent loops over."""

    def __init__(self) -> None:
        super().__init__()
        self.parts = nn.ModuleDict({HOSTILE: nn.ModuleList([nn.Linear(6, 6) for _ in range(3)])})
        self.head = nn.Linear(6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.parts[HOSTILE]:
            x = torch.tanh(layer(x)) * 0.5
        return self.head(x)


CASES = {"modulelist": (ListMLP, (3, 6)), "residual": (Residual, (3, 6)), "direct-calls": (DirectCalls, (3, 5)),
         "nested-dict": (Nested, (3, 6)), "hostile-dict": (HostileDict, (3, 6))}


def never_called(model: nn.Module, x: torch.Tensor) -> set[str]:
    """Torch's answer: the modules whose forward never ran while a module inside them did."""
    ran: set[str] = set()
    hooks = [m.register_forward_pre_hook(lambda mod, args, name=name: ran.add(name)) for name, m in model.named_modules()]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return {name for name, _ in model.named_modules() if name and name not in ran
            and any(other.startswith(name + ".") for other in ran)}


def inside(box: list[float], frame: list[float]) -> bool:
    return frame[0] <= box[0] and frame[1] <= box[1] and box[0] + box[2] <= frame[0] + frame[2] and box[1] + box[3] <= frame[1] + frame[3]


def meets(box: list[float], frame: list[float]) -> bool:
    return box[0] < frame[0] + frame[2] and frame[0] < box[0] + box[2] and box[1] < frame[1] + frame[3] and frame[1] < box[1] + box[3]


def check_frames(t, containers: set[str], layout: dict, where: str) -> set[str]:
    """Each container framed; every node under it inside one of its frames, no other node touching one."""
    groups = {k.partition(":")[2] for k in list(layout["box"]) + layout["frames"] if k.startswith("module:")}
    containers = containers - groups  # (a container kept as a group of its own has its own frame and title)
    frames: dict[str, list[list[float]]] = {}
    for d in layout["dissolved"]:
        frames.setdefault(d["path"], []).append(d["box"])
        assert "container" in d["title"] and d["path"] in d["title"]
    assert containers <= set(frames), f"{where}: containers without a frame: {containers - set(frames)} (framed: {sorted(frames)})"
    for c in containers:
        for key, box in layout["box"].items():
            if key not in t.nodes:
                continue  # (a closed group: judged by the nodes it holds, below)
            scope = t.node(key).scope or t.node(key).module
            if scope.startswith(c + "."):
                assert any(inside(box, f) for f in frames[c]), f"{where}: {key} ({scope}) is outside every frame of {c}"
            elif not scope.startswith(c):
                hit = [f for f in frames[c] if meets(box, f)]
                assert not hit, f"{where}: {key} ({scope or 'the parent'}) sits inside a frame of {c}: {hit}"
    return containers


@pytest.mark.parametrize("name", list(CASES))
def test_dissolved_containers_are_framed_and_found(name: str, tmp_path) -> None:
    make, shape = CASES[name]
    torch.manual_seed(0)
    model, x = make(), torch.randn(*shape)
    containers = never_called(model, x)
    assert containers, "each case has a container torch never called"
    t = gradtrace.trace(model, x, loss=lambda out: out.sum())
    with chromium_page() as page:
        errors, _ = open_page(page, t.render(tmp_path / f"{name}.html").as_uri())
        page.click("#expandall")
        framed = check_frames(t, containers, page.evaluate("() => window.gradtraceLayout()"), f"{name}, expanded")
        assert framed, "each case dissolves one of them"
        page.click("#collapseall")
        check_frames(t, containers, page.evaluate("() => window.gradtraceLayout()"), f"{name}, opening view")
        # The search for its name goes to it, from the most collapsed view: its parent opens, its frame is in view.
        for c in sorted(framed):
            page.evaluate("() => window.gradtraceLayout(0)")
            last = c.rsplit(".", 1)[-1]
            page.fill("#search", last)
            item = page.locator("#results li[data-container]").first
            assert item.count() and item.get_attribute("data-container") == c, page.inner_text("#results")
            assert last in item.inner_text()  # (as text: a hostile name stays inert)
            page.keyboard.press("Enter")
            page.wait_for_timeout(50)
            layout = page.evaluate("() => window.gradtraceLayout()")
            frames = [d["box"] for d in layout["dissolved"] if d["path"] == c]
            assert frames, f"{name}: searching {last!r} did not open the parent of {c}"
            vb = [float(v) for v in page.get_attribute("#graph", "viewBox").split()]
            assert any(meets(f, vb) for f in frames), (frames, vb)
            page.keyboard.press("Escape")
        assert page.evaluate("document.querySelectorAll('img').length") == 0
        assert errors == []
